import random

import pytest

from cxr.dataprep.probe import ImageFacts, hamming, hash_bands, probe
from helpers import cmyk_jpeg, encode, phantom_picture, sixteen_bit_png

CAP = 50_000_000


@pytest.mark.parametrize("name, data, expected", [
    ("8-bit gray PNG", lambda: encode(phantom_picture(1), "PNG"), ("png", 1, 8)),
    ("16-bit PNG", lambda: sixteen_bit_png(2), ("png", 1, 16)),
    ("RGBA PNG", lambda: encode(phantom_picture(3).convert("RGBA"), "PNG"), ("png", 4, 8)),
    ("palette PNG", lambda: encode(phantom_picture(4).convert("RGB").convert("P"), "PNG"), ("png", 3, 8)),
    ("RGB JPEG", lambda: encode(phantom_picture(5).convert("RGB"), "JPEG"), ("jpeg", 3, 8)),
    ("CMYK JPEG", lambda: cmyk_jpeg(6), ("jpeg", 3, 8)),
])
def test_valid_xrays_of_every_depth_and_mode_are_accepted(name, data, expected):
    facts = probe(data(), CAP)
    assert isinstance(facts, ImageFacts), f"{name}: {facts}"
    assert (facts.format, facts.channels, facts.bit_depth) == expected
    assert (facts.height, facts.width) == (96, 96)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file (0 bytes)"),
    (b"<html>not an x-ray</html>", "not a readable image"),
    (encode(phantom_picture(7), "PNG")[:200], "truncated or corrupt PNG"),
    (encode(phantom_picture(8), "JPEG")[:300], "truncated or corrupt"),
    (encode(phantom_picture(8), "JPEG")[:2000], "truncated or corrupt JPEG"),
    (encode(phantom_picture(9), "BMP"), "unsupported format BMP (expected PNG or JPEG)"),
    (encode(phantom_picture(10).convert("F"), "TIFF"), "unsupported format TIFF"),
])
def test_unusable_files_get_a_reason(data, reason):
    result = probe(data, CAP)
    assert isinstance(result, str) and result.startswith(reason), result


def test_header_size_is_checked_before_decoding():
    reason = probe(encode(phantom_picture(11), "PNG"), max_pixels=96 * 96 - 1)
    assert reason == "header declares 96x96 = 9,216 pixels, over the cap of 9,215"


def test_a_resized_jpeg_copy_hashes_close_and_a_different_xray_far():
    original = probe(encode(phantom_picture(12), "PNG"), CAP)
    copy = probe(encode(phantom_picture(12).resize((70, 70)), "JPEG", quality=85), CAP)
    other = probe(encode(phantom_picture(13), "PNG"), CAP)
    assert original.sha256 != copy.sha256
    assert hamming(original.phash, copy.phash) <= 4
    assert hamming(original.phash256, copy.phash256) <= 16
    assert hamming(original.phash256, other.phash256) > 16


def test_hashes_within_the_band_count_share_a_band():
    rng = random.Random(0)
    for _ in range(200):
        value = rng.getrandbits(64)
        flipped = value
        for bit in rng.sample(range(64), 4):
            flipped ^= 1 << bit
        shared = [a == b for a, b in zip(hash_bands(value, 5), hash_bands(flipped, 5))]
        assert any(shared)
    assert len(hash_bands(1, 5)) == 5
