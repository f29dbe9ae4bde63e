"""`cxr report`: a static HTML report of one pipeline run, read from ML Metadata and the run's artifacts."""
