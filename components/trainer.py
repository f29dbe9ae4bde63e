"""Trainer's `run_fn`: trains the study's CNN on Transform's output and exports the serving model
(its signatures are described in components/export.py)."""
import dataclasses
import json
import os
from typing import Dict, List

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from cxr.components import model as model_lib
from cxr.components.export import export_serving_model
from cxr.components.input_limits import InputLimits
from cxr.components.transform import CLASS_ID, IMAGE


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """What run_fn needs, passed through the Trainer's custom_config as a plain dict."""
    image_size: int
    filters: List[int]
    dense_units: List[int]
    dropout: float
    learning_rate: float
    batch_size: int
    epochs: int
    early_stopping_patience: int
    mixed_precision: bool
    seed: int
    augmentation: Dict[str, float]
    input_limits: Dict[str, int]  # InputLimits' fields

    @classmethod
    def from_custom_config(cls, custom_config: dict) -> "TrainerSettings":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in custom_config.items() if name in names})


def with_hyperparameters(settings: TrainerSettings, values: Dict[str, object]) -> TrainerSettings:
    """The settings with the Tuner's choices applied (see components/tuner.py for the names)."""
    changes = {}
    if "learning_rate" in values:
        changes["learning_rate"] = float(values["learning_rate"])
    if "width_multiplier" in values:
        changes["filters"] = [max(1, round(width * values["width_multiplier"])) for width in settings.filters]
    if "dense_multiplier" in values:
        changes["dense_units"] = [max(1, round(units * values["dense_multiplier"])) for units in settings.dense_units]
    if "dropout" in values:
        changes["dropout"] = float(values["dropout"])
    if "batch_size" in values:
        changes["batch_size"] = int(values["batch_size"])
    if "augmentation_strength" in values:
        changes["augmentation"] = scaled_augmentation(settings.augmentation, float(values["augmentation_strength"]))
    return dataclasses.replace(settings, **changes)


def scaled_augmentation(augmentation: Dict[str, float], strength: float) -> Dict[str, float]:
    """Every range times `strength`; strength 0 also turns flipping off."""
    return {name: (bool(value) and strength > 0) if name == "horizontal_flip" else value * strength
            for name, value in augmentation.items()}


def build(settings: TrainerSettings) -> keras.Model:
    return model_lib.build_model(settings.image_size, settings.filters, settings.dense_units,
                                 settings.dropout, settings.learning_rate, settings.mixed_precision)


def datasets(fn_args, transform_output, settings: TrainerSettings):
    """(train, eval) batches for these settings (the batch size is one of the Tuner's knobs)."""
    return (_dataset(fn_args.train_files, fn_args.data_accessor, transform_output, settings, training=True),
            _dataset(fn_args.eval_files, fn_args.data_accessor, transform_output, settings, training=False))


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    settings = TrainerSettings.from_custom_config(fn_args.custom_config)
    if fn_args.hyperparameters:  # the Tuner ran: its best values win over the configured ones
        settings = with_hyperparameters(settings, fn_args.hyperparameters["values"])
    _write_settings(settings, fn_args.model_run_dir)
    keras.utils.set_random_seed(settings.seed)
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train, evaluation = datasets(fn_args, transform_output, settings)
    with _strategy().scope():
        model = build(settings)
    model.fit(train, validation_data=evaluation, epochs=settings.epochs, verbose=2, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
    ])
    export_serving_model(model, transform_output, fn_args.serving_model_dir, InputLimits(**settings.input_limits))


SETTINGS_FILE = "trainer_settings.json"


def _write_settings(settings: TrainerSettings, model_run_dir: str) -> None:
    """The settings training used, beside its TensorBoard logs, for the run report."""
    tf.io.gfile.makedirs(model_run_dir)
    with tf.io.gfile.GFile(os.path.join(model_run_dir, SETTINGS_FILE), "w") as f:
        json.dump(dataclasses.asdict(settings), f, indent=1, sort_keys=True)


def _strategy() -> tf.distribute.Strategy:
    if len(tf.config.list_logical_devices("GPU")) > 0:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _dataset(files, data_accessor, transform_output, settings: TrainerSettings, training: bool) -> tf.data.Dataset:
    batches = data_accessor.tf_dataset_factory(
        files, dataset_options(settings, training), transform_output.transformed_metadata.schema)
    return input_pipeline(batches, settings, training)


def dataset_options(settings: TrainerSettings, training: bool) -> tfxio.TensorFlowDatasetOptions:
    return tfxio.TensorFlowDatasetOptions(batch_size=settings.batch_size, label_key=CLASS_ID,
                                          num_epochs=1, shuffle=training)


def input_pipeline(dataset: tf.data.Dataset, settings: TrainerSettings, training: bool) -> tf.data.Dataset:
    """(features, label) batches from TFXIO -> augmented in training, prefetched."""
    if training:
        augment = augmentation_layers(settings.augmentation)
        dataset = dataset.map(lambda features, label: (
            {IMAGE: tf.clip_by_value(augment(features[IMAGE], training=True), 0.0, 1.0)}, label),
            num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def augmentation_layers(augmentation: Dict[str, float]) -> keras.Sequential:
    """Training-time augmentation only; the exported model never sees these layers."""
    layers = [keras.layers.RandomFlip("horizontal")] if augmentation.get("horizontal_flip") else []
    if augmentation.get("rotation"):
        layers.append(keras.layers.RandomRotation(augmentation["rotation"], fill_mode="constant"))
    if augmentation.get("zoom"):
        layers.append(keras.layers.RandomZoom(augmentation["zoom"], fill_mode="constant"))
    if augmentation.get("brightness"):
        layers.append(keras.layers.RandomBrightness(augmentation["brightness"], value_range=(0.0, 1.0)))
    if augmentation.get("contrast"):
        layers.append(keras.layers.RandomContrast(augmentation["contrast"]))
    return keras.Sequential(layers, name="augmentation")
