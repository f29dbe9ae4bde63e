"""The one typed configuration that flows from `cxr run` into the pipeline.

Two presets: `study` (the study's model and training, 224 px, full widths) and
`demo` (small images and narrow widths, so the whole pipeline runs on two CPU
cores in a few minutes). A YAML file may override any field of a preset, and
`--set section.field=value` flags override the file.
"""
import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import yaml

from cxr import contract
from cxr.components.settings import (
    AugmentationSettings, DriftSettings, GateSettings, InputLimits, ModelSettings, SettingsError, TrainerSettings,
    TrainingSettings, TunerSettings, ValidationSettings, read)
from cxr.kubeflow.settings import KubeflowConfig
from cxr.monitoring.settings import MonitoringSettings

# A configuration file or override that does not fit the configuration: one error type for every
# setting, the pipeline's own and the components' (whose types are the sections below).
ConfigError = SettingsError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    tfrecords_dir: str = "build/tfrecords"
    span: Optional[int] = None  # None: the latest span
    # Hash buckets of patient_id for train / eval / test: 8 / 1 / 1 = 80 / 10 / 10 %.
    split_buckets: Tuple[int, int, int] = (8, 1, 1)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str = "cxr"
    pipeline_root: str = "build/pipeline"
    metadata_path: str = "build/metadata.sqlite"
    serving_dir: str = "build/serving"
    model_name: str = contract.MODEL_NAME
    enable_cache: bool = True
    beam_args: Tuple[str, ...] = ("--direct_running_mode=in_memory",)
    data: DataConfig = DataConfig()
    # The components' settings (components/settings.py).
    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    gate: GateSettings = GateSettings()
    validation: ValidationSettings = ValidationSettings()
    serving: InputLimits = InputLimits()  # what the exported model refuses before decoding
    tuner: TunerSettings = TunerSettings()
    drift: DriftSettings = DriftSettings()
    monitoring: MonitoringSettings = MonitoringSettings()  # cxr monitor's thresholds (monitoring/settings.py)
    kubeflow: KubeflowConfig = KubeflowConfig()

    def __post_init__(self):
        if final_feature_map_size(self.model.image_size, len(self.model.filters)) < 1:
            raise ConfigError(f"model.image_size {self.model.image_size} is too small for "
                              f"{len(self.model.filters)} blocks of two 3x3 'valid' convolutions and a 2x2 pool")
        if any(bucket <= 0 for bucket in self.data.split_buckets):
            raise ConfigError(f"data.split_buckets must be positive, got {self.data.split_buckets}")
        for setting, path in self.storage_paths().items():
            if path.startswith("minio://"):
                raise ConfigError(
                    f"{setting} is {path!r}: TensorFlow cannot read minio:// (Kubeflow Pipelines' own artifact "
                    f"store); use gs://, or a path on a volume every task mounts (kubeflow.volumes)")

    def trainer_settings(self) -> TrainerSettings:
        """What the Trainer (and each of the Tuner's trials) trains and exports with."""
        return TrainerSettings(model=self.model, training=self.training, input_limits=self.serving)

    def storage_paths(self) -> Dict[str, str]:
        """{setting: path} of every folder or file the pipeline's steps read or write."""
        paths = {"pipeline_root": self.pipeline_root, "data.tfrecords_dir": self.data.tfrecords_dir,
                 "serving_dir": self.serving_dir, "metadata_path": self.metadata_path}
        if self.monitoring.logs_root:
            paths["monitoring.logs_root"] = self.monitoring.logs_root
        return paths


def with_absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """Local folders (storage_paths) made absolute, so that what ML Metadata records works from any folder."""
    values = to_dict(config)
    for setting, path in config.storage_paths().items():
        if "://" not in path:
            *sections, field = setting.split(".")
            section = values
            for name in sections:
                section = section[name]
            section[field] = os.path.abspath(path)
    return from_dict(values)


def final_feature_map_size(image_size: int, blocks: int) -> int:
    """Side of the last feature map: each block loses 4 pixels to its convolutions, then halves."""
    for _ in range(blocks):
        image_size = (image_size - 4) // 2
    return image_size


PRESETS = {
    "study": PipelineConfig(),
    # Its folders are where `make demo` writes, so that cxr run / report / serve find them with no flags.
    "demo": PipelineConfig(
        pipeline_root="demo/pipeline", metadata_path="demo/metadata.sqlite", serving_dir="demo/serving",
        data=DataConfig(tfrecords_dir="demo/tfrecords"),
        model=ModelSettings(image_size=96, filters=(32, 64, 128, 128), dense_units=(128, 128), dropout=0.2),
        # auto: bfloat16 where the machine computes it natively (this project's CPUs: 188-229 s for make demo,
        # test accuracy >= 0.9 in 5 of 5 fresh clones, bench/RESULTS.md), float32 elsewhere.
        training=TrainingSettings(learning_rate=3e-4, batch_size=16, epochs=40, early_stopping_patience=10,
                                  precision="auto",
                                  augmentation=AugmentationSettings(rotation=0.02, zoom=0.05, brightness=0.05,
                                                                    contrast=0.05)),
        gate=GateSettings(min_accuracy=0.6, min_class_recall=0.3, max_accuracy_regression=0.05),
        # With tuner.enabled=true: 5-epoch trials cannot leave the demo's class-share plateau (left after ~6
        # epochs); 15-epoch ones can, and 6 of them took 961 s on two cores (bench/RESULTS.md, "Tuning").
        tuner=TunerSettings(epochs_per_trial=15, max_trials=6),
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
    """The configuration `to_json` wrote, whole: a setting this code does not know, or one missing, is refused
    by name."""
    try:
        return from_dict(_json_object(text, origin))
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from error


def with_changes(config: PipelineConfig, text: str, origin: str) -> PipelineConfig:
    """`config` with the settings the JSON object `text` gives merged onto it (`{}`: none), each checked as a
    --set override is; the sections and fields it does not name keep `config`'s values."""
    values = to_dict(config)
    _merge(values, _json_object(text, origin), origin=origin)
    return from_dict(values)


def changed_settings(config: PipelineConfig, changed: PipelineConfig) -> List[str]:
    """The dotted names of the settings whose values differ between the two configurations."""
    def leaves(values, prefix=""):
        for key, value in values.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    before = dict(leaves(to_dict(config)))
    return [name for name, value in leaves(to_dict(changed)) if before[name] != value]


def _json_object(text: str, origin: str) -> Dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{origin} is not a JSON configuration: {error}") from error
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: expected a JSON object of configuration sections")
    return document


def from_dict(values: Dict[str, Any]) -> PipelineConfig:
    return read(PipelineConfig, values, "")


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


# Settings that were replaced: the old key refused with the new one named.
REPLACED = {"training.mixed_precision": "training.precision (float32, mixed_float16, mixed_bfloat16 or auto; "
                                        "mixed_precision: true was mixed_float16)"}


def _merge(target: Dict[str, Any], update: Dict[str, Any], origin: str, prefix: str = "") -> None:
    for key, value in update.items():
        if f"{prefix}{key}" in REPLACED:
            raise ConfigError(f"{origin}: {prefix}{key} was replaced by {REPLACED[prefix + key]}")
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
        value = _number(value)
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return type(current)(value) if isinstance(current, float) else value
    if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    return value


def _number(value):
    """YAML 1.1 reads 1e-3 (no dot) as a string; such a string is the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
