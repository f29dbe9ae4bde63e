"""A real exported model for the export and serving tests.

Transform's graph (tft_beam over the real preprocessing_fn), a small CNN trained
on phantoms, exported by the code the Trainer runs
(components.export.export_serving_model): the signatures under test are the
pipeline's; only the size is small (64 px, three narrow blocks).
"""
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from cxr.components import model as model_lib
from cxr.components.export import export_serving_model
from cxr.components.settings import AugmentationSettings, InputLimits, ModelSettings, TrainingSettings
from cxr.components.transform import decode_images, decode_pixels, encode_pixels, preprocessing_fn
from cxr.contract import LABELS
from helpers import encode, phantom_picture

IMAGE_SIZE = 64
# Small limits, so that the tests can cross each with small files: 1,000 x 1,000 8-bit gray is at
# both per-image limits; five of them are over the request's.
LIMITS = InputLimits(max_image_pixels=1_000_000, max_image_bytes=1_000_000, max_request_bytes=4_000_000)
MAX_IMAGE_PIXELS = LIMITS.max_image_pixels
MODEL_NAME = "cxr"
FINDINGS = {"BACTERIAL_PNEUMONIA": "bacterial_pneumonia", "COVID": "covid", "NORMAL": "normal",
            "PNEUMOTHORAX": "pneumothorax"}
PER_CLASS = 60


def demo_png(seed: int, label: str = "NORMAL", affected_lung=None) -> bytes:
    return encode(phantom_picture(seed, size=96, finding=FINDINGS[label], affected_lung=affected_lung), "PNG")


def _training_set():
    images, labels = [], []
    for class_id, label in enumerate(LABELS):
        images += [demo_png(1000 * class_id + i, label) for i in range(PER_CLASS)]
        labels += [class_id] * PER_CLASS
    return images, np.array(labels)


def write_transform_graph(out_dir: str, temp_dir: str, image_size: int = IMAGE_SIZE) -> tft.TFTransformOutput:
    """What the Transform component writes (transform graph and raw metadata), for images of image_size."""
    spec = {"image": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=temp_dir):
        data = pipeline | beam.Create([{"image": [demo_png(1)], "label": [b"NORMAL"]}])
        transform_fn = (data, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing_fn(inputs, {"image_size": image_size}))
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    metadata_io.write_metadata(metadata, os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(out_dir)


SMALL_MODEL = ModelSettings(image_size=IMAGE_SIZE, filters=(16, 32, 32), dense_units=(64,), dropout=0.1)
SMALL_TRAINING = TrainingSettings(learning_rate=2e-3, augmentation=AugmentationSettings(
    horizontal_flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0))


def transformed_pixels(images, size: int = IMAGE_SIZE) -> np.ndarray:
    """Encoded images as Transform stores them and the model takes them: [N, size, size, 1] uint8."""
    return decode_pixels(encode_pixels(decode_images(tf.constant(images), size)), size).numpy()


def train_small_model():
    tf.keras.utils.set_random_seed(0)
    images, labels = _training_set()
    pixels = transformed_pixels(images)
    # Mirrored copies, as the pipeline's augmentation does: findings occur on either side.
    pixels, labels = np.concatenate([pixels, pixels[:, :, ::-1]]), np.concatenate([labels, labels])
    model = model_lib.build_model(SMALL_MODEL, SMALL_TRAINING)
    model.fit(pixels, labels, epochs=12, batch_size=16, shuffle=True, verbose=0)
    return model


def export_small_model(work_dir: str) -> str:
    """TF Serving's model base path (<work_dir>/models/cxr) holding version 1 of the trained model."""
    transform_output = write_transform_graph(os.path.join(work_dir, "transform"), os.path.join(work_dir, "tft_tmp"))
    base_path = os.path.join(work_dir, "models", MODEL_NAME)
    export_serving_model(train_small_model(), transform_output, os.path.join(base_path, "1"), LIMITS)
    return base_path
