"""Runs the pipeline on this machine (LocalDagRunner, SQLite ML Metadata, Beam DirectRunner)."""
from tfx import v1 as tfx

from cxr.pipeline.config import PipelineConfig
from cxr.pipeline.metadata_reader import RunSummary, read_run
from cxr.pipeline.pipeline import create_pipeline


def run_local(config: PipelineConfig) -> RunSummary:
    error = None
    try:
        tfx.orchestration.LocalDagRunner().run(create_pipeline(config, sqlite_connection(config)))
    except Exception as failure:  # a failed component: report it with the rest of the run
        error = f"{type(failure).__name__}: {failure}"
    summary = read_run(sqlite_connection(config))[0]
    summary.error = error
    return summary


def sqlite_connection(config: PipelineConfig):
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
