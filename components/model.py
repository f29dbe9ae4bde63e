"""The study's CNN, layer for layer; widths and input size come from the configuration.

Input -> BatchNormalization -> [Conv 3x3 relu, Conv 3x3 relu, MaxPool 2] per width
-> Flatten -> [Dense relu, Dropout] per dense width -> Dense(4, softmax).
Convolutions use 'valid' padding as in the study. The input has one channel:
Transform turns every X-ray into grayscale (the study fed gray X-rays as three
identical channels, which only adds weights to the first convolution).
"""
import tf_keras as keras

from cxr.contract import IMAGE, NUM_CLASSES, PROBABILITIES

LAST_CONV_NAME = "last_conv"


def build_model(image_size: int, filters, dense_units, dropout: float, learning_rate: float,
                mixed_precision: bool = False) -> keras.Model:
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    inputs = keras.Input(shape=(image_size, image_size, 1), name=IMAGE)
    x = keras.layers.BatchNormalization(name="input_norm")(inputs)
    for block, width in enumerate(filters, start=1):
        last_block = block == len(filters)
        x = keras.layers.Conv2D(width, 3, activation="relu", name=f"block{block}_conv1")(x)
        x = keras.layers.Conv2D(width, 3, activation="relu",
                                name=LAST_CONV_NAME if last_block else f"block{block}_conv2")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{index}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{index}")(x)
    # Softmax in float32 even under mixed precision, for stable probabilities.
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name=PROBABILITIES)(x)
    model = keras.Model(inputs, outputs, name="cxr_cnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
