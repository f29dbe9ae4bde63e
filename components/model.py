"""The study's CNN, layer for layer; widths and input size come from the configuration.

Input (8-bit gray, as Transform stores it) -> scale to [0, 1] -> augmentation (training only)
-> BatchNormalization -> [Conv 3x3 relu, Conv 3x3 relu, MaxPool 2] per width
-> Flatten -> [Dense relu, Dropout] per dense width -> Dense(4, softmax).
Convolutions use 'valid' padding as in the study. The input has one channel:
Transform turns every X-ray into grayscale (the study fed gray X-rays as three
identical channels, which only adds weights to the first convolution).

Scaling and augmentation are layers, so they run on the accelerator with the rest: the CPU
only reads bytes. Under `training.precision` mixed_float16 (mixed_bfloat16) every layer computes in
float16 (bfloat16) with float32 weights, except the softmax, which stays float32 (so do the loss and
every exported output); under float16 the optimizer scales the loss so that gradients do not underflow.
The model exported for serving computes in float32 whatever the training precision (`for_serving`).
"""
import dataclasses
import math
from typing import List

import tf_keras as keras
from tensorflow.python.autograph.core import config as autograph_config

from cxr.components.augmentation import Augmentation
from cxr.components.settings import ModelSettings, TrainingSettings
from cxr.contract import IMAGE, NUM_CLASSES, PROBABILITIES

LAST_CONV_NAME = "last_conv"


def _leave_tf_keras_to_tracing() -> None:
    """TensorFlow 2.16's AutoGraph rewrites every tf_keras function it meets while tracing (it leaves out only
    `keras`): 20 s of source rewriting on two cores each time a model's train step is traced, in every
    training, Tuner trial and export. Later TensorFlow leaves tf_keras out itself (its
    autograph/core/config.py lists DoNotConvert("tf_keras")); tf_keras is written for graph tracing."""
    if not any(isinstance(rule, autograph_config.DoNotConvert) and rule.matches("tf_keras")
               for rule in autograph_config.CONVERSION_RULES):
        autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("tf_keras"),
                                             *autograph_config.CONVERSION_RULES)


_leave_tf_keras_to_tracing()


def resolved_precision(precision: str) -> str:
    """`training.precision` on this machine: auto becomes mixed_bfloat16 where the device computes bfloat16
    natively (every visible GPU of compute capability 8.0 or more; with no GPU, a CPU with AVX512_BF16 or
    AMX), float32 elsewhere."""
    if precision != "auto":
        return precision
    import tensorflow as tf
    gpus = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
            for gpu in tf.config.list_physical_devices("GPU")]
    return choose_precision(gpus, _cpu_flags())


def choose_precision(gpu_capabilities, cpu_flags) -> str:
    """auto's rule, on the device's facts: GPUs' (major, minor) compute capabilities, the CPU's flags."""
    if gpu_capabilities:
        native = all(capability is not None and tuple(capability) >= (8, 0) for capability in gpu_capabilities)
        return "mixed_bfloat16" if native else "float32"
    return "mixed_bfloat16" if {"avx512_bf16", "amx_bf16"} & set(cpu_flags) else "float32"


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def build_model(model: ModelSettings, training: TrainingSettings, replicas: int = 1) -> keras.Model:
    """The compiled model; `replicas` (the strategy's replica count) scales the learning rate."""
    policy = keras.mixed_precision.Policy(resolved_precision(training.precision))  # Keras's names
    size = model.image_size
    inputs = keras.Input(shape=(size, size, 1), dtype="uint8", name=IMAGE)
    x = keras.layers.Rescaling(1 / 255, name="scale", dtype=policy)(inputs)
    x = Augmentation(**dataclasses.asdict(training.augmentation), name="augmentation", dtype=policy)(x)
    x = keras.layers.BatchNormalization(name="input_norm", dtype=policy)(x)
    for block, width in enumerate(model.filters, start=1):
        last_block = block == len(model.filters)
        x = keras.layers.Conv2D(width, 3, activation="relu", name=f"block{block}_conv1", dtype=policy,
                                kernel_initializer=model.kernel_initializer)(x)
        x = keras.layers.Conv2D(width, 3, activation="relu", dtype=policy, kernel_initializer=model.kernel_initializer,
                                name=LAST_CONV_NAME if last_block else f"block{block}_conv2")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool", dtype=policy)(x)
    x = keras.layers.Flatten(name="flatten", dtype=policy)(x)
    for index, units in enumerate(model.dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{index}", dtype=policy,
                               kernel_initializer=model.kernel_initializer)(x)
        x = keras.layers.Dropout(model.dropout, name=f"dropout{index}", dtype=policy)(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name=PROBABILITIES)(x)
    network = keras.Model(inputs, outputs, name="cxr_cnn")
    network.compile(optimizer=optimizer(training, replicas), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"], jit_compile=training.jit_compile)
    return network


def for_serving(network: keras.Model, model: ModelSettings, training: TrainingSettings) -> keras.Model:
    """The trained network as it is exported: itself where it computes in float32, otherwise the same layers
    in float32 holding its weights (mixed precision keeps them in float32 already, so nothing is rounded).
    The machine that serves is not the one that trained: a CPU without AVX512_BF16 or AMX, where TF Serving
    often runs, computes bfloat16 convolutions in TensorFlow's own kernels, and float16 on this project's
    CPU is 72x slower than float32 (bench/RESULTS.md, "Training precision")."""
    if resolved_precision(training.precision) == "float32":
        return network
    served = build_model(model, dataclasses.replace(training, precision="float32"))
    served.set_weights(network.get_weights())
    return served


def learning_rate_callbacks(training: TrainingSettings, epochs: int, replicas: int = 1) -> List[keras.callbacks.Callback]:
    """What `fit` needs for `training.learning_rate_schedule` over these epochs (none for constant)."""
    if training.learning_rate_schedule == "constant":
        return []
    start = training.learning_rate * replicas
    return [keras.callbacks.LearningRateScheduler(lambda epoch, _: start * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))]


def optimizer(training: TrainingSettings, replicas: int) -> keras.optimizers.Optimizer:
    """Adam at `learning_rate` x replicas: each replica takes `batch_size` images a step, so the
    global batch grows with the replicas and the rate follows it (the linear scaling rule)."""
    adam = keras.optimizers.Adam(training.learning_rate * replicas)
    # Keras adds loss scaling by itself only under a global mixed policy; this model sets it per layer.
    # bfloat16 has float32's range: its gradients need no scaling.
    scaled = resolved_precision(training.precision) == "mixed_float16"
    return keras.mixed_precision.LossScaleOptimizer(adam) if scaled else adam
