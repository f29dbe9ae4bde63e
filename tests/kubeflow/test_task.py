"""kubeflow/task.py's choices that need no cluster: the run id a task records under, and where ML Metadata is."""
import pytest
from kfp import dsl
from ml_metadata.proto import metadata_store_pb2

from cxr.kubeflow.task import RUN_ID_PLACEHOLDER, metadata_connection, pipeline_run_id
from cxr.pipeline.config import load_config
from cxr.pipeline.kfp_runs import kfp_workflow_of_run


def test_the_placeholder_is_kfps_run_id():
    assert RUN_ID_PLACEHOLDER == dsl.PIPELINE_JOB_ID_PLACEHOLDER


def test_a_resolved_run_id_is_used_as_it_is():
    assert pipeline_run_id("9a1c0b52-0d3c-4d43-9f7e-2f0d1e6c8b11", {"KFP_POD_NAME": "x"}) == (
        "9a1c0b52-0d3c-4d43-9f7e-2f0d1e6c8b11")


@pytest.mark.parametrize("pod", [
    "cxr-xq7k2-system-container-impl-1837432069",  # Argo 3.4+ pod names: <workflow>-<template>-<hash>
    "cxr-xq7k2-2451094852",  # Argo's v1 pod names: <workflow>-<node hash>
])
def test_before_kfp_2_5_every_task_of_a_run_takes_the_workflow_name(pod):
    assert pipeline_run_id(RUN_ID_PLACEHOLDER, {"KFP_POD_NAME": pod}) == "cxr-xq7k2"


def test_no_run_id_at_all_is_an_error_naming_both_sources():
    with pytest.raises(RuntimeError, match="KFP_POD_NAME"):
        pipeline_run_id(RUN_ID_PLACEHOLDER, {})


def test_ml_metadata_is_the_grpc_service_or_the_sqlite_file():
    grpc = metadata_connection(load_config("demo", overrides=["kubeflow.metadata_grpc=mlmd.kubeflow:8080"]))
    assert isinstance(grpc, metadata_store_pb2.MetadataStoreClientConfig)
    assert (grpc.host, grpc.port) == ("mlmd.kubeflow", 8080)
    sqlite = metadata_connection(load_config("demo", overrides=[
        "kubeflow.metadata_grpc=sqlite", "metadata_path=/mnt/cxr/metadata.sqlite"]))
    assert sqlite.sqlite.filename_uri == "/mnt/cxr/metadata.sqlite"


def _kfp_records(store, run_id, pods):
    """What KFP's driver and launcher write (backend/src/v2/metadata/client.go): the run's context, each task's pod."""
    context_type = store.put_context_type(metadata_store_pb2.ContextType(name="system.PipelineRun"))
    [context] = store.get_contexts_by_id(store.put_contexts([metadata_store_pb2.Context(type_id=context_type,
                                                                                         name=run_id)]))
    execution_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="system.ContainerExecution"))
    for pod in pods:
        execution = metadata_store_pb2.Execution(type_id=execution_type)
        execution.custom_properties["pod_name"].string_value = pod
        store.put_execution(execution, artifact_and_events=[], contexts=[context])


def test_kfps_run_id_maps_to_the_workflow_its_tasks_ran_in(tmp_path):
    from ml_metadata import metadata_store
    store = metadata_store.MetadataStore(metadata_store_pb2.ConnectionConfig(
        sqlite=metadata_store_pb2.SqliteMetadataSourceConfig(filename_uri=str(tmp_path / "mlmd.sqlite"),
                                                             connection_mode=3)))
    assert kfp_workflow_of_run(store, "9a1c0b52") is None  # no KFP run was ever recorded
    _kfp_records(store, "9a1c0b52", ["cxr-xq7k2-system-container-impl-1837432069",
                                     "cxr-xq7k2-system-container-impl-2451094852"])
    assert kfp_workflow_of_run(store, "9a1c0b52") == "cxr-xq7k2"
    assert kfp_workflow_of_run(store, "another-run") is None


def test_kfp_s_metrics_name_each_class_once_and_leave_out_what_tfma_could_not_compute():
    from cxr.contract import ACCURACY, OVERALL, metric_sub_key
    from cxr.kubeflow.ui_outputs import run_metrics
    from cxr.pipeline.metadata_reader import RunSummary
    summary = RunSummary(statuses={}, blessed=False, metrics={
        OVERALL: {ACCURACY: 0.9}, metric_sub_key(2): {"gate_recall": 0.8},
        metric_sub_key(2, top_k=1): {"precision/NORMAL": 0.7}, metric_sub_key(3, top_k=1): {"precision/PNEUMOTHORAX": None}})
    assert run_metrics(summary) == {ACCURACY: 0.9, "gate_recall NORMAL": 0.8, "precision/NORMAL topK:1": 0.7,
                                    "blessed": 0.0, "pushed": 0.0}


def _compiled(*overrides):
    from cxr.pipeline.config import to_json
    return to_json(load_config("study", overrides=[
        "name=cxr-radiology", "kubeflow.image=registry.example.com/cxr-pipeline:7", "pipeline_root=gs://b/root",
        "data.tfrecords_dir=gs://b/tfrecords", "serving_dir=gs://b/serving", *overrides]))


@pytest.mark.parametrize("changes, compiled, message", [
    ('{"kubeflow": {"volumes": ["other:/mnt"]}}', (), "changes kubeflow.volumes, which the compiled pipeline holds"),
    ('{"serving_dir": "/models"}', (), "serving_dir is '/models', which no task mounts"),
    ("{}", ("name=cxr",), "name is the default 'cxr'"),
])
def test_a_task_refuses_a_configuration_the_cluster_could_not_run_before_it_runs_anything(changes, compiled,
                                                                                          message, monkeypatch):
    from cxr.kubeflow import task
    ran = []
    monkeypatch.setattr(task, "run_node", lambda *args: ran.append(args))
    with pytest.raises(ValueError, match=message):
        task.main(["node", "--node-id", "Trainer", "--compiled-config", _compiled(*compiled), "--config", changes,
                   "--run-id", "run-1"])
    assert not ran


def test_a_task_runs_its_node_with_the_compiled_configuration_and_the_run_s_changes(monkeypatch):
    from cxr.kubeflow import task
    ran = []
    monkeypatch.setattr(task, "run_node", lambda config, node_id, run_id: ran.append((config, node_id, run_id)))
    assert task.main(["node", "--node-id", "Trainer", "--compiled-config", _compiled(), "--config",
                      '{"training": {"epochs": 3}}', "--run-id", "run-1"]) == 0
    [(config, node_id, run_id)] = ran
    assert (config.training.epochs, config.name, config.serving_dir, node_id, run_id) == (
        3, "cxr-radiology", "gs://b/serving", "Trainer", "run-1")
