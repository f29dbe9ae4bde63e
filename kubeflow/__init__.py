"""Kubeflow wiring: compiling the pipeline for KFP v2 / Vertex AI, submitting and scheduling runs."""
