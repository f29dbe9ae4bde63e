"""Code that the pipeline's steps execute: ingestion, Transform, Trainer, export and evaluation."""
