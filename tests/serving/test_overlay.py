"""Grad-CAM overlays: the heatmap stretched over the X-ray, hot areas coloured, cold ones left gray."""
import numpy as np
from PIL import Image

from cxr.serving.overlay import colour_scale, overlay
from helpers import encode


def test_the_overlay_has_the_xrays_size_and_colours_only_where_the_heatmap_is_hot():
    xray = Image.new("L", (120, 80), 100)
    heatmap = np.zeros((16, 16), np.float32)
    heatmap[:, 12:] = 1.0  # the right quarter of the square the model saw
    pixels = np.asarray(overlay(encode(xray, "PNG"), heatmap), dtype=int)
    assert pixels.shape == (80, 120, 3)
    left, right = pixels[:, :60], pixels[:, -20:]
    assert (left == 100).all(), "cold: the X-ray's own gray"
    assert (right[..., 0] - right[..., 2] > 40).all(), "hot: red over the X-ray"


def test_the_colour_scale_runs_from_blue_to_red():
    cold, hot = colour_scale(np.array([0.0, 1.0]))
    assert cold[2] > cold[0] and hot[0] > hot[2]


def test_a_16_bit_xray_keeps_its_gray_levels_under_the_overlay():
    """A DICOM's conversion is a 16-bit PNG: its levels are scaled to 8 bits, not clipped to white."""
    levels = np.tile(np.linspace(0, 65535, 120).astype(np.uint16), (80, 1))
    pixels = np.asarray(overlay(encode(Image.fromarray(levels), "PNG"), np.zeros((16, 16), np.float32)), dtype=int)
    assert abs(pixels[:, 0, 0].mean() - 0) <= 1 and abs(pixels[:, 60, 0].mean() - 128) <= 2
    assert abs(pixels[:, -1, 0].mean() - 255) <= 1
