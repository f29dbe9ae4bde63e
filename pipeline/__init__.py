"""Pipeline wiring: the TFX `create_pipeline` and its runners (a later issue)."""
