"""The Trainer's training path: the input pipeline over Transform's stored pixels, augmentation
as a model layer, mixed precision, XLA and MirroredStrategy, each run for real on the CPU."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from cxr.components import model as model_lib
from cxr.components.augmentation import Augmentation, rotated_and_zoomed
from cxr.components.export import export_serving_model
from cxr.components.settings import (
    TRAINER_KEY, AugmentationSettings, TrainerSettings, TrainingSettings, replace_training)
from cxr.components.trainer import input_pipeline, read_split
from cxr.components.transform import decode_pixels
from cxr.contract import CLASS_ID, IMAGE, LABELS
from trained_model import IMAGE_SIZE, LIMITS, SMALL_MODEL, demo_png, write_transform_graph

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = TrainerSettings(
    model=dataclasses.replace(SMALL_MODEL, filters=(8, 16), dense_units=(16,)),
    training=TrainingSettings(learning_rate=1e-3, batch_size=4, epochs=2, early_stopping_patience=5, seed=1),
    input_limits=LIMITS)
PER_CLASS = 5


@pytest.fixture(scope="module")
def transform_output(tmp_path_factory):
    work = tmp_path_factory.mktemp("transform")
    return write_transform_graph(str(work / "graph"), str(work / "tmp"))


@pytest.fixture(scope="module")
def raw_images():
    images = [demo_png(100 * class_id + i, label) for class_id, label in enumerate(LABELS) for i in range(PER_CLASS)]
    return images, [label for label in LABELS for _ in range(PER_CLASS)]


def transformed(transform_output, images, labels):
    """Transform's graph applied to raw images: {image: [N] stored pixels, class_id: [N]}."""
    raw = {IMAGE: tf.constant([[image] for image in images]), "label": tf.constant([[label] for label in labels])}
    return transform_output.transform_raw_features(raw, drop_unused_features=True)


@pytest.fixture(scope="module")
def split(transform_output, raw_images, tmp_path_factory):
    """A split of Transform's examples as the component materializes them (GZIP tf.Examples)."""
    features = transformed(transform_output, *raw_images)
    path = str(tmp_path_factory.mktemp("examples") / "transformed_examples-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image, class_id in zip(features[IMAGE].numpy(), features[CLASS_ID].numpy()):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                CLASS_ID: tf.train.Feature(int64_list=tf.train.Int64List(value=[class_id]))})).SerializeToString())
    return path, features


def _examples(dataset):
    """{stored pixels: class id} of every example, and the order they came in."""
    order = []
    for batch, labels in dataset:
        order += [(image.tobytes(), int(label)) for image, label in zip(batch[IMAGE].numpy(), labels.numpy())]
    return order


def _with_training(**changes) -> TrainerSettings:
    return replace_training(SETTINGS, **changes)


def test_the_input_is_the_stored_pixels_in_global_batches(split, transform_output):
    path, features = split
    spec = transform_output.transformed_feature_spec()
    dataset = input_pipeline(read_split([path]), spec, SETTINGS, replicas=2)
    batch, labels = next(iter(dataset))
    assert batch[IMAGE].dtype == tf.uint8 and batch[IMAGE].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 1)
    expected = list(zip([pixels.tobytes() for pixels in decode_pixels(features[IMAGE], IMAGE_SIZE).numpy()],
                        features[CLASS_ID].numpy().tolist()))
    assert _examples(dataset) == expected  # evaluation: every example once, in order


def test_training_reshuffles_every_epoch_and_sees_every_example_once(split, transform_output):
    path, _ = split
    dataset = input_pipeline(read_split([path]), transform_output.transformed_feature_spec(), SETTINGS, training=True)
    first, second = _examples(dataset), _examples(dataset)
    assert sorted(first) == sorted(second) and len(first) == 4 * PER_CLASS
    assert first != second


def test_a_split_that_fits_is_read_from_disk_once(split, transform_output, tmp_path):
    path, _ = split
    copy = str(tmp_path / os.path.basename(path))
    spec = transform_output.transformed_feature_spec()
    for max_cache_mib, read_again in ((1, False), (0, True)):
        tf.io.gfile.copy(path, copy, overwrite=True)
        dataset = input_pipeline(read_split([copy]), spec, _with_training(max_cache_mib=max_cache_mib), training=True)
        first = _examples(dataset)
        os.remove(copy)
        if read_again:
            with pytest.raises(tf.errors.NotFoundError):
                _examples(dataset)
        else:
            assert sorted(_examples(dataset)) == sorted(first)


def test_no_transformed_examples_is_an_error_naming_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="Split-train"):
        read_split([str(tmp_path / "Split-train" / "*")])
    (tmp_path / "Split-eval").mkdir()
    empty = str(tmp_path / "Split-eval" / "transformed_examples-00000-of-00001.gz")
    tf.io.TFRecordWriter(empty, options="GZIP").close()
    with pytest.raises(ValueError, match="no examples in .*Split-eval"):
        read_split([empty])


def test_augmentation_acts_in_training_only():
    images = tf.random.uniform([6, 32, 32, 1], seed=1)
    layer = Augmentation(horizontal_flip=True, rotation=0.05, zoom=0.1, brightness=0.1, contrast=0.1)
    assert layer(images, training=False) is images
    augmented = layer(images, training=True).numpy()
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    assert not np.allclose(augmented, images.numpy(), atol=1e-3)
    model = model_lib.build_model(SETTINGS.model, _with_training(augmentation=AugmentationSettings(rotation=0.1)).training)
    pixels = tf.random.uniform([2, IMAGE_SIZE, IMAGE_SIZE, 1], maxval=256, dtype=tf.int32, seed=3)
    pixels = tf.cast(pixels, tf.uint8)
    np.testing.assert_array_equal(model(pixels, training=False).numpy(), model(pixels, training=False).numpy())


def test_rotation_and_zoom_move_pixels_about_the_centre():
    images = tf.random.uniform([2, 9, 9, 1], seed=2)
    same = rotated_and_zoomed(images, angles=tf.zeros([2]), scales=tf.ones([2]))
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-6)
    quarter = rotated_and_zoomed(images, angles=tf.constant([math.pi / 2, 0.0]), scales=tf.ones([2])).numpy()
    np.testing.assert_allclose(quarter[0], np.rot90(images.numpy()[0], k=-1), atol=1e-5)
    np.testing.assert_allclose(quarter[1], images.numpy()[1], atol=1e-6)  # each image its own angle
    doubled = rotated_and_zoomed(images, angles=tf.zeros([2]), scales=tf.fill([2], 2.0)).numpy()
    np.testing.assert_allclose(doubled[:, 4, 4], images.numpy()[:, 4, 4], atol=1e-6)  # the centre stays
    np.testing.assert_allclose(doubled[:, 4, 6], images.numpy()[:, 4, 5], atol=1e-6)  # two out is one out


def _pixels_and_labels(transform_output, raw_images):
    features = transformed(transform_output, *raw_images)
    return decode_pixels(features[IMAGE], IMAGE_SIZE).numpy(), features[CLASS_ID].numpy()


def test_xla_compiles_the_training_step_augmentation_included(transform_output, raw_images):
    pixels, labels = _pixels_and_labels(transform_output, raw_images)
    training = _with_training(jit_compile=True, augmentation=AugmentationSettings(rotation=0.05, zoom=0.1)).training
    model = model_lib.build_model(SETTINGS.model, training)
    history = model.fit(pixels, labels, batch_size=4, epochs=1, verbose=0)
    assert all(math.isfinite(loss) for loss in history.history["loss"])


def test_the_xla_setting_reaches_the_compiler(transform_output, raw_images, monkeypatch):
    # Keras's RandomRotation uses an op that XLA cannot compile: with jit_compile the step fails.
    monkeypatch.setattr(model_lib, "Augmentation",
                        lambda name, dtype, **_: keras.layers.RandomRotation(0.1, name=name, dtype=dtype))
    pixels, labels = _pixels_and_labels(transform_output, raw_images)
    for jit_compile in (False, True):
        model = model_lib.build_model(SETTINGS.model, _with_training(jit_compile=jit_compile).training)
        if not jit_compile:
            model.fit(pixels, labels, batch_size=4, epochs=1, verbose=0)
            continue
        with pytest.raises(tf.errors.InvalidArgumentError, match="ImageProjectiveTransformV3"):
            model.fit(pixels, labels, batch_size=4, epochs=1, verbose=0)


def _dtypes_in_graph(export_dir):
    """Every dtype an op of the SavedModel's graph, its functions included, is typed with."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    return {tf.as_dtype(value.type).name for node in nodes for value in node.attr.values() if value.type}


@pytest.mark.parametrize("precision, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_computes_in_its_type_and_the_served_model_in_float32(
        precision, compute, transform_output, raw_images, tmp_path):
    pixels, labels = _pixels_and_labels(transform_output, raw_images)
    training = _with_training(precision=precision).training
    model = model_lib.build_model(SETTINGS.model, training)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(layer.compute_dtype == compute and layer.kernel.dtype == tf.float32
                                for layer in convolutions)
    assert model.get_layer("augmentation").compute_dtype == compute
    assert model.get_layer("probabilities").compute_dtype == "float32" and model.output.dtype == tf.float32
    # float16 needs its loss scaled against underflow; bfloat16 has float32's range and is not scaled.
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer) == (compute == "float16")
    history = model.fit(pixels, labels, batch_size=4, epochs=1, verbose=0)
    assert all(math.isfinite(loss) for loss in history.history["loss"])
    # Exported as the Trainer does: the same weights in float32 layers, which a served graph then computes in.
    served = model_lib.for_serving(model, SETTINGS.model, training)
    assert all(layer.compute_dtype == "float32" for layer in served.layers if layer.weights)
    for trained, copied in zip(model.weights, served.weights):
        np.testing.assert_array_equal(trained.numpy(), copied.numpy(), err_msg=trained.name)
    export_serving_model(served, transform_output, str(tmp_path / "1"), LIMITS)
    assert compute not in _dtypes_in_graph(str(tmp_path / "1"))
    loaded = tf.saved_model.load(str(tmp_path / "1"))
    floats = {(name, key): spec.dtype for name, signature in loaded.signatures.items()
              for key, spec in signature.structured_outputs.items() if spec.dtype.is_floating}
    assert floats and set(floats.values()) == {tf.float32}, floats
    explained = loaded.signatures["explain"](images=tf.constant(raw_images[0][:2]))
    assert np.isfinite(explained["heatmap"].numpy()).all()
    # The float32 answers are the mixed model's, within the trained type's rounding.
    answered = loaded.signatures["serving_default"](images=tf.constant(raw_images[0][:4]))["probabilities"]
    np.testing.assert_allclose(answered.numpy(), model.predict(pixels[:4], verbose=0), atol=0.05)


def test_a_model_exported_as_trained_in_bfloat16_would_compute_in_bfloat16(transform_output, raw_images, tmp_path):
    """What `for_serving` prevents, so that the check above can fail: the mixed model's own graph."""
    model = model_lib.build_model(SETTINGS.model, _with_training(precision="mixed_bfloat16").training)
    export_serving_model(model, transform_output, str(tmp_path / "1"), LIMITS)
    assert "bfloat16" in _dtypes_in_graph(str(tmp_path / "1"))


@pytest.mark.slow
def test_two_replicas_train_and_export_what_one_device_with_their_weights_predicts(
        split, transform_output, raw_images, tmp_path):
    path, _ = split
    settings = _with_training(epochs=2)
    fn_args = dict(train_files=[path], eval_files=[path],
                   transform_graph_path=os.path.dirname(transform_output.transform_savedmodel_dir),
                   serving_model_dir=str(tmp_path / "serving"),
                   model_run_dir=str(tmp_path / "run"), custom_config={TRAINER_KEY: dataclasses.asdict(settings)})
    run = subprocess.run([sys.executable, os.path.join(HERE, "mirrored_run.py"), json.dumps(fn_args)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[0]) == {"replicas": 2}
    # Two replicas of batch_size: a step takes 8 of the 20 images (3 steps an epoch), at twice the rate.
    steps = re.findall(r"^(\d+)/(\d+) - ", run.stdout, flags=re.MULTILINE)
    assert steps == [("3", "3")] * settings.training.epochs, run.stdout[-2000:]
    saved = tf.train.load_checkpoint(os.path.join(fn_args["serving_model_dir"], "variables", "variables"))
    rate = saved.get_tensor("optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE")
    assert rate == pytest.approx(2 * settings.training.learning_rate)
    trained = keras.models.load_model(fn_args["serving_model_dir"])
    one_device = model_lib.build_model(settings.model, settings.training)
    one_device.set_weights(trained.get_weights())
    pixels, _ = _pixels_and_labels(transform_output, raw_images)
    served = tf.saved_model.load(fn_args["serving_model_dir"]).signatures["serving_default"](
        images=tf.constant(raw_images[0]))
    np.testing.assert_allclose(served["probabilities"].numpy(), one_device(pixels, training=False).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("gpus, flags, expected", [
    ([(9, 0), (8, 0)], set(), "mixed_bfloat16"),  # Hopper, Ampere
    ([(8, 0), (7, 5)], {"avx512_bf16"}, "float32"),  # a T4 among them: not every GPU has it; the CPU does not count
    ([], {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),  # this machine's kind of EPYC
    ([], {"amx_bf16", "amx_tile"}, "mixed_bfloat16"),  # Sapphire Rapids
    ([], {"avx2", "avx512f"}, "float32"),
    ([None], set(), "float32"),  # a GPU that does not say
])
def test_auto_precision_takes_bfloat16_only_where_every_device_computes_it_natively(gpus, flags, expected):
    assert model_lib.choose_precision(gpus, flags) == expected


def test_auto_on_this_machine_builds_the_model_it_resolves_to():
    resolved = model_lib.resolved_precision("auto")
    model = model_lib.build_model(SETTINGS.model, _with_training(precision="auto").training)
    assert model.get_layer("block1_conv1").dtype_policy.name == resolved
