"""Synthetic "phantom" chest X-rays: chest anatomy plus one finding, with noise.

Not medical images. They exist so that the pipeline runs end to end without the
real downloads, and each finding is drawn as it looks on a radiograph so a
small CNN can learn it, but not from a single pixel:
- bacterial pneumonia: dense, homogeneous consolidation filling part of one lobe;
- COVID-19: patchy ground-glass haze at the periphery of both lower lungs;
- pneumothorax: one lung pulled away from the chest wall, a thin pleural line at
  its edge and dark air with no lung markings beyond it;
- normal: clear lungs with vessel markings out to the chest wall.
Patients keep their anatomy across follow-up images; each image gets its own
positioning, exposure and noise.
"""
import dataclasses
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

FINDINGS = ("normal", "bacterial_pneumonia", "covid", "pneumothorax", "opacity", "viral")


@dataclasses.dataclass(frozen=True)
class Anatomy:
    lung_width: float
    lung_height: float
    lung_gap: float
    heart_size: float
    rib_spacing: float
    body_width: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Anatomy":
        return cls(lung_width=rng.uniform(0.22, 0.28), lung_height=rng.uniform(0.50, 0.60),
                   lung_gap=rng.uniform(0.30, 0.36), heart_size=rng.uniform(0.16, 0.24),
                   rib_spacing=rng.uniform(0.11, 0.14), body_width=rng.uniform(0.78, 0.9))


def render(rng: np.random.Generator, anatomy: Anatomy, finding: str, size: int,
           affected_lung: Optional[int] = None) -> np.ndarray:
    """A float image in [0, 1], size x size, darker where there is air.

    affected_lung: for the one-sided findings (pneumothorax, bacterial pneumonia),
    0 puts the finding in the lung on the image's left, 1 on its right; None draws it.
    """
    grid = _Grid(size, rng)
    lungs = [_lung_mask(grid, anatomy, side) for side in (-1, 1)]
    severity = rng.uniform(0.55, 1.0)
    if finding == "pneumothorax":
        side = _side(rng, affected_lung)
        lungs[side], air = _collapse(grid, anatomy, 2 * side - 1, rng.uniform(0.55, 0.8))
    else:
        air = np.zeros_like(grid.x)
    lung = np.clip(lungs[0] + lungs[1], 0, 1)
    body = _ellipse(grid, 0, 0.05, anatomy.body_width, 0.98, soft=0.05)
    image = 0.12 + 0.5 * body
    image -= 0.33 * lung + 0.42 * air
    image += 0.32 * _ellipse(grid, 0.07, 0.28, anatomy.heart_size, anatomy.heart_size * 0.85, soft=0.04)
    image += 0.18 * _ellipse(grid, 0, 0, 0.06, 1.0, soft=0.02)
    image += 0.10 * _ribs(grid, anatomy) * body * (1 - 0.6 * air)
    image += 0.09 * _vessels(grid, anatomy, rng) * lung
    image += severity * _finding(grid, anatomy, finding, lungs, rng, affected_lung)
    if finding == "pneumothorax":
        image += 0.16 * severity * _edge(lungs[side], grid)
    image += 0.05 * grid.smooth_noise(5) + rng.normal(0, rng.uniform(0.02, 0.04), image.shape)
    return np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


class _Grid:
    """Normalised coordinates in [-1, 1], jittered per image (positioning)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        shift = rng.uniform(-0.06, 0.06, 2)
        scale = rng.uniform(0.93, 1.07)
        angle = np.deg2rad(rng.uniform(-4, 4))
        ys, xs = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
        xs, ys = (xs - shift[0]) / scale, (ys - shift[1]) / scale
        self.x = xs * np.cos(angle) - ys * np.sin(angle)
        self.y = xs * np.sin(angle) + ys * np.cos(angle)

    def smooth_noise(self, cells: int) -> np.ndarray:
        coarse = self.rng.normal(0, 1, (cells, cells)).astype(np.float32)
        return np.asarray(Image.fromarray(coarse).resize((self.size, self.size), Image.BICUBIC))

    def blur(self, image: np.ndarray, radius_fraction: float) -> np.ndarray:
        return ndimage.gaussian_filter(image.astype(np.float32), sigma=max(0.5, radius_fraction * self.size))

    def canvas(self):
        image = Image.new("F", (self.size, self.size), 0.0)
        return image, ImageDraw.Draw(image)

    def pixel(self, x: float, y: float):
        return ((x + 1) / 2 * (self.size - 1), (y + 1) / 2 * (self.size - 1))


def _ellipse(grid: _Grid, cx, cy, rx, ry, soft=0.03) -> np.ndarray:
    r = np.sqrt(((grid.x - cx) / rx) ** 2 + ((grid.y - cy) / ry) ** 2)
    return np.clip((1 - r) / soft + 0.5, 0, 1)


def _lung_mask(grid: _Grid, anatomy: Anatomy, side: int, shrink: float = 1.0) -> np.ndarray:
    cx = side * anatomy.lung_gap
    hilum_x = side * 0.12
    return _ellipse(grid, hilum_x + (cx - hilum_x) * shrink, -0.05 + 0.05 * (1 - shrink),
                    anatomy.lung_width * shrink, anatomy.lung_height * (0.5 + 0.5 * shrink))


def _collapse(grid: _Grid, anatomy: Anatomy, side: int, shrink: float):
    full = _lung_mask(grid, anatomy, side)
    collapsed = _lung_mask(grid, anatomy, side, shrink)
    return collapsed, np.clip(full - collapsed, 0, 1)


def _edge(mask: np.ndarray, grid: _Grid) -> np.ndarray:
    return np.clip(4 * mask * (1 - mask), 0, 1) * (grid.blur(mask, 0.01) > 0.05)


def _ribs(grid: _Grid, anatomy: Anatomy) -> np.ndarray:
    ribs = np.zeros_like(grid.x)
    for k in range(9):
        centre = -0.62 + k * anatomy.rib_spacing
        curve = centre + 0.35 * grid.x ** 2
        ribs += np.exp(-((grid.y - curve) / 0.018) ** 2)
    return np.clip(ribs, 0, 1) * (np.abs(grid.x) > 0.08)


def _vessels(grid: _Grid, anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    image, draw = grid.canvas()
    width = max(1, grid.size // 160)
    for side in (-1, 1):
        for _ in range(14):
            angle = rng.uniform(-1.2, 1.2) + (0 if side > 0 else np.pi)
            length = rng.uniform(0.2, 0.45)
            start = np.array([side * 0.12, rng.uniform(-0.15, 0.1)])
            _branch(draw, grid, start, angle, length, width, rng, depth=2)
    return np.clip(grid.blur(np.asarray(image), 0.004), 0, 1)


def _branch(draw, grid, start, angle, length, width, rng, depth) -> None:
    end = start + length * np.array([np.cos(angle), np.sin(angle)])
    draw.line([grid.pixel(*start), grid.pixel(*end)], fill=1.0, width=width)
    if depth > 0:
        for turn in (-0.45, 0.45):
            _branch(draw, grid, end, angle + turn + rng.uniform(-0.2, 0.2), length * 0.55, width, rng, depth - 1)


def _side(rng: np.random.Generator, affected_lung: Optional[int]) -> int:
    return int(rng.integers(2)) if affected_lung is None else affected_lung


def _finding(grid: _Grid, anatomy: Anatomy, finding: str, lungs, rng, affected_lung=None) -> np.ndarray:
    if finding == "bacterial_pneumonia":
        return _consolidation(grid, anatomy, lungs, rng, affected_lung)
    if finding == "covid":
        return sum(_peripheral_haze(grid, anatomy, lungs[i], 2 * i - 1, rng) for i in (0, 1))
    if finding == "opacity":
        i = int(rng.integers(2))
        return _peripheral_haze(grid, anatomy, lungs[i], 2 * i - 1, rng)
    if finding == "viral":
        return 0.12 * np.clip(grid.smooth_noise(12), 0, None) * (lungs[0] + lungs[1])
    return np.zeros_like(grid.x)


def _consolidation(grid: _Grid, anatomy: Anatomy, lungs, rng, affected_lung=None) -> np.ndarray:
    side = _side(rng, affected_lung)
    lower = rng.random() < 0.65
    fissure = rng.uniform(-0.1, 0.15)
    lobe = (grid.y > fissure) if lower else (grid.y < fissure - 0.1)
    region = lungs[side] * lobe * (0.75 + 0.25 * np.clip(grid.smooth_noise(6), -1, 1))
    return 0.34 * grid.blur(region, 0.012)


def _peripheral_haze(grid: _Grid, anatomy: Anatomy, lung, side: int, rng) -> np.ndarray:
    lateral = np.clip((side * grid.x - anatomy.lung_gap + 0.05) / anatomy.lung_width, 0, 1)
    lower = np.clip((grid.y + 0.1) / 0.5, 0, 1)
    patches = np.clip(0.6 + grid.smooth_noise(9), 0, 1.6)
    return 0.16 * lung * (0.4 + lateral) * (0.3 + lower) * patches
