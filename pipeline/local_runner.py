"""Runs the pipeline on this machine (LocalDagRunner, SQLite ML Metadata, Beam DirectRunner).

The run gets its id here, before it starts, so that the summary is of this run: when a run
fails before ML Metadata records it, the summary says so rather than showing an earlier run. A
Ctrl-C ends the run with a summary naming the component it interrupted, whose execution is
marked CANCELED, not left RUNNING.
"""
import datetime
from typing import List

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler, constants
from tfx.orchestration import metadata
from tfx.orchestration.portable import runtime_parameter_utils

from cxr.pipeline.config import PipelineConfig
from cxr.pipeline.metadata_reader import RunSummary, executions_of_run, read_run
from cxr.pipeline.pipeline import create_pipeline


def run_local(config: PipelineConfig) -> RunSummary:
    connection = sqlite_connection(config)
    run_id = datetime.datetime.now().isoformat()
    error, interrupted = None, False
    try:
        ir = compiler.Compiler().compile(create_pipeline(config, connection))
        runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
        tfx.orchestration.LocalDagRunner().run_with_ir(ir)
    except KeyboardInterrupt:
        interrupted = True
        cancelled = cancel_unfinished(connection, run_id)
        error = f"interrupted (Ctrl-C) during {', '.join(cancelled) or 'start-up'}"
    except Exception as failure:  # a failed component: report it with the rest of the run
        error = f"{type(failure).__name__}: {failure}"
    summary = _summary_of(connection, run_id, error)
    summary.interrupted = interrupted
    return summary


def _summary_of(connection, run_id: str, error) -> RunSummary:
    try:
        summary = read_run(connection, run_id)[0]
    except ValueError:  # ML Metadata holds no such run
        summary = RunSummary(statuses={}, run_id=run_id)
        error = f"the run failed before ML Metadata recorded it: {error or 'no component ran'}"
    summary.error = error
    return summary


def cancel_unfinished(connection, run_id: str) -> List[str]:
    """Marks the run's executions still NEW or RUNNING as CANCELED; returns their nodes."""
    unfinished = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
    with metadata.Metadata(connection) as handle:
        executions = [(node, execution) for node, execution in executions_of_run(handle.store, run_id)
                      if execution.last_known_state in unfinished]
        for _, execution in executions:
            execution.last_known_state = metadata_store_pb2.Execution.CANCELED
        handle.store.put_executions([execution for _, execution in executions])
    return [node for node, _ in executions]


def sqlite_connection(config: PipelineConfig):
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
