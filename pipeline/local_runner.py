"""Runs the pipeline on this machine: each node through TFX's portable Launcher as LocalDagRunner does,
ML Metadata in SQLite, Beam's DirectRunner.

The run gets its id here, before it starts, so that the summary is of this run: when a run
fails before ML Metadata records it, the summary says so rather than showing an earlier run. A
Ctrl-C ends the run with a summary naming the component it interrupted, whose execution is
marked CANCELED, not left RUNNING.
"""
import datetime
import time
from typing import Callable, List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from cxr.pipeline.config import PipelineConfig, with_absolute_paths
from cxr.pipeline.metadata_reader import RunSummary, executions_of_run, read_run, sqlite_connection
from cxr.pipeline.node_launcher import compile_run, launch_node
from cxr.pipeline.pipeline import create_pipeline


def run_local(config: PipelineConfig, progress: Optional[Callable[[str], None]] = None) -> RunSummary:
    """Runs the pipeline; `progress`, when given, gets a line as each component starts and ends."""
    config = with_absolute_paths(config)
    connection = sqlite_connection(config.metadata_path)
    run_id = datetime.datetime.now().isoformat()
    error, interrupted = None, False
    try:
        ir = compile_run(config, connection, run_id)
        _run_nodes(ir, connection, progress or (lambda line: None))
    except KeyboardInterrupt:
        interrupted = True
        cancelled = cancel_unfinished(connection, run_id)
        error = f"interrupted (Ctrl-C) during {', '.join(cancelled) or 'start-up'}"
    except Exception as failure:  # a failed component: report it with the rest of the run
        error = f"{type(failure).__name__}: {failure}"
    summary = _summary_of(connection, run_id, error)
    summary.interrupted = interrupted
    summary.components = [component.id for component in create_pipeline(config).components]
    return summary


def _run_nodes(ir, connection, progress: Callable[[str], None]) -> None:
    """Each node of the IR in its topological order, with a progress line as each starts and ends."""
    for node in ir.nodes:
        node_id = node.pipeline_node.node_info.id
        progress(f"{node_id:<22} started")
        started = time.monotonic()
        launch_node(ir, node_id, connection)
        progress(f"{node_id:<22} finished in {time.monotonic() - started:.0f} s")


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
