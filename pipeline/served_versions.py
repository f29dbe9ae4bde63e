"""Which pipeline run pushed a served model version, from ML Metadata: the training split that version
learned from and the ServingCheck's answers on its test split, which `cxr monitor` compares the
version's logged requests with.

The Pusher records the version it pushed as its PushedModel's `pushed_version` (TFX's
components/pusher/executor.py, _MarkPushed): the folder name under the model base path that TF
Serving reports as the version, and that the request log records.
"""
import os
from typing import Callable, Optional

import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from cxr import contract
from cxr.components import artifacts
from cxr.monitoring.monitor import VersionSources
from cxr.pipeline.metadata_reader import describe, read_run

PUSHED_MODEL_TYPE = "PushedModel"
PUSHED, PUSHED_VERSION = "pushed", "pushed_version"  # the Pusher's custom properties


def sources_from_metadata(connection_config) -> Callable[[int], VersionSources]:
    def sources(version: int) -> VersionSources:
        run_id = run_that_pushed(connection_config, version)
        if run_id is None:
            raise ValueError(f"version {version}: no Pusher recorded in ML Metadata at {describe(connection_config)} "
                             f"pushed it; give its training split with --training")
        _, outputs = read_run(connection_config, run_id)
        examples = outputs.get(contract.Nodes.EXAMPLE_GEN, {}).get("examples")
        if examples is None:
            raise ValueError(f"version {version}: pipeline run {run_id} pushed it, but ML Metadata holds no "
                             f"examples of its {contract.Nodes.EXAMPLE_GEN}")
        return VersionSources(artifacts.split_files(examples.uri, contract.TRAIN), _test_answers(outputs),
                              f"pipeline run {run_id}")
    return sources


def run_that_pushed(connection_config, version: int) -> Optional[str]:
    """The id of the pipeline run whose Pusher pushed this version; None if none did."""
    with metadata.Metadata(connection_config) as handle:
        store = handle.store
        pushes = [artifact for artifact in store.get_artifacts_by_type(PUSHED_MODEL_TYPE)
                  if artifact.custom_properties[PUSHED].int_value == 1
                  and artifact.custom_properties[PUSHED_VERSION].string_value == str(version)]
        if not pushes:
            return None
        events = [event for event in store.get_events_by_artifact_ids([pushes[0].id])
                  if event.type == metadata_store_pb2.Event.OUTPUT]
        for context in store.get_contexts_by_execution(events[0].execution_id):
            if store.get_context_types_by_id([context.type_id])[0].name == "pipeline_run":
                return context.name
    return None


def _test_answers(outputs) -> Optional[str]:
    blessing = outputs.get(contract.Nodes.SERVING_CHECK, {}).get("blessing")
    path = blessing and os.path.join(blessing.uri, contract.SERVING_CHECK_ANSWERS_FILE)
    return path if path and tf.io.gfile.exists(path) else None
