import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cxr.components.transform import (
    class_ids, decode_image, decode_images, decode_pixels, encode_pixels, preprocessing_fn)
from helpers import cmyk_jpeg, encode, phantom_picture, sixteen_bit_png

SIZE = 48


@pytest.mark.parametrize("name, data", [
    ("8-bit gray PNG", lambda: encode(phantom_picture(1), "PNG")),
    ("16-bit PNG", lambda: sixteen_bit_png(2)),
    ("RGB PNG", lambda: encode(phantom_picture(3).convert("RGB"), "PNG")),
    ("RGBA PNG", lambda: encode(phantom_picture(4).convert("RGBA"), "PNG")),
    ("palette PNG", lambda: encode(phantom_picture(5).convert("RGB").convert("P"), "PNG")),
    ("gray JPEG", lambda: encode(phantom_picture(6), "JPEG")),
    ("RGB JPEG", lambda: encode(phantom_picture(7).convert("RGB"), "JPEG")),
    ("CMYK JPEG", lambda: cmyk_jpeg(8)),
    ("wide odd-sized PNG", lambda: encode(phantom_picture(9).resize((131, 77)), "PNG")),
])
def test_every_format_becomes_a_min_max_scaled_gray_square(name, data):
    pixels = decode_image(tf.constant(data()), SIZE).numpy()
    assert pixels.shape == (SIZE, SIZE, 1), name
    assert pixels.min() == pytest.approx(0.0) and pixels.max() == pytest.approx(1.0), name


def test_the_same_picture_gives_the_same_pixels_in_png_8_and_16_bit():
    eight = decode_image(tf.constant(encode(phantom_picture(2), "PNG")), SIZE).numpy()
    sixteen = decode_image(tf.constant(sixteen_bit_png(2)), SIZE).numpy()
    np.testing.assert_allclose(eight, sixteen, atol=1e-5)


def test_a_flat_image_scales_to_zeros_not_nan():
    flat = encode(Image.new("L", (20, 20), 128), "PNG")
    assert not np.isnan(decode_image(tf.constant(flat), SIZE).numpy()).any()


def test_labels_map_to_the_study_class_order_and_unknown_to_minus_one():
    ids = class_ids(tf.constant(["BACTERIAL_PNEUMONIA", "COVID", "NORMAL", "PNEUMOTHORAX", "VIRAL"]))
    assert ids.numpy().tolist() == [0, 1, 2, 3, -1]


def test_preprocessing_fn_takes_dense_batches_and_drops_the_label_when_serving():
    batch = tf.constant([[encode(phantom_picture(1), "PNG")], [encode(phantom_picture(2), "JPEG")]])
    outputs = preprocessing_fn({"image": batch, "label": tf.constant([["COVID"], ["NORMAL"]])},
                               {"image_size": SIZE})
    assert outputs["image"].shape == (2,) and outputs["image"].dtype == tf.string
    pixels = decode_pixels(outputs["image"], SIZE)
    assert pixels.shape == (2, SIZE, SIZE, 1) and pixels.dtype == tf.uint8
    assert outputs["class_id"].numpy().tolist() == [1, 2]
    assert set(preprocessing_fn({"image": batch}, {"image_size": SIZE})) == {"image"}


def test_an_undecodable_payload_fails_loudly():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_images(tf.constant([b"not an image"]), SIZE)


def test_stored_pixels_are_the_scaled_image_rounded_to_eight_bits():
    scaled = decode_images(tf.constant([encode(phantom_picture(3), "PNG"), sixteen_bit_png(2)]), SIZE)
    encoded = encode_pixels(scaled)
    assert [len(value) for value in encoded.numpy()] == [SIZE * SIZE] * 2
    stored = decode_pixels(encoded, SIZE).numpy()
    np.testing.assert_array_equal(stored, np.round(scaled.numpy() * 255).astype(np.uint8))
    assert stored.min() == 0 and stored.max() == 255


def test_stored_pixels_of_another_size_are_refused():
    encoded = encode_pixels(decode_images(tf.constant([encode(phantom_picture(3), "PNG")]), SIZE))
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_pixels(encoded, SIZE + 1)
