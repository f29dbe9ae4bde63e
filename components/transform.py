"""Transform's `preprocessing_fn`: raw encoded X-rays to model inputs.

The same graph is exported inside the served model, so serving decodes, resizes
and scales exactly as training did (the study's 74 % vs 97.8 % gap came from
preprocessing test images differently from training ones).

Transform's output stores each image as its size x size 8-bit pixels in one bytes value
(`encode_pixels`): a quarter of float32's size, parsed by a copy, small enough to keep a
training split in memory. `decode_pixels` reads them back; the model scales them to [0, 1]
as its first layer, in training and in every served signature alike.
"""
import tensorflow as tf

from cxr.contract import CLASS_ID, IMAGE, LABEL, LABELS


def preprocessing_fn(inputs, custom_config):
    """image: any PNG/JPEG -> its min-max scaled gray pixels, size x size bytes; label -> class id 0..3 (-1 unknown)."""
    size = int(custom_config["image_size"])
    outputs = {IMAGE: encode_pixels(decode_images(_flat(inputs[IMAGE]), size))}
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


def encode_pixels(pixels: tf.Tensor) -> tf.Tensor:
    """[N, size, size, 1] in [0, 1] -> [N] strings of size x size bytes, each pixel rounded to 0..255."""
    levels = tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 1.0) * 255.0), tf.uint8)
    count = tf.size(levels[0])
    # A serialized uint8 TensorProto ends with its raw bytes (tensor_content, its last field): 0.2 ms
    # per 224 px image here, against 2.8 ms for joining one string per pixel; this runs in every request.
    return tf.map_fn(lambda one: tf.strings.substr(tf.io.serialize_tensor(one), -count, count), levels,
                     fn_output_signature=tf.TensorSpec([], tf.string))


def decode_pixels(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """[N] strings from encode_pixels -> [N, size, size, 1] uint8 (fails unless each has size x size bytes)."""
    return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [-1, size, size, 1])


def class_ids(labels: tf.Tensor) -> tf.Tensor:
    matches = tf.equal(tf.expand_dims(labels, -1), tf.constant(LABELS))
    found = tf.reduce_any(matches, axis=-1)
    return tf.where(found, tf.argmax(tf.cast(matches, tf.int64), axis=-1), tf.constant(-1, tf.int64))


def _flat(tensor) -> tf.Tensor:
    """Dense [batch, 1] or sparse one-value features -> [batch]."""
    if isinstance(tensor, tf.sparse.SparseTensor):
        tensor = tf.sparse.to_dense(tensor, default_value="")
    return tf.reshape(tensor, [-1])
