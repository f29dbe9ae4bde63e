"""Transform's `preprocessing_fn`: raw encoded X-rays to model inputs.

The same graph is exported inside the served model, so serving decodes, resizes
and scales exactly as training did (the study's 74 % vs 97.8 % gap came from
preprocessing test images differently from training ones).
"""
import tensorflow as tf

from cxr.contract import CLASS_ID, IMAGE, LABEL, LABELS


def preprocessing_fn(inputs, custom_config):
    """image: any PNG/JPEG -> [size, size, 1] float32 in [0, 1]; label -> class id 0..3 (-1 unknown)."""
    size = int(custom_config["image_size"])
    outputs = {IMAGE: decode_images(_flat(inputs[IMAGE]), size)}
    if LABEL in inputs:
        outputs[CLASS_ID] = class_ids(_flat(inputs[LABEL]))
    return outputs


def decode_images(encoded: tf.Tensor, size: int) -> tf.Tensor:
    # One at a time: a request's full-size decodes never sit in memory together (the served graph is this one).
    return tf.map_fn(lambda one: decode_image(one, size), encoded, parallel_iterations=1,
                     fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))


def decode_image(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """PNG (8/16-bit, gray/RGB/RGBA/palette) or JPEG (gray/RGB/CMYK) -> min-max scaled gray."""
    # channels=0 keeps the file's channels: asking JPEG for one channel fails on CMYK.
    pixels = tf.io.decode_image(encoded, channels=0, dtype=tf.float32, expand_animations=False)
    gray = tf.cond(tf.shape(pixels)[-1] >= 3,
                   lambda: tf.image.rgb_to_grayscale(pixels[..., :3]),
                   lambda: pixels[..., :1])
    resized = tf.image.resize(gray, [size, size], method="bilinear", antialias=True)
    low, high = tf.reduce_min(resized), tf.reduce_max(resized)
    return tf.math.divide_no_nan(resized - low, high - low)


def class_ids(labels: tf.Tensor) -> tf.Tensor:
    matches = tf.equal(tf.expand_dims(labels, -1), tf.constant(LABELS))
    found = tf.reduce_any(matches, axis=-1)
    return tf.where(found, tf.argmax(tf.cast(matches, tf.int64), axis=-1), tf.constant(-1, tf.int64))


def _flat(tensor) -> tf.Tensor:
    """Dense [batch, 1] or sparse one-value features -> [batch]."""
    if isinstance(tensor, tf.sparse.SparseTensor):
        tensor = tf.sparse.to_dense(tensor, default_value="")
    return tf.reshape(tensor, [-1])
