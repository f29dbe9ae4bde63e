"""Runs the pipeline on this machine (LocalDagRunner, SQLite ML Metadata, Beam DirectRunner).

The run gets its id here, before it starts, so that the summary is of this run: when a run
fails before ML Metadata records it, the summary says so rather than showing an earlier run. A
Ctrl-C ends the run with a summary naming the component it interrupted, whose execution is
marked CANCELED, not left RUNNING.
"""
import contextlib
import datetime
import logging
import time
from typing import Callable, Iterator, List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler, constants
from tfx.orchestration import metadata
from tfx.orchestration.portable import runtime_parameter_utils

from cxr.pipeline.config import PipelineConfig, with_absolute_paths
from cxr.pipeline.metadata_reader import RunSummary, executions_of_run, read_run, sqlite_connection
from cxr.pipeline.pipeline import create_pipeline


def run_local(config: PipelineConfig, progress: Optional[Callable[[str], None]] = None) -> RunSummary:
    """Runs the pipeline; `progress`, when given, gets a line as each component starts and ends."""
    config = with_absolute_paths(config)
    connection = sqlite_connection(config.metadata_path)
    run_id = datetime.datetime.now().isoformat()
    error, interrupted = None, False
    pipeline = create_pipeline(config, connection)
    try:
        ir = compiler.Compiler().compile(pipeline)
        runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
        with _component_progress(progress):
            tfx.orchestration.LocalDagRunner().run_with_ir(ir)
    except KeyboardInterrupt:
        interrupted = True
        cancelled = cancel_unfinished(connection, run_id)
        error = f"interrupted (Ctrl-C) during {', '.join(cancelled) or 'start-up'}"
    except Exception as failure:  # a failed component: report it with the rest of the run
        error = f"{type(failure).__name__}: {failure}"
    summary = _summary_of(connection, run_id, error)
    summary.interrupted = interrupted
    summary.components = [component.id for component in pipeline.components]
    return summary


@contextlib.contextmanager
def _component_progress(progress: Optional[Callable[[str], None]]) -> Iterator[None]:
    if progress is None:
        yield
        return
    runner_log = logging.getLogger("absl")
    level, progress_filter = runner_log.level, _ComponentProgress(progress, runner_log.getEffectiveLevel())
    runner_log.setLevel(logging.INFO)
    runner_log.addFilter(progress_filter)
    try:
        yield
    finally:
        runner_log.removeFilter(progress_filter)
        runner_log.setLevel(level)


class _ComponentProgress(logging.Filter):
    """A line as each component starts and ends, from the LocalDagRunner's own log records
    (tfx/orchestration/local/local_dag_runner.py logs 'Component %s is running.' / 'is finished.').

    A filter on TFX's logger: it writes those two records as progress lines and lets through only
    what the logger let through before it was lowered to INFO to see them, so nothing floods."""

    def __init__(self, write: Callable[[str], None], passes_from_level: int):
        super().__init__()
        self.write, self.passes_from_level, self.started = write, passes_from_level, {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Component %s is running.":
            node = record.args[0]
            self.started[node] = time.monotonic()
            self.write(f"{node:<22} started")
        elif record.msg == "Component %s is finished.":
            node = record.args[0]
            took = time.monotonic() - self.started.get(node, time.monotonic())
            self.write(f"{node:<22} finished in {took:.0f} s")
        return record.levelno >= self.passes_from_level


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


