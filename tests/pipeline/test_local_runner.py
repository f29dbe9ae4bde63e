"""`cxr run`'s summary is of the run it started: a run that fails before ML Metadata records it says so,
and a Ctrl-C names the component it interrupted, cancels it, and does not confuse the next run."""
import re

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from cxr.components import validation_gate
from cxr.output import run_summary
from cxr.pipeline.local_runner import run_local
from cxr.pipeline.metadata_reader import executions_of_run, sqlite_connection
from helpers import ORCHESTRATION_ONLY, tiny_pipeline_config


def _an_earlier_blessed_looking_run(config) -> None:
    """A run recorded in ML Metadata before this one (what the summary once showed instead)."""
    with metadata.Metadata(sqlite_connection(config.metadata_path)) as handle:
        store = handle.store
        run_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
        store.put_contexts([metadata_store_pb2.Context(type_id=run_type, name="2020-01-01T00:00:00")])


def test_a_run_that_fails_at_once_reports_itself_not_an_earlier_run(tmp_path, capsys):
    (tmp_path / "tfrecords").mkdir()  # no span at all
    config = tiny_pipeline_config(tmp_path)
    _an_earlier_blessed_looking_run(config)
    summary = run_local(config)
    assert summary.run_id != "2020-01-01T00:00:00" and not summary.blessed and summary.pushed_to is None
    assert "Cannot find matching for split all" in summary.error
    text = run_summary(summary)
    assert f"run {summary.run_id}, components:" in text and "drift:" not in text


@pytest.mark.slow
def test_ctrl_c_names_the_interrupted_component_cancels_it_and_the_next_run_is_whole(tmp_path, monkeypatch,
                                                                                     tiny_span):
    tiny_span(tmp_path / "tfrecords")
    config = tiny_pipeline_config(tmp_path, *ORCHESTRATION_ONLY)

    def ctrl_c(statistics):
        raise KeyboardInterrupt  # what Python raises in the main thread on SIGINT

    with monkeypatch.context() as patch:
        patch.setattr(validation_gate, "missing_classes", ctrl_c)
        interrupted = run_local(config)
    assert interrupted.interrupted and interrupted.error == "interrupted (Ctrl-C) during ValidationGate"
    assert interrupted.statuses["ValidationGate"] == "CANCELED" and "Transform" not in interrupted.statuses
    assert interrupted.pushed_to is None

    progress = []
    again = run_local(config, progress=progress.append)
    assert again.error is None and again.blessed is not None and again.run_id != interrupted.run_id
    # A line as each component starts and ends, in the order create_pipeline wires them.
    started = [line.split()[0] for line in progress if line.endswith(" started")]
    assert started == again.components, progress
    assert all(re.fullmatch(r"\S+ +finished in \d+ s", line) for line in progress if "finished" in line), progress
    assert again.statuses["ValidationGate"] == "COMPLETE" and again.statuses["Trainer"] == "COMPLETE"
    with metadata.Metadata(sqlite_connection(config.metadata_path)) as handle:
        states = {node: execution.last_known_state for node, execution in executions_of_run(
            handle.store, interrupted.run_id)}
    assert states["ValidationGate"] == metadata_store_pb2.Execution.CANCELED
