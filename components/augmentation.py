"""Training-time augmentation as a layer of the model: it runs where the model runs (on the
accelerator), and only in training; at inference it returns its input, so served answers
never depend on it.

Written with ops that XLA compiles (gather, elementwise), so `training.jit_compile` can
compile the whole training step: Keras's RandomRotation and RandomZoom use
ImageProjectiveTransformV3, which XLA refuses.
"""
import dataclasses
import math

import tensorflow as tf
import tf_keras as keras

from cxr.components.settings import AugmentationSettings


@keras.utils.register_keras_serializable(package="cxr")
class Augmentation(keras.layers.Layer):
    """Per image: a horizontal flip, a rotation and a zoom about the centre (bilinear, black
    outside the picture), a brightness shift and a contrast change, then clipped to [0, 1].
    Expects pixels in [0, 1]."""

    def __init__(self, horizontal_flip, rotation, zoom, brightness, contrast, **kwargs):
        super().__init__(**kwargs)
        self.settings = AugmentationSettings(horizontal_flip=horizontal_flip, rotation=rotation, zoom=zoom,
                                             brightness=brightness, contrast=contrast)

    def get_config(self):
        return {**super().get_config(), **dataclasses.asdict(self.settings)}

    def call(self, images, training=None):
        if not training:
            return images
        settings, count = self.settings, tf.shape(images)[0]
        if settings.horizontal_flip:
            flip = _uniform(count, 0.0, 1.0, images.dtype) < 0.5
            images = tf.where(flip, tf.reverse(images, axis=[2]), images)
        if settings.rotation or settings.zoom:
            turn = 2 * math.pi * settings.rotation
            images = rotated_and_zoomed(images, angles=_uniform(count, -turn, turn, tf.float32)[:, 0, 0, 0],
                                        scales=_uniform(count, 1 - settings.zoom, 1 + settings.zoom, tf.float32)[:, 0, 0, 0])
        if settings.brightness:
            images = images + _uniform(count, -settings.brightness, settings.brightness, images.dtype)
        if settings.contrast:
            mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
            images = (images - mean) * _uniform(count, 1 - settings.contrast, 1 + settings.contrast, images.dtype) + mean
        return tf.clip_by_value(images, tf.cast(0.0, images.dtype), tf.cast(1.0, images.dtype))


def _uniform(count, low, high, dtype):
    """One value per image, shaped to broadcast over [N, H, W, C]."""
    return tf.cast(tf.random.uniform([count, 1, 1, 1], low, high), dtype)


def rotated_and_zoomed(images: tf.Tensor, angles: tf.Tensor, scales: tf.Tensor) -> tf.Tensor:
    """Each image [H, W, C] turned by its angle (radians) and magnified by its scale about its centre."""
    height, width = images.shape[1], images.shape[2]
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    y, x = tf.reshape(rows, [1, -1]) - centre_y, tf.reshape(cols, [1, -1]) - centre_x
    cos, sin, scales = tf.cos(angles)[:, None], tf.sin(angles)[:, None], scales[:, None]
    # Where each output pixel comes from: the inverse rotation, divided by the magnification.
    source_y = (cos * y - sin * x) / scales + centre_y
    source_x = (sin * y + cos * x) / scales + centre_x
    flat = tf.reshape(images, [-1, height * width, images.shape[3]])
    top, left = tf.floor(source_y), tf.floor(source_x)
    weight_y, weight_x = (source_y - top)[..., None], (source_x - left)[..., None]

    def pixel(row, col):
        inside = (row >= 0) & (row <= height - 1) & (col >= 0) & (col <= width - 1)
        index = tf.cast(tf.clip_by_value(row, 0, height - 1) * width + tf.clip_by_value(col, 0, width - 1), tf.int32)
        return tf.gather(flat, index, batch_dims=1) * tf.cast(inside, flat.dtype)[..., None]

    weight_y, weight_x = tf.cast(weight_y, flat.dtype), tf.cast(weight_x, flat.dtype)
    upper = pixel(top, left) * (1 - weight_x) + pixel(top, left + 1) * weight_x
    lower = pixel(top + 1, left) * (1 - weight_x) + pixel(top + 1, left + 1) * weight_x
    return tf.reshape(upper * (1 - weight_y) + lower * weight_y, tf.shape(images))
