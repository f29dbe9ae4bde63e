"""Trainer's `run_fn`: trains the study's CNN on Transform's output and exports the serving model
(its signatures are described in components/export.py).

The model trains on every visible GPU through MirroredStrategy (or on several logical CPUs
when they are configured, as a test does); `training.batch_size` and `learning_rate` are per
replica, and the step takes replicas x batch_size images at replicas x learning_rate.
"""
import dataclasses
import json
import math
import os
from typing import Dict, List, NamedTuple, Tuple

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from cxr import contract
from cxr.components import model as model_lib
from cxr.components.export import export_serving_model
from cxr.components.settings import MIB, TRAINER_KEY, TrainerSettings, read
from cxr.components.transform import decode_pixels
from cxr.contract import CLASS_ID, IMAGE

# Without a cache the shuffle buffer holds this many examples: a few hundred MiB at 224 px.
SHUFFLE_BUFFER = 4096


def settings_from(custom_config: dict) -> TrainerSettings:
    return read(TrainerSettings, custom_config[TRAINER_KEY], f"custom_config[{TRAINER_KEY!r}]")


def distribution_strategy() -> tf.distribute.Strategy:
    """Every visible GPU; else the logical CPUs when more than one is configured; else the default (one device)."""
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if gpus:  # one GPU too: MirroredStrategy's datasets prefetch to the device
        return tf.distribute.MirroredStrategy(gpus)
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(cpus) > 1:
        return tf.distribute.MirroredStrategy(cpus)
    return tf.distribute.get_strategy()


def build(settings: TrainerSettings, strategy: tf.distribute.Strategy) -> keras.Model:
    with strategy.scope():
        return model_lib.build_model(settings.model, settings.training, strategy.num_replicas_in_sync)


class Split(NamedTuple):
    """Files of one split of Transform's examples, with their record count and size."""
    files: Tuple[str, ...]
    count: int
    size_bytes: int

    @property
    def compression(self) -> str:
        return "GZIP" if self.files[0].endswith(".gz") else ""

    def records(self) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(list(self.files), compression_type=self.compression,
                                       num_parallel_reads=tf.data.AUTOTUNE)


def read_split(file_patterns: List[str]) -> Split:
    """The split's files, counted in one pass without parsing (0.9 s for 50 MiB on one core here)."""
    files = tuple(sorted(path for pattern in file_patterns for path in tf.io.gfile.glob(pattern)))
    if not files:
        raise FileNotFoundError(f"no transformed examples match {file_patterns}")
    split = Split(files, 0, 0)
    count, size = split.records().reduce((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), lambda totals, record: (
        totals[0] + 1, totals[1] + tf.cast(tf.strings.length(record), tf.int64)))
    if int(count) == 0:
        raise ValueError(f"no examples in {list(files)}")
    return split._replace(count=int(count), size_bytes=int(size))


def read_splits(fn_args) -> Tuple[Split, Split]:
    """(train, eval); the Tuner reads them once for all its trials."""
    return read_split(fn_args.train_files), read_split(fn_args.eval_files)


class Inputs(NamedTuple):
    """What `fit` takes: the training batches repeated, one pass of them per epoch, and the eval batches."""
    train: tf.data.Dataset
    steps_per_epoch: int
    evaluation: tf.data.Dataset


def datasets(splits: Tuple[Split, Split], transform_output, settings: TrainerSettings, replicas: int) -> Inputs:
    """Global batches for these settings (the batch size is one of the Tuner's knobs).

    One iterator serves the whole fit: `fit` on a dataset that ends each epoch tears its iterator
    down and builds another between epochs, 3-7 s at 224 px on a CPU (bench/RESULTS.md)."""
    spec = transform_output.transformed_feature_spec()
    train, evaluation = splits
    batch = settings.training.batch_size * replicas
    return Inputs(input_pipeline(train, spec, settings, replicas, training=True).repeat(),
                  math.ceil(train.count / batch), input_pipeline(evaluation, spec, settings, replicas))


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    settings = settings_from(fn_args.custom_config)
    if fn_args.hyperparameters:  # the Tuner ran: its best values win over the configured ones
        settings = settings.with_hyperparameters(fn_args.hyperparameters["values"])
    _write_settings(settings, fn_args.model_run_dir)
    training = settings.training
    keras.utils.set_random_seed(training.seed)
    transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    strategy = distribution_strategy()
    inputs = datasets(read_splits(fn_args), transform_output, settings, strategy.num_replicas_in_sync)
    model = build(settings, strategy)
    model.fit(inputs.train, steps_per_epoch=inputs.steps_per_epoch, validation_data=inputs.evaluation,
              epochs=training.epochs, verbose=2, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=training.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir),
        *model_lib.learning_rate_callbacks(training, training.epochs, strategy.num_replicas_in_sync),
    ])
    export_serving_model(model_lib.for_serving(model, settings.model, training), transform_output,
                         fn_args.serving_model_dir, settings.input_limits)




def _write_settings(settings: TrainerSettings, model_run_dir: str) -> None:
    """The settings training used, beside its TensorBoard logs, for the run report; `training.precision` as
    this machine resolved it (auto becomes what was used)."""
    used = dataclasses.asdict(settings)
    used["training"]["precision"] = model_lib.resolved_precision(settings.training.precision)
    tf.io.gfile.makedirs(model_run_dir)
    with tf.io.gfile.GFile(os.path.join(model_run_dir, contract.TRAINER_SETTINGS_FILE), "w") as f:
        json.dump(used, f, indent=1, sort_keys=True)


def input_pipeline(split: Split, feature_spec: Dict, settings: TrainerSettings, replicas: int = 1,
                   training: bool = False) -> tf.data.Dataset:
    """Transform's examples -> ({image: [B, size, size, 1] uint8}, class id [B]), B = replicas x batch_size.

    Records are read, cached in memory when they fit, shuffled, batched and only then parsed,
    one op per batch; the model does the scaling and augmentation. (TFXIO's dataset shuffles
    and batches inside, which leaves no place for a cache between epochs.)
    """
    records = split.records()
    cached = split.size_bytes <= settings.training.max_cache_mib * MIB
    if cached:
        records = records.cache()
    if training:
        records = records.shuffle(split.count if cached else SHUFFLE_BUFFER, seed=settings.training.seed,
                                  reshuffle_each_iteration=True)
    wanted = {IMAGE: feature_spec[IMAGE], CLASS_ID: feature_spec[CLASS_ID]}
    size = settings.model.image_size

    def parse(serialized):
        features = tf.io.parse_example(serialized, wanted)
        return {IMAGE: decode_pixels(features[IMAGE], size)}, features[CLASS_ID]

    batches = records.batch(settings.training.batch_size * replicas).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)

