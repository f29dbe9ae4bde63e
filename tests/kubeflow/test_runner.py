"""`cxr kfp compile`: the same pipeline as a KFP v2 PipelineSpec (and a Vertex PipelineJob), read back with kfp's protos."""
import json
import os

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cxr.kubeflow.runner import compile_pipeline
from cxr.pipeline.config import load_config

ROOT = "gs://cxr-bucket/pipeline-root"
IMAGE = "registry.example.com/cxr-pipeline:7"
BEAM = ["--runner=DataflowRunner", "--project=cxr-project", "--region=europe-west4"]
COMPONENTS = {"ImportExampleGen", "StatisticsGen", "SchemaGen", "curated_schema",
              "ExampleValidator", "ValidationGate", "DriftCheck", "Transform", "Trainer", "Evaluator", "Pusher"}


def _config(*overrides):
    return load_config("study", overrides=[
        f"pipeline_root={ROOT}", f"kubeflow.image={IMAGE}", f"beam_args={json.dumps(BEAM)}",
        "serving_dir=gs://cxr-bucket/serving", "kubeflow.trainer_gpus=2", "kubeflow.trainer_cpu_limit=12",
        "kubeflow.trainer_memory_limit_gb=48", *overrides])


@pytest.fixture(scope="module")
def kfp_spec(tmp_path_factory):
    path = compile_pipeline(_config(), "kfp", str(tmp_path_factory.mktemp("kfp")))
    assert path.endswith("pipeline.yaml")
    with open(path) as f:
        return json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())


def _container(spec, task):
    label = spec.components[spec.root.dag.tasks[task].component_ref.name].executor_label
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return deployment.executors[label].container


def test_every_component_is_a_task_with_its_dependencies(kfp_spec):
    tasks = kfp_spec.root.dag.tasks
    assert COMPONENTS <= set(tasks)
    depends = {name: set(task.dependent_tasks) for name, task in tasks.items()}
    assert {"ValidationGate", "DriftCheck", "ImportExampleGen"} <= depends["Transform"]
    assert "Transform" in depends["Trainer"]
    assert {"Trainer", "ImportExampleGen"} <= depends["Evaluator"]
    assert {"Evaluator", "Trainer"} <= depends["Pusher"]


def test_the_pipeline_root_image_and_beam_arguments_land_where_kfp_reads_them(kfp_spec):
    assert kfp_spec.default_pipeline_root == ROOT
    for task in ("StatisticsGen", "Transform", "Evaluator", "Trainer", "Pusher"):
        container = _container(kfp_spec, task)
        assert container.image == IMAGE, task
    for task in ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"):
        args = list(_container(kfp_spec, task).args)
        assert all(flag in args for flag in BEAM), (task, args)


def test_only_the_trainer_asks_for_gpus_with_the_kubernetes_resource_name(kfp_spec):
    resources = _container(kfp_spec, "Trainer").resources
    assert (resources.accelerator.type, resources.accelerator.count) == ("nvidia.com/gpu", 2)
    assert (resources.cpu_limit, resources.memory_limit) == (12.0, 48.0)
    for task in COMPONENTS - {"Trainer", "curated_schema"}:
        assert not _container(kfp_spec, task).resources.accelerator.type, task


def test_component_code_is_referred_to_by_dotted_path_not_shipped_as_a_module_file(kfp_spec):
    text = json_format.MessageToJson(kfp_spec)
    assert "module_file" not in text and "module_path" not in text
    assert "cxr.components.transform.preprocessing_fn" in text
    assert "cxr.components.trainer.run_fn" in text


def test_vertex_gets_a_pipeline_job_with_a_machine_accelerator_name(tmp_path):
    path = compile_pipeline(_config("kubeflow.vertex_accelerator=NVIDIA_L4"), "vertex", str(tmp_path))
    with open(path) as f:
        job = json_format.ParseDict(json.load(f), pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=True)
    assert job.runtime_config.gcs_output_directory == ROOT
    spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec())
    accelerator = _container(spec, "Trainer").resources.accelerator
    assert (accelerator.type, accelerator.count) == ("NVIDIA_L4", 2)


def test_no_gpus_means_no_accelerator_request(tmp_path):
    path = compile_pipeline(_config("kubeflow.trainer_gpus=0"), "kfp", str(tmp_path))
    with open(path) as f:
        spec = json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())
    assert not _container(spec, "Trainer").resources.accelerator.type


def test_an_unknown_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown target 'argo'"):
        compile_pipeline(_config(), "argo", str(tmp_path))


def test_the_example_cluster_configuration_compiles(tmp_path):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "kubeflow", "cluster.example.yaml")
    config = load_config("study", example)
    assert config.beam_args[0] == "--runner=DataflowRunner" and config.drift.action == "stop"
    path = compile_pipeline(config, "kfp", str(tmp_path))
    with open(path) as f:
        spec = json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())
    assert spec.default_pipeline_root == config.pipeline_root
    assert _container(spec, "Trainer").image == config.kubeflow.image


def test_the_tuner_when_enabled_asks_for_gpus_like_the_trainer(tmp_path):
    path = compile_pipeline(_config("tuner.enabled=true"), "kfp", str(tmp_path))
    with open(path) as f:
        spec = json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())
    assert "Tuner" in spec.root.dag.tasks["Trainer"].dependent_tasks
    accelerator = _container(spec, "Tuner").resources.accelerator
    assert (accelerator.type, accelerator.count) == ("nvidia.com/gpu", 2)
    assert "cxr.components.tuner.tuner_fn" in json_format.MessageToJson(spec)
