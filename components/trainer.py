"""Trainer's `run_fn`: trains the study's CNN on Transform's output and exports the serving model
(its signatures are described in components/export.py)."""
import dataclasses
from typing import Dict, List

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from cxr.components import model as model_lib
from cxr.components.export import export_serving_model
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
    max_image_pixels: int

    @classmethod
    def from_custom_config(cls, custom_config: dict) -> "TrainerSettings":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in custom_config.items() if name in names})


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    settings = TrainerSettings.from_custom_config(fn_args.custom_config)
    keras.utils.set_random_seed(settings.seed)
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = _dataset(fn_args.train_files, fn_args.data_accessor, transform_output, settings, training=True)
    evaluation = _dataset(fn_args.eval_files, fn_args.data_accessor, transform_output, settings, training=False)
    with _strategy().scope():
        model = model_lib.build_model(settings.image_size, settings.filters, settings.dense_units,
                                      settings.dropout, settings.learning_rate, settings.mixed_precision)
    model.fit(train, validation_data=evaluation, epochs=settings.epochs, verbose=2, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
    ])
    export_serving_model(model, transform_output, fn_args.serving_model_dir, settings.max_image_pixels)


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
