"""cxr-pipeline: a TFX / Kubeflow pipeline for a four-class chest X-ray classifier."""
import os

# TFX 1.16 and TensorFlow Transform build Keras 2 models (tf_keras); TensorFlow 2.16
# reads this once, on its first import, so it is set before anything imports it.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
