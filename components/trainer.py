"""Trainer's `run_fn`: trains the study's CNN on Transform's output and exports the serving model
(its signatures are described in components/export.py)."""
import dataclasses
import json
import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from cxr.components import model as model_lib
from cxr.components.export import export_serving_model
from cxr.components.settings import TRAINER_KEY, AugmentationSettings, TrainerSettings, read
from cxr.contract import CLASS_ID, IMAGE


def settings_from(custom_config: dict) -> TrainerSettings:
    return read(TrainerSettings, custom_config[TRAINER_KEY], f"custom_config[{TRAINER_KEY!r}]")


def build(settings: TrainerSettings) -> keras.Model:
    model, training = settings.model, settings.training
    return model_lib.build_model(model.image_size, model.filters, model.dense_units, model.dropout,
                                 training.learning_rate, training.mixed_precision)


def datasets(fn_args, transform_output, settings: TrainerSettings):
    """(train, eval) batches for these settings (the batch size is one of the Tuner's knobs)."""
    return (_dataset(fn_args.train_files, fn_args.data_accessor, transform_output, settings, training=True),
            _dataset(fn_args.eval_files, fn_args.data_accessor, transform_output, settings, training=False))


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    settings = settings_from(fn_args.custom_config)
    if fn_args.hyperparameters:  # the Tuner ran: its best values win over the configured ones
        settings = settings.with_hyperparameters(fn_args.hyperparameters["values"])
    _write_settings(settings, fn_args.model_run_dir)
    training = settings.training
    keras.utils.set_random_seed(training.seed)
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train, evaluation = datasets(fn_args, transform_output, settings)
    with _strategy().scope():
        model = build(settings)
    model.fit(train, validation_data=evaluation, epochs=training.epochs, verbose=2, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=training.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
    ])
    export_serving_model(model, transform_output, fn_args.serving_model_dir, settings.input_limits)


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
    return tfxio.TensorFlowDatasetOptions(batch_size=settings.training.batch_size, label_key=CLASS_ID,
                                          num_epochs=1, shuffle=training)


def input_pipeline(dataset: tf.data.Dataset, settings: TrainerSettings, training: bool) -> tf.data.Dataset:
    """(features, label) batches from TFXIO -> augmented in training, prefetched."""
    if training:
        augment = augmentation_layers(settings.training.augmentation)
        dataset = dataset.map(lambda features, label: (
            {IMAGE: tf.clip_by_value(augment(features[IMAGE], training=True), 0.0, 1.0)}, label),
            num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def augmentation_layers(augmentation: AugmentationSettings) -> keras.Sequential:
    """Training-time augmentation only; the exported model never sees these layers."""
    layers = [keras.layers.RandomFlip("horizontal")] if augmentation.horizontal_flip else []
    if augmentation.rotation:
        layers.append(keras.layers.RandomRotation(augmentation.rotation, fill_mode="constant"))
    if augmentation.zoom:
        layers.append(keras.layers.RandomZoom(augmentation.zoom, fill_mode="constant"))
    if augmentation.brightness:
        layers.append(keras.layers.RandomBrightness(augmentation.brightness, value_range=(0.0, 1.0)))
    if augmentation.contrast:
        layers.append(keras.layers.RandomContrast(augmentation.contrast))
    return keras.Sequential(layers, name="augmentation")
