"""Pipeline wiring: `create_pipeline`, its configuration, the local runner and the run report."""
