"""The settings the components run with: their types, defaults, allowed values and one strict reader.

The pipeline's configuration uses these types as its sections (model, training, tuner, gate,
validation, drift, serving) and hands each component its sections whole as plain data
(`dataclasses.asdict`; the custom components take it as one JSON parameter, `to_json`); a
component rebuilds its type with `read` (or `from_json`), which refuses a key it does not know or lacks.
Plain Python: the command line checks a configuration before TensorFlow is imported.
"""
import dataclasses
import json
from typing import Any, Callable, Dict, Mapping, Tuple

from cxr import contract

MIB = 1 << 20
KERNEL_INITIALIZERS = ("glorot_uniform", "he_normal")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
# Keras's mixed precision policies (weights, softmax and loss stay float32), plain float32, or auto: bfloat16
# where the device computes it natively, float32 elsewhere (components/model.py `resolved_precision`).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")


# The keys of the Trainer's and the Tuner's custom_config that carry asdict(TrainerSettings) and asdict(TunerSettings).
TRAINER_KEY, TUNER_KEY = "trainer", "tuner"


class SettingsError(ValueError):
    """A setting that does not fit its type: the message names it."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    image_size: int = 224
    filters: Tuple[int, ...] = (64, 128, 256, 512)
    dense_units: Tuple[int, ...] = (512, 1024)
    dropout: float = 0.3
    # Of every ReLU layer's weights: Keras's default, as the study trained, or he_normal, which keeps
    # the activations' scale through the ReLUs (He et al. 2015).
    kernel_initializer: str = "glorot_uniform"

    def __post_init__(self):
        _check_choice("model.kernel_initializer", self.kernel_initializer, KERNEL_INITIALIZERS)


@dataclasses.dataclass(frozen=True)
class AugmentationSettings:
    horizontal_flip: bool = True
    rotation: float = 0.03  # fraction of a full turn, +-
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    # Per replica: with N GPUs a step takes N x batch_size images and the rate is N x learning_rate.
    learning_rate: float = 1e-4
    # constant, or cosine: from learning_rate at the first epoch down along half a cosine towards 0
    # at the last (Loshchilov & Hutter 2017, without restarts), set at each epoch's start.
    learning_rate_schedule: str = "constant"
    batch_size: int = 16
    epochs: int = 25
    early_stopping_patience: int = 10
    # float32; mixed_float16 (float16 compute, float32 weights, softmax and loss, a scaled loss: GPUs with
    # tensor cores); mixed_bfloat16 (bfloat16 compute, float32's range: no loss scaling; Ampere GPUs on, CPUs
    # with AVX512_BF16 or AMX); auto: mixed_bfloat16 where the device has it, float32 elsewhere, decided
    # where the model is built (the Trainer's or a trial's machine), and recorded with the run.
    precision: str = "float32"
    jit_compile: bool = False  # XLA compiles each training step, augmentation included
    # A split of Transform's examples stays in memory between epochs when it takes at most this
    # much (8-bit pixels: 6,000 images at 224 px are about 300 MiB); 0 reads it from disk each epoch.
    max_cache_mib: int = 2048
    seed: int = 0  # weights, shuffling and augmentation start from it
    augmentation: AugmentationSettings = AugmentationSettings()

    def __post_init__(self):
        _check_choice("training.learning_rate_schedule", self.learning_rate_schedule, LEARNING_RATE_SCHEDULES)
        _check_choice("training.precision", self.precision, PRECISIONS)


@dataclasses.dataclass(frozen=True)
class InputLimits:
    """What the served model refuses before decoding an image, checked in the graph of every signature
    that takes image bytes or tf.Examples (components/export.py)."""
    # A decompression bomb declares a huge image in a small file, so the header is read first.
    max_image_pixels: int = contract.MAX_IMAGE_PIXELS
    # Decoded size, width x height x channels x bytes per sample, as the PNG IHDR or JPEG header
    # declares it. Decoding costs several times this (float32 copies, the gray conversion, the
    # resize): at this limit one request adds at most about 300 MB (bench/serving_memory.py).
    max_image_bytes: int = contract.MAX_IMAGE_BYTES
    # The sum over one request: images are decoded one at a time, but each one's result is kept.
    max_request_bytes: int = 192 * MIB
    # How many: the image signatures (REST and gRPC alike), and the tf.Example signatures TFMA calls.
    max_images_per_request: int = contract.MAX_IMAGES_PER_REQUEST
    max_examples_per_request: int = contract.MAX_EXAMPLES_PER_REQUEST
    # A request's images go through decoding and the CNN this many at a time, so that the model's
    # memory does not grow with a legal request's count (bench/serving_memory.py).
    chunk_images: int = 8

    def __post_init__(self):
        for name in ("max_image_pixels", "max_image_bytes", "max_request_bytes", "max_images_per_request",
                     "max_examples_per_request", "chunk_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SettingsError(f"serving.{name} must be a positive whole number, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """What the Trainer's run_fn (and each of the Tuner's trials) trains and exports with."""
    model: ModelSettings
    training: TrainingSettings
    input_limits: InputLimits

    def with_hyperparameters(self, values: Mapping[str, Any]) -> "TrainerSettings":
        """These settings with the Tuner's choices applied; keys that are not knobs (tuner/epochs...) are left."""
        settings = self
        for name, value in values.items():
            if name in KNOBS:
                settings = KNOBS[name].apply(settings, value)
        return settings


@dataclasses.dataclass(frozen=True)
class Knob:
    """One of the Tuner's knobs: the choices searched by default, and what a chosen value changes."""
    choices: Tuple[Any, ...]
    apply: Callable[[TrainerSettings, Any], TrainerSettings]


def replace_model(settings: TrainerSettings, **changes) -> TrainerSettings:
    return dataclasses.replace(settings, model=dataclasses.replace(settings.model, **changes))


def replace_training(settings: TrainerSettings, **changes) -> TrainerSettings:
    return dataclasses.replace(settings, training=dataclasses.replace(settings.training, **changes))


def _scaled(widths, multiplier) -> Tuple[int, ...]:
    return tuple(max(1, round(width * multiplier)) for width in widths)


def scaled_augmentation(augmentation: AugmentationSettings, strength: float) -> AugmentationSettings:
    """Every range times `strength`; strength 0 also turns flipping off."""
    ranges = {name: value * strength for name, value in dataclasses.asdict(augmentation).items()
              if name != "horizontal_flip"}
    return AugmentationSettings(horizontal_flip=augmentation.horizontal_flip and strength > 0, **ranges)


# The one declaration of each knob: the tuner's settings, its search space and the Trainer follow from it.
KNOBS: Dict[str, Knob] = {
    "learning_rate": Knob((3e-5, 1e-4, 3e-4, 1e-3), lambda s, v: replace_training(s, learning_rate=float(v))),
    # times every convolution's filters, every dense layer's units
    "width_multiplier": Knob((0.5, 1.0), lambda s, v: replace_model(s, filters=_scaled(s.model.filters, v))),
    "dense_multiplier": Knob((0.5, 1.0), lambda s, v: replace_model(s, dense_units=_scaled(s.model.dense_units, v))),
    "dropout": Knob((0.2, 0.3, 0.5), lambda s, v: replace_model(s, dropout=float(v))),
    "batch_size": Knob((16, 32), lambda s, v: replace_training(s, batch_size=int(v))),
    # times every augmentation range
    "augmentation_strength": Knob(
        (0.0, 0.5, 1.0), lambda s, v: replace_training(s, augmentation=scaled_augmentation(s.training.augmentation, v))),
}

TUNER_ALGORITHMS = ("random", "bayesian", "hyperband")


def _check_tuner(settings) -> None:
    _check_choice("tuner.algorithm", settings.algorithm, TUNER_ALGORITHMS)
    if settings.min_completed_trials < 0:
        raise SettingsError(f"tuner.min_completed_trials must be 0 (every trial but those that diverged) or more, "
                            f"got {settings.min_completed_trials}")
    if settings.algorithm != "hyperband" and settings.min_completed_trials > settings.max_trials:
        raise SettingsError(f"tuner.min_completed_trials {settings.min_completed_trials} is more than "
                            f"tuner.max_trials {settings.max_trials}: the search could never pass")
    for name in KNOBS:
        if not getattr(settings, name):
            raise SettingsError(f"tuner.{name} must list at least one choice")


TunerSettings = dataclasses.make_dataclass(
    "TunerSettings",
    [("enabled", bool, dataclasses.field(default=False)),
     ("algorithm", str, dataclasses.field(default="random")),  # one of TUNER_ALGORITHMS
     ("max_trials", int, dataclasses.field(default=10)),  # random and bayesian
     ("epochs_per_trial", int, dataclasses.field(default=5)),  # the most any trial trains (hyperband's max_epochs)
     # The search fails unless this many trials completed; 0: every trial but those that diverged (a loss
     # that is not finite), and at least one. A trial that fails otherwise (an error) then ends it at once.
     ("min_completed_trials", int, dataclasses.field(default=0)),
     *[(name, Tuple[type(knob.choices[0]), ...], dataclasses.field(default=knob.choices))
       for name, knob in KNOBS.items()]],
    frozen=True, namespace={"__post_init__": _check_tuner, "__module__": __name__,
                            "__doc__": "The Tuner's search: off unless enabled; each knob of KNOBS lists its choices."})


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """What the Evaluator's blessing and the ServingCheck require of a candidate model."""
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
class ValidationSettings:
    """What the ValidationGate does with examples that do not fit the schema."""
    stop_on_anomalies: bool = True  # false: record the anomalies and go on to Transform


DRIFT_ACTIONS = ("warn", "stop", "off")


@dataclasses.dataclass(frozen=True)
class DriftSettings:
    # Against the last accepted span's statistics: warn (record it), stop (before training) or off.
    action: str = "warn"
    categorical_threshold: float = 0.1  # L-infinity distance, for label, source and format
    numeric_threshold: float = 0.1  # Jensen-Shannon divergence, for height, width, channels, bit depth

    def __post_init__(self):
        _check_choice("drift.action", self.action, DRIFT_ACTIONS)


def _check_choice(name: str, value: str, allowed: Tuple[str, ...]) -> None:
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def to_json(settings) -> str:
    """A settings section as one parameter of a custom component (keys sorted: the same settings, the same cache key)."""
    return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def from_json(cls, text: str, where: str):
    """`cls` back from `to_json`'s text, checked by `read`."""
    return read(cls, json.loads(text), where)


def read(cls, values: Any, where: str):
    """`cls` rebuilt from the plain dict `dataclasses.asdict` made of it (lists become tuples).

    A key `cls` does not know, or one it needs and does not find, is an error naming it:
    settings are never dropped or made up on the way from the pipeline to a component."""
    if not isinstance(values, Mapping):
        raise SettingsError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown, missing = sorted(set(values) - set(fields)), sorted(set(fields) - set(values))
    if unknown:
        raise SettingsError(f"{where}: unknown setting {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    if missing:
        raise SettingsError(f"{where}: missing setting {', '.join(missing)}")
    kwargs = {}
    for name, field in fields.items():
        value = values[name]
        if dataclasses.is_dataclass(field.type):
            value = read(field.type, value, f"{where}.{name}" if where else name)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
