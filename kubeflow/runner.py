"""`cxr kfp compile`: the pipeline for a cluster.

- target `kfp`: open-source Kubeflow Pipelines 2.x, a PipelineSpec YAML compiled by the kfp SDK with
  one container task per TFX node (kubeflow/kfp_pipeline.py);
- target `vertex`: Vertex AI Pipelines, the PipelineJob JSON of TFX's KubeflowV2DagRunner, the path
  TFX itself tests on Vertex (its drivers run as Vertex's lifecycle hooks, its Resolver as Vertex's
  resolver executor, which open-source KFP implements neither of).
Both compile the very pipeline the local runner runs. Job `monitoring` (target kfp) is `cxr monitor` as a
pipeline of one task, for a recurring run (kubeflow/monitoring_job.py). Component code is not shipped at compile
time: it is installed in the image and referred to by dotted paths (cxr.components...).
"""
import json
import os

from cxr.kubeflow.cluster_checks import check_cluster_config
from cxr.kubeflow.settings import GPU_NODES, MONITORING, TRAINING, KubeflowConfig
from cxr.pipeline.config import PipelineConfig

PACKAGE_FILES = {"kfp": "pipeline.yaml", "vertex": "pipeline.json"}
MONITORING_PACKAGE = "monitoring.yaml"


def compile_pipeline(config: PipelineConfig, target: str, out_dir: str, job: str = TRAINING) -> str:
    """Writes the compiled pipeline into out_dir and returns its path. The configuration is checked once, here,
    before kfp or TFX is imported: a setting left from the example file is answered at once."""
    if target not in PACKAGE_FILES:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(PACKAGE_FILES)}")
    if job not in (TRAINING, MONITORING):
        raise ValueError(f"unknown job {job!r}; expected {TRAINING} or {MONITORING}")
    if job == MONITORING and target != "kfp":
        raise ValueError(f"the {MONITORING} job compiles for kfp only, not {target!r}")
    check_cluster_config(config, target, job)
    os.makedirs(out_dir, exist_ok=True)
    if job == MONITORING:
        from cxr.kubeflow.monitoring_job import compile_monitoring
        path = os.path.join(out_dir, MONITORING_PACKAGE)
        compile_monitoring(config, path)
        return path
    path = os.path.join(out_dir, PACKAGE_FILES[target])
    if target == "kfp":
        from cxr.kubeflow.kfp_pipeline import compile_kfp
        compile_kfp(config, path)
    else:
        _compile_vertex(config, path)
    return path


def _compile_vertex(config: PipelineConfig, path: str) -> None:
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from cxr.pipeline.pipeline import create_pipeline
    pipeline = create_pipeline(config)
    for component in pipeline.components:
        if component.id in GPU_NODES:
            component.with_platform_config(vertex_resources(config.kubeflow))
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image))
    job = runner.run(pipeline, write_out=False)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(job, f, sort_keys=True, indent=1)


def vertex_resources(settings: KubeflowConfig):
    from kfp.pipeline_spec import pipeline_spec_pb2
    ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    spec = ResourceSpec(cpu_limit=settings.trainer_cpu_limit, memory_limit=settings.trainer_memory_limit_gb)
    if settings.trainer_gpus > 0:
        spec.accelerator.type = settings.vertex_accelerator
        spec.accelerator.count = settings.trainer_gpus
    return spec
