import dataclasses

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
