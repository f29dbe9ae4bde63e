"""cxr-pipeline: a TFX / Kubeflow pipeline for a four-class chest X-ray classifier."""
