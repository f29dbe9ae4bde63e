"""What the served model refuses before decoding an image, checked in the graph of every signature that
takes image bytes or tf.Examples (components/export.py). Plain Python: the pipeline's configuration uses
this type as its `serving` section."""
import dataclasses

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class InputLimits:
    # A decompression bomb declares a huge image in a small file, so the header is read first.
    max_image_pixels: int = 50_000_000
    # Decoded size, width x height x channels x bytes per sample, as the PNG IHDR or JPEG header
    # declares it. The largest radiographs in the three datasets are about 4,000 x 5,000 16-bit
    # gray: 40 MB. Decoding costs several times this (float32 copies, the gray conversion, the
    # resize): at this limit one request adds at most about 300 MB (bench/serving_memory.py).
    max_image_bytes: int = 42 * MIB
    # The sum over one request: images are decoded one at a time, but each one's result is kept.
    max_request_bytes: int = 192 * MIB
