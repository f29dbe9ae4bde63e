"""Compiles `create_pipeline(config)` for Kubeflow Pipelines v2 or Vertex AI Pipelines (KubeflowV2DagRunner).

- target `kfp`: a bare PipelineSpec YAML, what `kfp.Client` uploads to open-source KFP;
- target `vertex`: a PipelineJob JSON, what Vertex AI Pipelines runs.
The pipeline is the very one the local runner runs; this module adds only what a
cluster needs: the container image, no ML Metadata connection (the cluster has its
own) and the Trainer's resources. Component code is not shipped at compile time:
it is installed in the image and referred to by dotted paths (cxr.components...).
"""
import json
import os

import tensorflow as tf
import yaml
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from cxr.pipeline.config import KubeflowConfig, PipelineConfig
from cxr.pipeline.pipeline import create_pipeline

PACKAGE_FILES = {"kfp": "pipeline.yaml", "vertex": "pipeline.json"}
GPU_COMPONENTS = ("Trainer", "Tuner")

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def compile_pipeline(config: PipelineConfig, target: str, out_dir: str) -> str:
    """Writes the compiled pipeline into out_dir and returns its path."""
    if target not in PACKAGE_FILES:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(PACKAGE_FILES)}")
    pipeline = create_pipeline(config)
    request_accelerators(pipeline, trainer_resources(config.kubeflow, target))
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image))
    job = runner.run(pipeline, write_out=False)
    path = os.path.join(out_dir, PACKAGE_FILES[target])
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(path, "w") as f:
        if target == "kfp":
            # KFP reads the pipeline root from the spec; the runner leaves it in the PipelineJob only.
            spec = dict(job["pipelineSpec"], defaultPipelineRoot=config.pipeline_root)
            f.write(f"# PIPELINE DEFINITION\n# Name: {config.name}\n# Compiled by cxr kfp compile\n")
            yaml.safe_dump(spec, f, sort_keys=True)
        else:
            json.dump(job, f, sort_keys=True, indent=1)
    return path


def trainer_resources(settings: KubeflowConfig, target: str) -> ResourceSpec:
    accelerator = settings.kfp_accelerator if target == "kfp" else settings.vertex_accelerator
    spec = ResourceSpec(cpu_limit=settings.trainer_cpu_limit, memory_limit=settings.trainer_memory_limit_gb)
    if settings.trainer_gpus > 0:
        spec.accelerator.type = accelerator
        spec.accelerator.count = settings.trainer_gpus
    return spec


def request_accelerators(pipeline: tfx.dsl.Pipeline, resources: ResourceSpec) -> None:
    for component in pipeline.components:
        if component.id in GPU_COMPONENTS:
            component.with_platform_config(resources)
