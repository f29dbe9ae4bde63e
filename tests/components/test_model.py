import dataclasses

import pytest

from cxr.components.model import build_model
from cxr.pipeline.config import PRESETS

STUDY = PRESETS["study"]


def _study_model(image_size):
    return build_model(dataclasses.replace(STUDY.model, image_size=image_size), STUDY.training)


def test_the_layers_are_the_studys_in_order():
    model = _study_model(224)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == (["InputLayer", "Rescaling", "Augmentation", "BatchNormalization"] + ["Conv2D", "Conv2D", "MaxPooling2D"] * 4
                     + ["Flatten", "Dense", "Dropout", "Dense", "Dropout", "Dense"])
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == "valid" for c in convs)
    assert [layer.units for layer in model.layers if type(layer).__name__ == "Dense"] == [512, 1024, 4]
    assert model.get_layer("probabilities").activation.__name__ == "softmax"


def test_parameter_count_follows_from_the_valid_convolutions():
    # 224 px: 224-4=220 -> 110 -> 106 -> 53 -> 49 -> 24 -> 20 -> 10, so Flatten sees 10x10x512.
    model = _study_model(224)
    assert model.get_layer("flatten").output_shape == (None, 10 * 10 * 512)
    assert model.count_params() == 31_428_552
    # The reference's "12 x 12 x 512, about 42 M" is what this layer list gives at 256 px.
    assert _study_model(256).get_layer("flatten").output_shape == (None, 12 * 12 * 512)
    assert _study_model(256).count_params() == 42_962_888


def test_autograph_leaves_tf_keras_to_tracing_and_still_converts_our_layer():
    # TensorFlow 2.16 rewrites tf_keras's own functions on every trace (20 s per train step traced on two cores).
    import tf_keras as keras
    from tensorflow.python.autograph.impl import conversion
    from cxr.components.augmentation import Augmentation
    assert conversion.is_allowlisted(keras.layers.Dense.call)
    assert conversion.is_allowlisted(keras.Model.train_step)
    assert not conversion.is_allowlisted(Augmentation.call)


def test_he_normal_keeps_the_relu_layers_scale_and_the_study_keeps_keras_s_default():
    import numpy as np
    demo = PRESETS["demo"]
    assert STUDY.model.kernel_initializer == "glorot_uniform"
    for initializer, expected_std in (("he_normal", lambda fan_in, fan_out: np.sqrt(2 / fan_in)),
                                      ("glorot_uniform", lambda fan_in, fan_out: np.sqrt(2 / (fan_in + fan_out)))):
        model = build_model(dataclasses.replace(demo.model, kernel_initializer=initializer), demo.training)
        kernel = model.get_layer("block3_conv1").get_weights()[0]  # 3 x 3 x 64 -> 128
        fan_in, fan_out = 3 * 3 * kernel.shape[2], 3 * 3 * kernel.shape[3]
        assert np.std(kernel) == pytest.approx(expected_std(fan_in, fan_out), rel=0.1), initializer
        softmax = model.get_layer("probabilities").get_weights()[0]  # no ReLU follows: Keras's default
        assert np.std(softmax) == pytest.approx(np.sqrt(2 / sum(softmax.shape)), rel=0.25)


def test_a_cosine_schedule_sets_the_rate_at_each_epoch_from_the_start_towards_zero():
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from cxr.components.model import learning_rate_callbacks
    training = dataclasses.replace(PRESETS["demo"].training, learning_rate=1e-3, learning_rate_schedule="cosine")
    assert learning_rate_callbacks(dataclasses.replace(training, learning_rate_schedule="constant"), 4) == []
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rates = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: rates.append(
        float(keras.backend.get_value(model.optimizer.learning_rate))))
    data = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2)), np.zeros((4, 1)))).batch(2)
    model.fit(data, epochs=4, verbose=0, callbacks=[*learning_rate_callbacks(training, 4, replicas=2), record])
    assert rates == pytest.approx([2e-3 * 0.5 * (1 + np.cos(np.pi * epoch / 4)) for epoch in range(4)])
    assert rates[0] == pytest.approx(2e-3) and rates[-1] < 0.2 * rates[0]
