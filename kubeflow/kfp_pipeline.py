"""`--target kfp`: `create_pipeline(config)` as a Kubeflow Pipelines 2.x pipeline, compiled by the kfp SDK.

Every node of the TFX pipeline becomes one container task of the pipeline image with the node's
upstream nodes as its dependencies; the task runs that node with TFX's launcher against ML Metadata
(kubeflow/task.py). Nothing passes through KFP's artifacts and KFP's step cache is off: state and
caching live in ML Metadata, as on the local runner. Each task is given the compiled configuration
(a constant input) and the pipeline's one parameter, `config`: the settings a run changes, merged onto
it (default `{}`, none; cluster_checks.run_configuration), so a recurring run needs no parameters and
nothing is written to the pipeline root at compile time. A last task hands KFP's UI the evaluation
(Metrics, ClassificationMetrics) and the run report (HTML).
"""
import functools
from typing import Dict, List

from kfp import compiler, dsl, kubernetes

from cxr.contract import Nodes
from cxr.kubeflow.cluster_checks import models_mount
from cxr.kubeflow.settings import BEAM_NODES, CONFIG_PARAMETER, GPU_NODES, KubeflowConfig
from cxr.pipeline.config import PipelineConfig, to_json
from cxr.pipeline.node_launcher import node_dependencies

TASK_COMMAND = ["python", "-m", "cxr.kubeflow.task"]
NO_CHANGES = "{}"  # the config parameter's default: the run changes no setting of the compiled configuration
BUCKET_SCHEMES = ("gs://",)  # a pipeline root KFP's launcher and TensorFlow both write (minio:// TF cannot)


def compile_kfp(config: PipelineConfig, path: str) -> None:
    """The training job's spec; runner.compile_pipeline has checked the configuration."""
    compiler.Compiler().compile(_pipeline_function(config, node_dependencies(config)), path)


def _pipeline_function(config: PipelineConfig, dependencies: Dict[str, List[str]]):
    settings, compiled_config = config.kubeflow, to_json(config)
    mounts = {node_id: task_mounts(config, node_id) for node_id in [*dependencies, None]}

    def cxr_pipeline(config: str = NO_CHANGES):  # the parameter's name is CONFIG_PARAMETER
        tasks = {}
        for node_id, upstream in dependencies.items():
            task = _node_component(node_id, settings.image)(
                compiled_config=compiled_config, config=config, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            task.set_display_name(node_id).set_caching_options(False).after(*(tasks[u] for u in upstream))
            mount_volumes(task, mounts[node_id])
            if node_id in GPU_NODES:
                _place_on_gpu_nodes(task, settings)
            elif node_id in BEAM_NODES:
                task.set_cpu_request(f"{settings.beam_cpu_request:g}").set_memory_request(
                    _megabytes(settings.beam_memory_request_gb))
            tasks[node_id] = task
        outputs = _ui_outputs_component(settings.image)(
            compiled_config=compiled_config, config=config, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        outputs.set_display_name("KFP UI outputs").set_caching_options(False).after(*tasks.values())
        mount_volumes(outputs, mounts[None])

    return dsl.pipeline(name=config.name, pipeline_root=default_pipeline_root(config), description=(
        "The cxr chest X-ray pipeline: one task per TFX node, state in ML Metadata"))(cxr_pipeline)


def config_args(compiled_config, config) -> List:
    """The task's configuration: the compiled one, a constant of its command line, and the run's changes."""
    return ["--compiled-config", compiled_config, "--config", config]


def default_pipeline_root(config: PipelineConfig):
    """The project's root when it is a bucket, for KFP's own outputs (the UI's artifacts) too; otherwise none,
    and KFP keeps them in its artifact store (minio://mlpipeline/v2/artifacts by default)."""
    return config.pipeline_root if config.pipeline_root.startswith(BUCKET_SCHEMES) else None


@functools.lru_cache(maxsize=None)
def _node_component(node_id: str, image: str):
    def node(compiled_config: str, config: str, run_id: str):
        return dsl.ContainerSpec(image=image, command=TASK_COMMAND, args=[
            "node", "--node-id", node_id, *config_args(compiled_config, config), "--run-id", run_id])
    node.__name__ = node_id  # the component's and the task's name in KFP
    return dsl.container_component(node)


@functools.lru_cache(maxsize=None)
def _ui_outputs_component(image: str):
    def kfp_ui_outputs(compiled_config: str, config: str, run_id: str, metrics: dsl.Output[dsl.Metrics],
                       confusion_matrix: dsl.Output[dsl.ClassificationMetrics], report: dsl.Output[dsl.HTML]):
        return dsl.ContainerSpec(image=image, command=TASK_COMMAND, args=[
            "outputs", "--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
            *config_args(compiled_config, config), "--run-id", run_id])
    return dsl.container_component(kfp_ui_outputs)


def task_mounts(config: PipelineConfig, node_id) -> Dict[str, str]:
    """{mount path: claim} a task mounts: every volume, but the served models' (the one serving_dir lies on)
    on the Pusher's task alone, so that no other task can write what TF Serving serves. kfp-kubernetes mounts
    a claim read-write or not at all (its PvcMount has no read-only field), and cluster_checks refuses a
    serving_dir whose volume also holds another of the pipeline's paths."""
    mounts = config.kubeflow.mounts()
    models = models_mount(config)
    if models is not None and node_id != Nodes.PUSHER:
        del mounts[models]
    return mounts


def mount_volumes(task, mounts: Dict[str, str]) -> None:
    for mount_path, claim in mounts.items():
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=mount_path)


def _place_on_gpu_nodes(task, settings: KubeflowConfig) -> None:
    task.set_cpu_limit(f"{settings.trainer_cpu_limit:g}").set_memory_limit(
        _megabytes(settings.trainer_memory_limit_gb))
    if settings.trainer_gpus > 0:
        task.set_accelerator_type(settings.kfp_accelerator).set_accelerator_limit(settings.trainer_gpus)
    for key, value in settings.node_labels().items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if settings.gpu_tolerations:
        # kfp-kubernetes 1.0.0 has no helper for tolerations; KFP's driver reads them from 2.1 on
        # (kubernetes_platform/proto/kubernetes_executor_config.proto, message Toleration).
        task.platform_config.setdefault("kubernetes", {})["tolerations"] = list(settings.tolerations())


def _megabytes(gigabytes: float) -> str:
    return f"{round(gigabytes * 1000)}M"  # kfp takes whole numbers of memory units: megabytes keep a fraction
