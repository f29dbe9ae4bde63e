"""Kubeflow Pipelines wiring: compile, submit and schedule the pipeline (a later issue)."""
