"""Watching the served model: what it receives, against what it was trained on (cxr monitor)."""
