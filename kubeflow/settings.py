"""The `kubeflow` section of the pipeline's configuration: what the compiled pipeline asks of the cluster.

Every rule about these settings lives here or in kubeflow/cluster_checks.py (what a cluster refuses of
the whole configuration); the pipeline's configuration (pipeline/config.py) only holds the section.
"""
import dataclasses
import re
from typing import Dict, Tuple

from cxr import contract
from cxr.components.settings import SettingsError

DEFAULT_IMAGE = "cxr-pipeline:latest"
# ML Metadata's gRPC service, as every Kubeflow Pipelines install runs it.
KFP_METADATA_GRPC = "metadata-grpc-service.kubeflow:8080"
SQLITE_METADATA = "sqlite"

# The compiled pipelines' one run parameter: a JSON object of the settings a run changes (default `{}`).
CONFIG_PARAMETER = "config"
TRAINING, MONITORING = "training", "monitoring"  # the jobs `cxr kfp compile --job` compiles

# Where each node's task runs: the Trainer and the Tuner on the GPU node pool, with the trainer_* limits; the
# nodes that run Beam's DirectRunner in memory with the beam_* requests.
GPU_NODES = (contract.Nodes.TRAINER, contract.Nodes.TUNER)
BEAM_NODES = (contract.Nodes.EXAMPLE_GEN, contract.Nodes.STATISTICS_GEN, contract.Nodes.TRANSFORM,
              contract.Nodes.EVALUATOR)

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TAINT = re.compile(r"(?P<key>[^=:\s]+)(=(?P<value>[^=:\s]*))?:(?P<effect>%s)" % "|".join(TAINT_EFFECTS))


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    # The pipeline image (kubeflow/Dockerfile, `make image`), pushed to a registry the cluster can pull from.
    image: str = DEFAULT_IMAGE
    # Where every task's TFX launcher records the run: ML Metadata's gRPC service as host:port,
    # or `sqlite` for the SQLite file at metadata_path (on a volume every task mounts).
    metadata_grpc: str = KFP_METADATA_GRPC
    # Persistent volume claims every task mounts, as claim:/mount/path (a ReadWriteMany claim
    # holding the TFRecords, the pipeline root and the serving folder, for example).
    volumes: Tuple[str, ...] = ()
    # What the Trainer (and the Tuner) asks for. The accelerator's name depends on the target:
    # Kubeflow Pipelines takes the Kubernetes resource name, Vertex AI a machine accelerator type.
    trainer_gpus: int = 1
    kfp_accelerator: str = "nvidia.com/gpu"
    vertex_accelerator: str = "NVIDIA_TESLA_T4"
    trainer_cpu_limit: float = 8.0
    trainer_memory_limit_gb: float = 32.0
    # What each task that runs Beam in memory (ImportExampleGen, StatisticsGen, Transform, Evaluator)
    # asks the scheduler for: Beam's DirectRunner holds what it processes in the task's memory.
    beam_cpu_request: float = 2.0
    beam_memory_request_gb: float = 8.0
    # The GPU node pool, for the Trainer and the Tuner on Kubeflow Pipelines: node labels as
    # key=value, and the taints to tolerate as `kubectl taint` writes them, key[=value]:Effect.
    gpu_node_selector: Tuple[str, ...] = ()
    gpu_tolerations: Tuple[str, ...] = ()

    def __post_init__(self):
        _check(self)

    def mounts(self) -> Dict[str, str]:
        """{mount path: claim} of the volumes."""
        return {path: claim for claim, _, path in (volume.partition(":") for volume in self.volumes)}

    def node_labels(self) -> Dict[str, str]:
        return dict(label.split("=", 1) for label in self.gpu_node_selector)

    def tolerations(self) -> Tuple[dict, ...]:
        """The taints to tolerate as Kubernetes Toleration objects."""
        return tuple(_toleration(TAINT.fullmatch(taint)) for taint in self.gpu_tolerations)


# The one setting of this section a run's parameter may change: the compiled spec holds the others (the
# image, the volumes, the resources, the node placement), so a change to them could not take effect and is
# refused (cluster_checks.run_configuration).
RUNTIME_SETTINGS = ("metadata_grpc",)


def _toleration(parts) -> dict:
    if parts["value"] is None:
        return {"key": parts["key"], "operator": "Exists", "effect": parts["effect"]}
    return {"key": parts["key"], "operator": "Equal", "value": parts["value"], "effect": parts["effect"]}


def _check(settings: KubeflowConfig) -> None:
    grpc = settings.metadata_grpc
    host, _, port = grpc.rpartition(":")
    if grpc != SQLITE_METADATA and not (host and port.isdigit()):
        raise SettingsError(f"kubeflow.metadata_grpc must be host:port of ML Metadata's gRPC service "
                            f"(default {KFP_METADATA_GRPC}) or {SQLITE_METADATA}, got {grpc!r}")
    for volume in settings.volumes:
        claim, _, path = volume.partition(":")
        if not claim or not path.startswith("/"):
            raise SettingsError(f"kubeflow.volumes: {volume!r} must look like claim-name:/mount/path")
    _check_each_once(settings.volumes)
    for setting in ("trainer_cpu_limit", "trainer_memory_limit_gb", "beam_cpu_request", "beam_memory_request_gb"):
        if getattr(settings, setting) <= 0:
            raise SettingsError(f"kubeflow.{setting} must be positive, got {getattr(settings, setting)}")
    for label in settings.gpu_node_selector:
        if not re.fullmatch(r"[^=\s]+=[^=\s]*", label):
            raise SettingsError(f"kubeflow.gpu_node_selector: {label!r} must look like key=value")
    for taint in settings.gpu_tolerations:
        if not TAINT.fullmatch(taint):
            raise SettingsError(f"kubeflow.gpu_tolerations: {taint!r} must look like key=value:Effect or "
                                f"key:Effect, Effect one of {', '.join(TAINT_EFFECTS)} (as `kubectl taint` writes it)")


def _check_each_once(volumes: Tuple[str, ...]) -> None:
    """KFP's driver names each pod volume after its claim (backend/src/v2/driver/driver.go, makeVolumeMountPatch),
    and Kubernetes refuses two volumes of one name, or two mounts at one path."""
    seen_claims, seen_paths = {}, {}
    for volume in volumes:
        claim, _, path = volume.partition(":")
        if claim in seen_claims:
            raise SettingsError(f"kubeflow.volumes: claim {claim!r} is mounted twice ({seen_claims[claim]} and "
                                f"{path}); Kubeflow Pipelines names each pod volume after its claim and Kubernetes "
                                f"refuses two volumes of one name: mount it once, at a folder above both")
        if path in seen_paths:
            raise SettingsError(f"kubeflow.volumes: {seen_paths[path]!r} and {claim!r} are both mounted at {path}")
        seen_claims[claim], seen_paths[path] = path, claim
