"""Serving contract, TF Serving deployment files and the REST client (a later issue)."""
