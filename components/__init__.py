"""Code that the pipeline's steps execute: ingestion now; Transform, Trainer and evaluation later."""
