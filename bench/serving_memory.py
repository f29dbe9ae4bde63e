"""Benchmark of serving memory: how much resident memory one request adds, for normal and hostile images.

The served graph (components/export.py, then Transform's decode) is what TF Serving runs, so what
one request costs here is what it costs a serving pod. For each case a fresh process loads a model
exported by the Trainer's code with the configured InputLimits (demo size), sends one warm-up
request of one normal image, then sends the case's request while a thread samples the process's
resident memory every 2 ms: the row is the peak above the resident memory just before the request.

    .venv/bin/python bench/serving_memory.py --write bench/RESULTS.md
"""
import argparse
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import psutil

from measure import write_section

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

# (name, how many images, width, height, bit depth, PNG color type)
CASES = (
    ("NIH X-ray, 1,024 x 1,024 8-bit gray", 1, 1024, 1024, 8, 0),
    ("16 NIH X-rays in one request", 16, 1024, 1024, 8, 0),
    ("largest real radiograph, 4,000 x 5,000 16-bit gray", 1, 4000, 5000, 16, 0),
    ("four of those in one request", 4, 4000, 5000, 16, 0),
    ("3,700 x 3,900 8-bit RGB (43 MB decoded, just under the per-image cap)", 1, 3700, 3900, 8, 2),
    ("7,000 x 7,000 8-bit gray (49 M pixels, under the pixel cap)", 1, 7000, 7000, 8, 0),
    ("7,000 x 7,000 16-bit RGBA (hostile, 0.4 MB file)", 1, 7000, 7000, 16, 6),
    ("four 7,000 x 7,000 16-bit RGBA in one request", 4, 7000, 7000, 16, 6),
    # The count (max_images_per_request, 64): every image is resized to a full-size tensor however small.
    ("64 1x1 PNGs (the most images a request may hold)", 64, 1, 1, 8, 0),
    ("65 1x1 PNGs (one over)", 65, 1, 1, 8, 0),
    ("2,000 1x1 PNGs (210 KB; once 0.75 -> 7 GB resident)", 2000, 1, 1, 8, 0),
    ("64 NIH X-rays in one request (the most, at 1,024 px)", 64, 1024, 1024, 8, 0),
    ("four 3,700 x 3,900 RGB (172 MB decoded, under max_request_bytes)", 4, 3700, 3900, 8, 2),
)


def png(width: int, height: int, bit_depth: int, color_type: int) -> bytes:
    """A flat PNG of that header: it compresses to almost nothing, as a decompression bomb does."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\0" + bytes(width * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)),
              (b"IDAT", data), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks)


def measure_case(model_dir: str, case_index: int) -> dict:
    """In this process: load, warm up, then the peak resident memory added by the case's request."""
    import tensorflow as tf
    from cxr import contract
    name, count, width, height, bit_depth, color_type = CASES[case_index]
    serve = tf.saved_model.load(model_dir).signatures[contract.PREDICT_SIGNATURE]
    serve(images=tf.constant([png(1024, 1024, 8, 0)]))
    images = tf.constant([png(width, height, bit_depth, color_type)] * count)
    me = psutil.Process()
    before, peak, done = me.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        serve(images=images)[contract.CLASS_ID].numpy()
        outcome = "served"
    except tf.errors.InvalidArgumentError as error:
        reason = re.search(r"(more than [\d]+ [a-z ]+?) \(limit (\w+)\)", error.message)
        outcome = f"refused (400): {reason.group(1)}, {reason.group(2)}" if reason else f"refused: {error.message}"
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"case": name, "file_kb": len(images.numpy()[0]) / 1e3, "outcome": outcome,
            "added_mb": (max(peak[0], me.memory_info().rss) - before) / 1e6, "seconds": seconds}


def export_model(work: str) -> str:
    from cxr.components import model as model_lib
    from cxr.components.export import export_serving_model
    from cxr.pipeline.config import PRESETS
    from trained_model import write_transform_graph
    config = PRESETS["demo"]
    transform_output = write_transform_graph(os.path.join(work, "transform"), os.path.join(work, "tmp"),
                                             config.model.image_size)
    # As the Trainer exports it: in float32 whatever the preset's training precision.
    model = model_lib.for_serving(model_lib.build_model(config.model, config.training), config.model, config.training)
    model_dir = os.path.join(work, "cxr", "1")
    export_serving_model(model, transform_output, model_dir, config.serving)
    return model_dir


def render(rows) -> str:
    from cxr.pipeline.config import PRESETS
    limits = PRESETS["demo"].serving
    lines = ["# Serving memory (`bench/serving_memory.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, no GPU. The demo model exported by the "
             f"Trainer's code with the default limits: max_image_pixels {limits.max_image_pixels:,}, "
             f"max_image_bytes {limits.max_image_bytes:,}, max_request_bytes {limits.max_request_bytes:,}, "
             f"max_images_per_request {limits.max_images_per_request}, chunk_images {limits.chunk_images}. "
             "One fresh process per row: load, one warm-up request, then the row's request; 'added' is the peak "
             "resident memory (sampled every 2 ms) above the resident memory just before the request.", "",
             "| request | PNG file | outcome | added MB | seconds |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['case']} | {r['file_kb']:,.0f} kB | {r['outcome']} | {r['added_mb']:,.0f} | "
              f"{r['seconds']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # the child process's one case
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(measure_case(args.model_dir, args.case)))
        return
    with tempfile.TemporaryDirectory() as work:
        model_dir = export_model(work)
        rows = []
        for index in range(len(CASES)):
            output = subprocess.run([sys.executable, __file__, "--case", str(index), "--model-dir", model_dir],
                                    capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    report = render(rows)
    print(report)
    if args.write:
        write_section(args.write, report)


if __name__ == "__main__":
    main()
