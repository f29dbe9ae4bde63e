"""Reads one pipeline run back from ML Metadata: each node's status and outputs, the gate's verdict,
the metrics, the push and the drift check. The same reader serves the local runner's SQLite file
and Kubeflow Pipelines' ML Metadata gRPC service."""
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from cxr import contract
from cxr.components import artifacts
from cxr.pipeline.kfp_runs import kfp_workflow_of_run


@dataclasses.dataclass
class RunSummary:
    statuses: Dict[str, str]
    blessed: Optional[bool] = None
    failed_thresholds: List[str] = dataclasses.field(default_factory=list)
    metrics: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    pushed_to: Optional[str] = None
    error: Optional[str] = None
    drift: List[str] = dataclasses.field(default_factory=list)  # features beyond their threshold
    drift_baseline_span: Optional[int] = None
    run_id: Optional[str] = None
    interrupted: bool = False  # by Ctrl-C
    serving_check: Optional[str] = None  # ServingCheck's verdict
    serving_check_passed: Optional[bool] = None
    tuner_search: Optional[str] = None  # the Tuner's search in one line, its best trial first
    # The pipeline's nodes in the order create_pipeline wires them, where the reader knows the pipeline.
    components: List[str] = dataclasses.field(default_factory=list)


def read_run(connection_config, run: str = "latest"):
    """(the run's summary, {node: {output key: artifact}}) for the latest run or the run with this id.

    connection_config: ML Metadata's SQLite ConnectionConfig (the local runner's) or a gRPC
    MetadataStoreClientConfig (Kubeflow Pipelines' ML Metadata service).
    """
    with metadata.Metadata(connection_config) as store_handle:
        store = store_handle.store
        context = _run_context(store, run)
        if context is None and run != "latest":
            raise ValueError(f"no run {run!r} in ML Metadata at {describe(connection_config)}")
        if context is None:
            return RunSummary(statuses={}), {}
        summary, outputs = RunSummary(statuses={}, run_id=context.name), {}
        for node, execution in _executions_in(store, context):
            summary.statuses[node] = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
            outputs[node] = _output_artifacts(store, execution)
            if node in _SUMMARIZED:
                _SUMMARIZED[node](summary, outputs[node])
        return summary, outputs


def _run_context(store, run: str):
    runs = list(store.get_contexts_by_type("pipeline_run"))
    if run != "latest":
        names = {run, kfp_workflow_of_run(store, run)}  # KFP's run id, where TFX's run took the workflow's name
        runs = [context for context in runs if context.name in names]
    return max(runs, key=lambda candidate: candidate.create_time_since_epoch) if runs else None


def executions_of_run(store, run: str) -> List[Tuple[str, metadata_store_pb2.Execution]]:
    """[(node id, execution)] of the run with this id ('latest': the newest run)."""
    context = _run_context(store, run)
    return _executions_in(store, context) if context is not None else []


def _executions_in(store, context) -> List[Tuple[str, metadata_store_pb2.Execution]]:
    return [(_node_id(store, execution), execution) for execution in store.get_executions_by_context(context.id)]


def _node_id(store, execution) -> str:
    for context in store.get_contexts_by_execution(execution.id):
        if store.get_context_types_by_id([context.type_id])[0].name == "node":
            return context.name.split(".", 1)[-1]
    return f"execution {execution.id}"


def _output_artifacts(store, execution) -> Dict[str, metadata_store_pb2.Artifact]:
    events = [e for e in store.get_events_by_execution_ids([execution.id])
              if e.type == metadata_store_pb2.Event.OUTPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    return {e.path.steps[0].key: artifacts[e.artifact_id] for e in events if e.path.steps}


def _read_evaluation(summary: RunSummary, outputs) -> None:
    if "blessing" in outputs:
        summary.blessed = outputs["blessing"].custom_properties["blessed"].int_value == 1
    if "evaluation" in outputs:
        summary.failed_thresholds += artifacts.failed_thresholds(outputs["evaluation"].uri)
        summary.metrics = artifacts.evaluation_metrics(outputs["evaluation"].uri)


def _read_push(summary: RunSummary, outputs) -> None:
    pushed = outputs.get("pushed_model")
    if pushed is not None and pushed.custom_properties["pushed"].int_value == 1:
        summary.pushed_to = pushed.custom_properties["pushed_destination"].string_value


def _read_drift(summary: RunSummary, outputs) -> None:
    drift = outputs.get("drift")
    if drift is None:
        return
    text = drift.custom_properties["drift"].string_value if "drift" in drift.custom_properties else ""
    summary.drift = [line for line in text.splitlines() if line]
    if "baseline_span" in drift.custom_properties:
        summary.drift_baseline_span = drift.custom_properties["baseline_span"].int_value


def _read_serving_check(summary: RunSummary, outputs) -> None:
    blessing = outputs.get("blessing")
    if blessing is not None and contract.SERVING_CHECK_VERDICT in blessing.custom_properties:
        summary.serving_check = blessing.custom_properties[contract.SERVING_CHECK_VERDICT].string_value
        summary.serving_check_passed = blessing.custom_properties[contract.INFRA_BLESSED].int_value == 1


def _read_tuner(summary: RunSummary, outputs) -> None:
    results = outputs.get("tuner_results")
    if results is not None and contract.TUNER_SEARCH in results.custom_properties:
        summary.tuner_search = results.custom_properties[contract.TUNER_SEARCH].string_value


# What the summary takes from each node's outputs.
_SUMMARIZED = {contract.Nodes.EVALUATOR: _read_evaluation, contract.Nodes.PUSHER: _read_push,
               contract.Nodes.DRIFT_CHECK: _read_drift, contract.Nodes.SERVING_CHECK: _read_serving_check,
               contract.Nodes.TUNER: _read_tuner}


def sqlite_connection(path: str):
    """The SQLite file's connection (ML Metadata creates the file when it is missing)."""
    return metadata.sqlite_metadata_connection_config(path)


def grpc_connection(host_port: str):
    """ML Metadata's gRPC service (Kubeflow Pipelines' metadata-grpc-service), as host:port."""
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ML Metadata's gRPC address must be host:port, got {host_port!r}")
    return metadata_store_pb2.MetadataStoreClientConfig(host=host, port=int(port))


def execution_properties(connection_config, run: str) -> Dict[str, Dict[str, Any]]:
    """{node: {property: value}} of the run's executions: what each component was given (input_base,
    eval_config as JSON, a custom component's parameters...), as ML Metadata recorded it."""
    with metadata.Metadata(connection_config) as store_handle:
        return {node: {name: getattr(value, value.WhichOneof("value")) for name, value in
                       execution.custom_properties.items() if value.WhichOneof("value")}
                for node, execution in executions_of_run(store_handle.store, run)}


def describe(connection_config) -> str:
    """Where the store is, for messages: the SQLite file or the gRPC host:port."""
    if isinstance(connection_config, metadata_store_pb2.MetadataStoreClientConfig):
        return f"{connection_config.host}:{connection_config.port}"
    return connection_config.sqlite.filename_uri
