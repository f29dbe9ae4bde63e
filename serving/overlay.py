"""Grad-CAM overlays: the X-ray with its heatmap blended over it, as the study showed them."""
import io

import numpy as np
from PIL import Image

# Anchors of a blue -> cyan -> yellow -> red colour scale for heat 0 -> 1.
_SCALE = np.array([[0, 0, 128], [0, 160, 255], [0, 255, 160], [255, 230, 0], [255, 60, 0], [160, 0, 0]], float)


def overlay(image_bytes: bytes, heatmap, opacity: float = 0.45) -> Image.Image:
    """The X-ray in gray with the heatmap, stretched back to the X-ray's size, blended over it.

    The model saw the whole image squeezed to a square, so stretching the square
    heatmap back to the original width and height puts each value over the
    pixels it came from. Cold areas stay mostly transparent.
    """
    xray = Image.open(io.BytesIO(image_bytes))
    if xray.mode.startswith("I"):  # a 16-bit PNG (a DICOM's conversion): its levels scaled, not clipped, to 8 bits
        gray = np.asarray(xray, dtype=float) / 257.0
    else:
        gray = np.asarray(xray.convert("L"), dtype=float)
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    heat = np.asarray(Image.fromarray(heat, mode="F").resize(xray.size, Image.BILINEAR))
    alpha = opacity * np.sqrt(heat)[..., None]
    blended = (1 - alpha) * gray[..., None] + alpha * colour_scale(heat)
    return Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8), mode="RGB")


def colour_scale(heat: np.ndarray) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(_SCALE))
    return np.stack([np.interp(heat, positions, _SCALE[:, channel]) for channel in range(3)], axis=-1)
