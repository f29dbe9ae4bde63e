"""`cxr kfp compile`: one container task per TFX node for open-source KFP, read back with kfp's protos and
checked as KFP's API server and Argo compiler check it; Vertex keeps TFX's KubeflowV2DagRunner."""
import json
import os
import re

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cxr.kubeflow.cluster_checks import (
    check_package, check_run_changes, executors, package_config, package_params, run_configuration)
from cxr.kubeflow.settings import CONFIG_PARAMETER
from cxr.kubeflow.runner import compile_pipeline
from cxr.pipeline.node_launcher import node_dependencies
from cxr.pipeline.config import ConfigError, from_json, load_config
from cxr.pipeline.pipeline import create_pipeline

IMAGE = "registry.example.com/cxr-pipeline:7"
VOLUME = "cxr-data:/mnt/cxr"
NAME = "cxr-radiology"
CLUSTER = (f"name={NAME}", f"kubeflow.image={IMAGE}", f'kubeflow.volumes=["{VOLUME}", "cxr-models:/models"]',
           "pipeline_root=/mnt/cxr/root", "data.tfrecords_dir=/mnt/cxr/tfrecords", "serving_dir=/models",
           "kubeflow.trainer_gpus=2", "kubeflow.trainer_cpu_limit=12", "kubeflow.trainer_memory_limit_gb=48",
           'kubeflow.gpu_node_selector=["cloud.google.com/gke-accelerator=nvidia-l4"]',
           'kubeflow.gpu_tolerations=["nvidia.com/gpu=present:NoSchedule", "dedicated:NoExecute"]')
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "kubeflow", "cluster.example.yaml")


def _config(*overrides):
    return load_config("study", overrides=[*CLUSTER, *overrides])


def _compiled(tmp_path, config):
    path = compile_pipeline(config, "kfp", str(tmp_path))
    with open(path) as f:
        documents = list(yaml.safe_load_all(f))
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    return path, spec, documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    config = _config()
    return (config, *_compiled(tmp_path_factory.mktemp("kfp"), config))


def _executor_label(spec, task):
    return spec.components[spec.root.dag.tasks[task].component_ref.name].executor_label


def _container(spec, task):
    return executors(spec)[_executor_label(spec, task)].container


def _node_tasks(spec):
    """{TFX node id: KFP task name} from the tasks' display names."""
    return {task.task_info.name: name for name, task in spec.root.dag.tasks.items() if name != "kfp-ui-outputs"}


def test_every_tfx_node_is_one_container_task_with_the_nodes_upstream_as_dependencies(compiled):
    config, _, spec, _ = compiled
    dependencies = node_dependencies(config)
    tasks = _node_tasks(spec)
    assert set(tasks) == set(dependencies) == {component.id for component in create_pipeline(config).components}
    for node, upstream in dependencies.items():
        task = spec.root.dag.tasks[tasks[node]]
        assert set(task.dependent_tasks) == {tasks[u] for u in upstream}, node
        container = _container(spec, tasks[node])
        assert container.image == IMAGE
        assert list(container.command) == ["python", "-m", "cxr.kubeflow.task"]
        assert list(container.args[:3]) == ["node", "--node-id", node]
        assert not task.caching_options.enable_cache, f"{node}: KFP's cache must stay off, TFX caches in MLMD"
        assert task.inputs.parameters["run_id"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
        assert task.inputs.parameters[CONFIG_PARAMETER].component_input_parameter == CONFIG_PARAMETER
    assert set(spec.root.dag.tasks["kfp-ui-outputs"].dependent_tasks) == set(tasks.values())


def test_every_task_holds_the_compiled_configuration_and_the_one_parameter_changes_nothing_by_default(compiled):
    config, path, spec, _ = compiled
    [(name, parameter)] = spec.root.input_definitions.parameters.items()
    assert name == CONFIG_PARAMETER and parameter.is_optional and parameter.default_value.string_value == "{}"
    assert package_config(path) == (config, "training")
    for task in spec.root.dag.tasks.values():
        constant = task.inputs.parameters["compiled_config"].runtime_value.constant.string_value
        assert from_json(constant, "the task's input") == config


def test_a_partial_run_parameter_keeps_every_compiled_setting_it_does_not_name(compiled):
    config, path, _, _ = compiled
    run = check_run_changes(path, {CONFIG_PARAMETER: '{"training": {"epochs": 3}}'})
    assert run.training.epochs == 3
    assert (run.name, run.pipeline_root, run.data.tfrecords_dir, run.serving_dir, run.kubeflow) == (
        NAME, "/mnt/cxr/root", "/mnt/cxr/tfrecords", "/models", config.kubeflow)
    assert run.model == config.model and run.training.batch_size == config.training.batch_size


@pytest.mark.parametrize("changes, message", [
    ('{"kubeflow": {"image": "other:1"}}', "changes kubeflow.image, which the compiled pipeline holds"),
    ('{"name": "cxr-other"}', "changes name, which the compiled pipeline holds"),
    ('{"training": {"epoch": 3}}', "unknown setting training.epoch"),
    ('{"serving_dir": "/elsewhere"}', "serving_dir is '/elsewhere', which no task mounts"),
    ('[1]', "expected a JSON object"),
])
def test_a_run_parameter_the_compiled_pipeline_cannot_follow_is_refused_by_name(compiled, changes, message):
    config, path, _, _ = compiled
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_run_changes(path, {CONFIG_PARAMETER: changes})
    with pytest.raises(ConfigError, match=re.escape(message)):  # as each task refuses it
        run_configuration(config, changes)


def test_ml_metadatas_address_is_the_kubeflow_setting_a_run_may_change(compiled):
    config, _, _, _ = compiled
    run = run_configuration(config, '{"kubeflow": {"metadata_grpc": "mlmd.team:8080"}}')
    assert run.kubeflow.metadata_grpc == "mlmd.team:8080"


def test_a_bucket_root_is_the_default_pipeline_root_and_a_volume_root_leaves_kfp_its_own(compiled, tmp_path):
    assert not compiled[2].default_pipeline_root  # a path on a volume: KFP's launcher cannot write there
    _, spec, _ = _compiled(tmp_path, _config("pipeline_root=gs://bucket/cxr-root"))
    assert spec.default_pipeline_root == "gs://bucket/cxr-root"


def test_tasks_that_run_beam_in_memory_request_cpu_and_memory_from_the_configuration(tmp_path):
    _, spec, _ = _compiled(tmp_path, _config("kubeflow.beam_cpu_request=3", "kubeflow.beam_memory_request_gb=12.5"))
    tasks = _node_tasks(spec)
    for node in ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"):
        resources = _container(spec, tasks[node]).resources
        # kfp 2.5 writes cpuRequest and memoryRequest (GB), which KFP's driver reads from 2.0 on (driver.go).
        assert (resources.cpu_request, resources.memory_request) == (3.0, 12.5), node
    for node in ("SchemaGen", "ValidationGate", "Pusher"):
        assert not _container(spec, tasks[node]).HasField("resources"), node


@pytest.mark.parametrize("volumes, message", [
    ('["cxr-data:/mnt/cxr", "cxr-data:/models"]', "claim 'cxr-data' is mounted twice (/mnt/cxr and /models)"),
    ('["cxr-data:/mnt/cxr", "cxr-models:/mnt/cxr"]', "'cxr-data' and 'cxr-models' are both mounted at /mnt/cxr"),
])
def test_a_claim_or_a_path_mounted_twice_is_refused_by_name(volumes, message):
    with pytest.raises(ConfigError, match=re.escape(f"kubeflow.volumes: {message}")):
        _config(f"kubeflow.volumes={volumes}")


def test_nothing_passes_through_kfp_artifacts_but_the_ui_outputs(compiled):
    _, _, spec, _ = compiled
    for name, component in spec.components.items():
        assert not component.input_definitions.artifacts, name
        outputs = dict(component.output_definitions.artifacts)
        if name == "comp-kfp-ui-outputs":
            assert {key: value.artifact_type.schema_title for key, value in outputs.items()} == {
                "metrics": "system.Metrics", "confusion_matrix": "system.ClassificationMetrics",
                "report": "system.HTML"}
        else:
            assert not outputs, name


def test_the_package_passes_the_checks_kfp_makes_before_a_run_starts(compiled):
    _, path, spec, _ = compiled
    assert spec.schema_version == "2.1.0" and spec.pipeline_info.name == NAME
    assert {executor.WhichOneof("spec") for executor in executors(spec).values()} == {"container"}
    assert not any(executor.container.HasField("lifecycle") for executor in executors(spec).values())
    check_package(path)  # and runs need no parameter: the configuration has its default


def test_the_trainer_asks_for_gpus_on_the_gpu_node_pool_and_every_task_mounts_the_volumes(compiled):
    _, _, spec, platform = compiled
    tasks = _node_tasks(spec)
    resources = _container(spec, tasks["Trainer"]).resources
    assert (resources.accelerator.type, resources.accelerator.count) == ("nvidia.com/gpu", 2)
    assert (resources.cpu_limit, resources.memory_limit) == (12.0, 48.0)
    trainer = platform[_executor_label(spec, tasks["Trainer"])]
    assert trainer["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
    assert trainer["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]
    for task in [*tasks.values(), "kfp-ui-outputs"]:
        label = _executor_label(spec, task)
        models = [{"constant": "cxr-models", "mountPath": "/models"}] if task == tasks["Pusher"] else []
        assert platform[label]["pvcMount"] == [{"constant": "cxr-data", "mountPath": "/mnt/cxr"}, *models], task
        if task != tasks["Trainer"]:
            assert not _container(spec, task).resources.accelerator.type, task
            assert "nodeSelector" not in platform[label] and "tolerations" not in platform[label], task


@pytest.mark.parametrize("overrides, setting", [
    (('kubeflow.volumes=["cxr-data:/mnt/cxr"]', "serving_dir=/mnt/cxr/models"), "pipeline_root"),
    (('kubeflow.volumes=["cxr-data:/mnt/cxr", "cxr-models:/models"]', "data.tfrecords_dir=/models/tfrecords"),
     "data.tfrecords_dir")])
def test_a_path_on_the_served_models_volume_is_refused_as_only_the_pusher_mounts_it(overrides, setting):
    # The Pusher's task alone mounts the claim serving_dir lies on; a path other tasks need cannot lie there.
    with pytest.raises(ConfigError, match=re.escape(setting) + r" is '/.*', on the volume mounted at /\w+(/\w+)? "
                       r"that holds serving_dir .*: only the Pusher's task mounts that volume"):
        compile_pipeline(_config(*overrides), "kfp", "/nonexistent")


def test_the_tuner_when_enabled_runs_on_the_gpu_nodes_too(tmp_path):
    _, spec, platform = _compiled(tmp_path, _config("tuner.enabled=true"))
    tasks = _node_tasks(spec)
    assert tasks["Tuner"] in spec.root.dag.tasks[tasks["Trainer"]].dependent_tasks
    # the Trainer's GPUs, CPU and memory limits, node selector and tolerations, whole
    assert _container(spec, tasks["Tuner"]).resources == _container(spec, tasks["Trainer"]).resources
    assert _container(spec, tasks["Tuner"]).resources.accelerator.count == 2
    tuner, trainer = (platform[_executor_label(spec, tasks[node])] for node in ("Tuner", "Trainer"))
    assert {key: tuner[key] for key in ("nodeSelector", "tolerations")} == {
        key: trainer[key] for key in ("nodeSelector", "tolerations")}
    assert tuner["tolerations"]


def test_no_gpus_and_no_node_pool_settings_mean_no_requests(tmp_path):
    _, spec, platform = _compiled(tmp_path, _config("kubeflow.trainer_gpus=0", "kubeflow.gpu_node_selector=[]",
                                                    "kubeflow.gpu_tolerations=[]"))
    label = _executor_label(spec, _node_tasks(spec)["Trainer"])
    assert not executors(spec)[label].container.resources.accelerator.type
    assert set(platform[label]) == {"pvcMount"}  # KFP 2.0's driver refuses fields it does not know


@pytest.mark.parametrize("override, message", [
    ("kubeflow.image=cxr-pipeline:latest", "kubeflow.image is the local default 'cxr-pipeline:latest'"),
    ("pipeline_root=build/pipeline", "pipeline_root is 'build/pipeline', which no task mounts"),
    ("data.tfrecords_dir=/data/tfrecords", "data.tfrecords_dir is '/data/tfrecords', which no task mounts"),
    ("serving_dir=s3://models/cxr", "serving_dir is 's3://models/cxr': TensorFlow reads s3:// only with "
                                    "tensorflow-io"),
    ("kubeflow.metadata_grpc=sqlite", "metadata_path is 'build/metadata.sqlite', which no task mounts"),
    ("name=CXR_pipeline", "name 'CXR_pipeline': Kubeflow Pipelines takes lower-case letters"),
    ("name=cxr", "name is the default 'cxr': the cluster's ML Metadata is shared by every pipeline"),
])
def test_settings_that_cannot_work_on_a_cluster_are_refused_by_name(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_pipeline(_config(override), "kfp", str(tmp_path))
    assert not os.listdir(tmp_path)


def test_minio_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="pipeline_root is 'minio://mlpipeline/cxr': TensorFlow cannot read minio://"):
        _config("pipeline_root=minio://mlpipeline/cxr")


def test_the_example_file_compiles_once_its_placeholders_are_replaced(tmp_path):
    with pytest.raises(ConfigError) as refused:
        compile_pipeline(load_config("study", EXAMPLE), "kfp", str(tmp_path))
    assert "kubeflow.image is 'YOUR-REGISTRY/cxr-pipeline:1'" in str(refused.value)
    with open(EXAMPLE) as f:
        filled = f.read().replace("YOUR-REGISTRY", "registry.example.com").replace("YOUR-TEAM", "radiology")
    (tmp_path / "cluster.yaml").write_text(filled)
    config = load_config("study", str(tmp_path / "cluster.yaml"))
    path, spec, _ = _compiled(tmp_path, config)
    check_package(path)
    assert "YOUR-" not in open(path).read()
    check_package(compile_pipeline(config, "kfp", str(tmp_path), job="monitoring"))


def test_the_example_s_monitoring_reads_the_claim_and_folder_the_log_proxies_write():
    with open(os.path.join(os.path.dirname(EXAMPLE), "..", "serving", "k8s", "deployment.yaml")) as f:
        [pod] = [document["spec"]["template"]["spec"] for document in yaml.safe_load_all(f)
                 if document and document.get("kind") == "Deployment"]
    [proxy] = [container for container in pod["containers"] if container.get("command", [""])[-1] == "log-proxy"]
    [root] = [arg.split("=", 1)[1] for arg in proxy["args"] if arg.startswith("--request_log_root=")]
    [mount] = [m for m in proxy["volumeMounts"] if m["mountPath"] == root]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config = load_config("study", EXAMPLE)
    assert config.monitoring.logs_root == root
    assert config.kubeflow.mounts()[root] == volume["persistentVolumeClaim"]["claimName"]


def test_the_monitoring_job_is_one_task_with_kfp_s_ui_outputs_the_schedule_time_and_the_volumes(tmp_path):
    config = _config("monitoring.logs_root=/mnt/cxr/request-logs")
    path = compile_pipeline(config, "kfp", str(tmp_path), job="monitoring")
    spec = check_package(path)
    with open(path) as f:
        platform = list(yaml.safe_load_all(f))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert spec.pipeline_info.name == f"{NAME}-monitoring" and list(spec.root.dag.tasks) == ["cxr-monitor"]
    task = spec.root.dag.tasks["cxr-monitor"]
    assert task.inputs.parameters["until"].runtime_value.constant.string_value == "{{$.pipeline_job_schedule_time_utc}}"
    outputs = spec.components[task.component_ref.name].output_definitions.artifacts
    assert {name: a.artifact_type.schema_title for name, a in outputs.items()} == {
        "metrics": "system.Metrics", "page": "system.HTML"}
    [executor] = executors(spec).values()
    assert executor.container.image == IMAGE and "monitor" in executor.container.args
    [mounts] = [e["pvcMount"] for e in platform.values()]
    assert {m["mountPath"] for m in mounts} == {"/mnt/cxr", "/models"}
    compiled, job = package_config(path)
    assert job == "monitoring" and compiled == config


def test_the_monitoring_job_needs_the_request_log_and_compiles_for_kfp_only(tmp_path):
    with pytest.raises(ConfigError, match="monitoring.logs_root is empty"):
        compile_pipeline(_config(), "kfp", str(tmp_path), job="monitoring")
    with pytest.raises(ConfigError, match="monitoring.logs_root is '/var/log/cxr', which no task mounts"):
        compile_pipeline(_config("monitoring.logs_root=/var/log/cxr"), "kfp", str(tmp_path), job="monitoring")
    with pytest.raises(ValueError, match="compiles for kfp only"):
        compile_pipeline(_config("monitoring.logs_root=gs://logs/cxr"), "vertex", str(tmp_path), job="monitoring")


def test_a_kubeflow_v2_dag_runner_spec_is_refused_for_the_reasons_kfp_refuses_it(tmp_path):
    """What `--target kfp` emitted before: KubeflowV2DagRunner's spec, which open-source KFP cannot run."""
    job_path = compile_pipeline(load_config("study", overrides=[f"name={NAME}",
        f"kubeflow.image={IMAGE}", "pipeline_root=gs://bucket/root", "data.tfrecords_dir=gs://bucket/tfrecords",
        "serving_dir=gs://bucket/serving"]), "vertex", str(tmp_path))
    with open(job_path) as f:
        (tmp_path / "v2-runner.yaml").write_text(yaml.safe_dump(json.load(f)["pipelineSpec"]))
    with pytest.raises(ValueError) as refused:
        check_package(str(tmp_path / "v2-runner.yaml"))
    reasons = str(refused.value)
    assert "KFP only supports schema version 2.1.0, but the pipeline spec has version 2.0.0" in reasons
    assert "resolver executors are not implemented" in reasons
    assert "lifecycle hooks, so its pre_cache_check would not run" in reasons


def test_a_run_missing_a_required_parameter_or_passing_an_unknown_one_is_refused(compiled, tmp_path):
    _, path, _, _ = compiled
    with open(path) as f:
        documents = list(yaml.safe_load_all(f))
    del documents[0]["root"]["inputDefinitions"]["parameters"][CONFIG_PARAMETER]["defaultValue"]
    del documents[0]["root"]["inputDefinitions"]["parameters"][CONFIG_PARAMETER]["isOptional"]
    required = tmp_path / "required.yaml"
    required.write_text(yaml.safe_dump_all(documents))
    with pytest.raises(ValueError, match="parameter config is not optional, yet has neither default value"):
        check_package(str(required))
    check_package(str(required), {CONFIG_PARAMETER: "{}"})
    with pytest.raises(ValueError, match="not required by pipeline: epochs"):
        check_package(path, {"epochs": 3})


def test_the_configuration_parameter_takes_its_json_as_text_and_a_struct_is_refused(compiled):
    _, path, _, _ = compiled
    text = '{"training": {"epochs": 3}}'
    assert package_params(path, {CONFIG_PARAMETER: text}) == {CONFIG_PARAMETER: text}
    check_package(path, {CONFIG_PARAMETER: text})
    with pytest.raises(ValueError, match="input parameter config requires type string, but the input parameter "
                                         "is not of string value type"):
        check_package(path, {CONFIG_PARAMETER: {"training": {"epochs": 3}}})


def test_vertex_gets_a_pipeline_job_with_a_machine_accelerator_name(tmp_path):
    config = load_config("study", overrides=[
        f"name={NAME}", f"kubeflow.image={IMAGE}", "pipeline_root=gs://bucket/root",
        "data.tfrecords_dir=gs://bucket/tfrecords", "serving_dir=gs://bucket/serving",
        "kubeflow.vertex_accelerator=NVIDIA_L4", "kubeflow.trainer_gpus=2", "tuner.enabled=true"])
    with open(compile_pipeline(config, "vertex", str(tmp_path))) as f:
        job = json_format.ParseDict(json.load(f), pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=True)
    assert job.runtime_config.gcs_output_directory == "gs://bucket/root"
    spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec())
    for node in ("Trainer", "Tuner"):  # the Tuner's trials train on the Trainer's accelerators
        accelerator = executors(spec)[_executor_label(spec, node)].container.resources.accelerator
        assert (accelerator.type, accelerator.count) == ("NVIDIA_L4", 2), node
    text = json_format.MessageToJson(spec)
    assert "cxr.components.trainer.run_fn" in text and "cxr.components.tuner.TunerExecutor" in text


def test_vertex_refuses_paths_its_steps_cannot_reach(tmp_path):
    with pytest.raises(ConfigError, match="pipeline_root is 'build/pipeline': Vertex AI Pipelines' steps reach gs://"):
        compile_pipeline(load_config("study", overrides=[f"name={NAME}", f"kubeflow.image={IMAGE}"]), "vertex",
                         str(tmp_path))


def test_an_unknown_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown target 'argo'"):
        compile_pipeline(_config(), "argo", str(tmp_path))
