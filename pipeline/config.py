"""The one typed configuration that flows from `cxr run` into the pipeline.

Two presets: `study` (the study's model and training, 224 px, full widths) and
`demo` (small images and narrow widths, so the whole pipeline runs on two CPU
cores in a few minutes). A YAML file may override any field of a preset, and
`--set section.field=value` flags override the file.
"""
import dataclasses
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import yaml

from cxr.components.input_limits import InputLimits


class ConfigError(ValueError):
    """A configuration file or override that does not fit the configuration."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    tfrecords_dir: str = "demo/tfrecords"
    span: Optional[int] = None  # None: the latest span
    # Hash buckets of patient_id for train / eval / test: 8 / 1 / 1 = 80 / 10 / 10 %.
    split_buckets: Tuple[int, int, int] = (8, 1, 1)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    image_size: int = 224
    filters: Tuple[int, ...] = (64, 128, 256, 512)
    dense_units: Tuple[int, ...] = (512, 1024)
    dropout: float = 0.3


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    horizontal_flip: bool = True
    rotation: float = 0.03  # fraction of a full turn, +-
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = 1e-4
    batch_size: int = 16
    epochs: int = 25
    early_stopping_patience: int = 10
    mixed_precision: bool = False
    seed: int = 0  # weights, shuffling and augmentation start from it
    augmentation: AugmentationConfig = AugmentationConfig()


@dataclasses.dataclass(frozen=True)
class GateConfig:
    min_accuracy: float = 0.9
    min_class_recall: float = 0.8
    # A candidate may not fall below the blessed baseline by more than this.
    max_accuracy_regression: float = 0.01
    # ServingCheck: the median latency per image of single-image REST requests to the candidate,
    # served on the machine that runs the check (a CPU: the study's model took ~110 ms here).
    max_latency_ms: float = 1000.0
    # Every class x source slice of the test split with at least min_slice_examples images must
    # have this share of its class found (DeGrave et al. 2021: these models learn the source).
    min_slice_recall: float = 0.5
    min_slice_examples: int = 20


@dataclasses.dataclass(frozen=True)
class TunerConfig:
    """The Tuner's search (components/tuner.py): off unless enabled; each knob lists its choices."""
    enabled: bool = False
    algorithm: str = "random"  # random | bayesian | hyperband
    max_trials: int = 10  # random and bayesian
    epochs_per_trial: int = 5  # the most any trial trains (hyperband's max_epochs)
    learning_rate: Tuple[float, ...] = (3e-5, 1e-4, 3e-4, 1e-3)
    width_multiplier: Tuple[float, ...] = (0.5, 1.0)  # times every convolution's filters
    dense_multiplier: Tuple[float, ...] = (0.5, 1.0)
    dropout: Tuple[float, ...] = (0.2, 0.3, 0.5)
    batch_size: Tuple[int, ...] = (16, 32)
    augmentation_strength: Tuple[float, ...] = (0.0, 0.5, 1.0)  # times every augmentation range


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    # Against the last accepted span's statistics: warn (record it), stop (before training) or off.
    action: str = "warn"
    categorical_threshold: float = 0.1  # L-infinity distance, for label, source and format
    numeric_threshold: float = 0.1  # Jensen-Shannon divergence, for height, width, channels, bit depth
    # Where the last accepted span's statistics are kept; empty: <pipeline_root>/drift-baseline.
    baseline_dir: str = ""


DEFAULT_IMAGE = "cxr-pipeline:latest"
# ML Metadata's gRPC service, as every Kubeflow Pipelines install runs it.
KFP_METADATA_GRPC = "metadata-grpc-service.kubeflow:8080"
SQLITE_METADATA = "sqlite"


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
    # The GPU node pool, for the Trainer and the Tuner on Kubeflow Pipelines: node labels as
    # key=value, and the taints to tolerate as `kubectl taint` writes them, key[=value]:Effect.
    gpu_node_selector: Tuple[str, ...] = ()
    gpu_tolerations: Tuple[str, ...] = ()

    def mounts(self) -> Dict[str, str]:
        """{mount path: claim} of the volumes."""
        return {path: claim for claim, _, path in (volume.partition(":") for volume in self.volumes)}

    def node_labels(self) -> Dict[str, str]:
        return dict(label.split("=", 1) for label in self.gpu_node_selector)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str = "cxr"
    pipeline_root: str = "build/pipeline"
    metadata_path: str = "build/metadata.sqlite"
    serving_dir: str = "build/serving"
    model_name: str = "cxr"
    stop_on_anomalies: bool = True
    enable_cache: bool = True
    beam_args: Tuple[str, ...] = ("--direct_running_mode=in_memory",)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    serving: InputLimits = InputLimits()  # what the exported model refuses before decoding
    tuner: TunerConfig = TunerConfig()
    drift: DriftConfig = DriftConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()

    def __post_init__(self):
        if final_feature_map_size(self.model.image_size, len(self.model.filters)) < 1:
            raise ConfigError(f"model.image_size {self.model.image_size} is too small for "
                              f"{len(self.model.filters)} blocks of two 3x3 'valid' convolutions and a 2x2 pool")
        if self.tuner.algorithm not in ("random", "bayesian", "hyperband"):
            raise ConfigError(f"tuner.algorithm must be random, bayesian or hyperband, got {self.tuner.algorithm!r}")
        if self.drift.action not in ("warn", "stop", "off"):
            raise ConfigError(f"drift.action must be warn, stop or off, got {self.drift.action!r}")
        if any(bucket <= 0 for bucket in self.data.split_buckets):
            raise ConfigError(f"data.split_buckets must be positive, got {self.data.split_buckets}")
        for setting, path in self.storage_paths().items():
            if path.startswith("minio://"):
                raise ConfigError(
                    f"{setting} is {path!r}: TensorFlow cannot read minio:// (Kubeflow Pipelines' own artifact "
                    f"store); use gs://, or a path on a volume every task mounts (kubeflow.volumes)")
        _check_kubeflow(self.kubeflow)

    def storage_paths(self) -> Dict[str, str]:
        """{setting: path} of every folder or file the pipeline's steps read or write."""
        paths = {"pipeline_root": self.pipeline_root, "data.tfrecords_dir": self.data.tfrecords_dir,
                 "serving_dir": self.serving_dir, "metadata_path": self.metadata_path}
        if self.drift.baseline_dir:
            paths["drift.baseline_dir"] = self.drift.baseline_dir
        return paths


def _check_kubeflow(settings: KubeflowConfig) -> None:
    grpc = settings.metadata_grpc
    host, _, port = grpc.rpartition(":")
    if grpc != SQLITE_METADATA and not (host and port.isdigit()):
        raise ConfigError(f"kubeflow.metadata_grpc must be host:port of ML Metadata's gRPC service "
                          f"(default {KFP_METADATA_GRPC}) or {SQLITE_METADATA}, got {grpc!r}")
    for volume in settings.volumes:
        claim, _, path = volume.partition(":")
        if not claim or not path.startswith("/"):
            raise ConfigError(f"kubeflow.volumes: {volume!r} must look like claim-name:/mount/path")
    for label in settings.gpu_node_selector:
        if not re.fullmatch(r"[^=\s]+=[^=\s]*", label):
            raise ConfigError(f"kubeflow.gpu_node_selector: {label!r} must look like key=value")
    for taint in settings.gpu_tolerations:
        if not TAINT.fullmatch(taint):
            raise ConfigError(f"kubeflow.gpu_tolerations: {taint!r} must look like key=value:Effect or key:Effect, "
                              f"Effect one of {', '.join(TAINT_EFFECTS)} (as `kubectl taint` writes it)")


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TAINT = re.compile(r"(?P<key>[^=:\s]+)(=(?P<value>[^=:\s]*))?:(?P<effect>%s)" % "|".join(TAINT_EFFECTS))


def final_feature_map_size(image_size: int, blocks: int) -> int:
    """Side of the last feature map: each block loses 4 pixels to its convolutions, then halves."""
    for _ in range(blocks):
        image_size = (image_size - 4) // 2
    return image_size


PRESETS = {
    "study": PipelineConfig(),
    "demo": PipelineConfig(
        model=ModelConfig(image_size=96, filters=(32, 64, 128, 128), dense_units=(128, 128), dropout=0.2),
        training=TrainingConfig(learning_rate=3e-4, batch_size=16, epochs=40, early_stopping_patience=10,
                                augmentation=AugmentationConfig(rotation=0.02, zoom=0.05, brightness=0.05,
                                                                contrast=0.05)),
        gate=GateConfig(min_accuracy=0.6, min_class_recall=0.3, max_accuracy_regression=0.05),
    ),
}


def load_config(preset: str = "demo", path: Optional[str] = None, overrides: List[str] = ()) -> PipelineConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    values = to_dict(PRESETS[preset])
    if path:
        _merge(values, _read_yaml(path), origin=path)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} must look like section.field=value")
        _merge(values, _nested(key.split("."), yaml.safe_load(raw)), origin=f"--set {override}")
    return from_dict(values)


def to_dict(config) -> Dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: PipelineConfig) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


def from_json(text: str, origin: str) -> PipelineConfig:
    """The configuration `to_json` wrote; a setting this code does not know is refused by name."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{origin} is not a JSON configuration: {error}") from error
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: expected a JSON object of configuration sections")
    values = to_dict(PipelineConfig())
    _merge(values, document, origin=origin)
    return from_dict(values)


def from_dict(values: Dict[str, Any], cls=PipelineConfig):
    kwargs = {}
    for field in dataclasses.fields(cls):
        value = values[field.name]
        if dataclasses.is_dataclass(field.type):
            value = from_dict(value, field.type)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f) or {}
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration sections")
    return document


def _nested(keys: List[str], value) -> Dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def _merge(target: Dict[str, Any], update: Dict[str, Any], origin: str, prefix: str = "") -> None:
    for key, value in update.items():
        if key not in target:
            raise ConfigError(f"{origin}: unknown setting {prefix}{key}; known: {', '.join(sorted(target))}")
        if isinstance(target[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {prefix}{key} is a section; give its fields")
            _merge(target[key], value, origin, prefix=f"{prefix}{key}.")
        else:
            target[key] = _coerced(target[key], value, f"{origin}: {prefix}{key}")


def _coerced(current, value, where: str):
    if current is None or value is None:
        return value
    if isinstance(current, bool) != isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return type(current)(value) if isinstance(current, float) else value
    if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    return value
