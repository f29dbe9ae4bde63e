"""Turns the three public chest X-ray datasets into TFRecord spans for ExampleGen."""
