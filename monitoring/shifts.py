"""Synthetic shifts of what a hospital sends, to check that the monitor finds them (tests, bench/monitor.py):
an inverted film, a dim exposure, a phone photo of a screen."""
import io

from PIL import Image, ImageOps


def _opened(image: bytes) -> Image.Image:
    with Image.open(io.BytesIO(image)) as opened:
        return opened.convert("L")


def _encoded(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def inverted(image: bytes) -> bytes:
    return _encoded(ImageOps.invert(_opened(image)), "PNG")


def dimmed(image: bytes, factor: float = 0.4) -> bytes:
    return _encoded(_opened(image).point(lambda v: int(v * factor)), "PNG")


def screen_photo(image: bytes) -> bytes:
    """Colour cast, a dark bezel, a landscape shape, JPEG: a stand-in for a photo of a monitor."""
    picture = _opened(image).convert("RGB")
    tinted = Image.merge("RGB", [channel.point(lambda v, k=k: int(v * k))
                                 for channel, k in zip(picture.split(), (0.8, 0.95, 1.0))])
    width, height = picture.size
    landscape = tinted.resize((int(width * 1.15), int(height * 0.88)))
    return _encoded(ImageOps.expand(landscape, border=max(4, width // 8), fill=(20, 20, 24)), "JPEG", quality=80)


SHIFTS = {"inverted": inverted, "dimmed": dimmed, "screen photo": screen_photo}


def mixed(images):
    """The images shifted in turn by each of SHIFTS."""
    kinds = list(SHIFTS.values())
    return [kinds[i % len(kinds)](image) for i, image in enumerate(images)]
