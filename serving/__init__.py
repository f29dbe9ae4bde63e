"""Serving: the contract of the exported model, the REST client (`cxr predict`), the development
server (`cxr serve`) and TF Serving's deployment files (config/, k8s/, gpu/).

Importing this package, the contract or the client needs neither TensorFlow nor TFX;
model_store.py and dev_server.py import TensorFlow.
"""
