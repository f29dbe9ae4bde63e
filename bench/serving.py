"""Benchmark of serving: latency and throughput through the REST API beside the bare in-process cost.

For the demo and the study sizes it exports a model exactly as the Trainer does
(components.export: Transform's graph, the guards, the CNN; weights untrained,
which does not change the cost), then, with 1,024 px PNG phantoms (NIH's size):
- in-process: the SavedModel's signature called directly (decode, resize,
  scale, forward pass): the bare cost;
- REST: `cxr serve` in its own process, one client sending TF Serving's JSON
  (base64 images) one request after another: what a caller sees.
For 1 and 16 images per request: p50 / p99 latency per request and images/s.

    .venv/bin/python bench/serving.py --write bench/RESULTS.md
"""
import argparse
import base64
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

from measure import write_section

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

INPUT_PIXELS = 1024
# (images per request, requests) per preset: the study's model is slow on a CPU.
RUNS = {"demo": ((1, 200), (16, 30)), "study": ((1, 40), (16, 8))}
QUICK_RUNS = {"demo": ((1, 3), (16, 2)), "study": ((1, 2), (16, 1))}  # --quick: checks the script runs


def xray_pngs(count: int):
    from cxr.dataprep import phantoms
    from helpers import encode
    from PIL import Image
    findings = ("bacterial_pneumonia", "covid", "normal", "pneumothorax")
    rng = np.random.default_rng(0)
    return [encode(Image.fromarray(phantoms.to_uint8(phantoms.render(
        rng, phantoms.Anatomy.random(rng), findings[i % 4], INPUT_PIXELS))), "PNG") for i in range(count)]


def export_model(preset: str, work: str) -> str:
    """<work>/<preset>/cxr, holding version 1 exported by the Trainer's code."""
    from cxr.components import model as model_lib
    from cxr.components.export import export_serving_model
    from cxr.pipeline.config import PRESETS
    from trained_model import write_transform_graph
    config = PRESETS[preset]
    out = os.path.join(work, preset)
    transform_output = write_transform_graph(os.path.join(out, "transform"), os.path.join(out, "tmp"),
                                             config.model.image_size)
    # As the Trainer exports it: in float32 whatever the preset's training precision.
    model = model_lib.for_serving(model_lib.build_model(config.model, config.training), config.model, config.training)
    base_path = os.path.join(out, "cxr")
    export_serving_model(model, transform_output, os.path.join(base_path, "1"), config.serving)
    return base_path


def timed(call, requests_count: int):
    call()  # warm: the first call traces and allocates
    latencies = []
    for _ in range(requests_count):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return np.array(latencies)


def in_process_rows(preset, base_path, images, runs):
    import tensorflow as tf
    from cxr import contract
    loaded = tf.saved_model.load(os.path.join(base_path, "1"))
    rows = []
    for batch, count in runs:
        for signature in _signatures(batch):
            tensor = tf.constant(images[:batch])
            function = loaded.signatures[signature]
            latencies = timed(lambda: function(**{contract.IMAGES_INPUT: tensor})[contract.CLASS_ID].numpy(), count)
            rows.append((preset, "in-process", signature, batch, count, latencies))
            print(_row(rows[-1]), flush=True)
    return rows


def rest_rows(preset, base_path, images, runs):
    from cxr.serving.client import ServingClient
    server = subprocess.Popen([sys.executable, "-m", "cxr", "serve", "--model_base_path", base_path,
                               "--rest_api_port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = re.search(r"at (http://[^ ]+)/v1/models/", server.stdout.readline()).group(1)
        client = ServingClient(url=url, retries=0, timeout_s=300)
        client.wait_until_available(120)
        rows = []
        for batch, count in runs:
            for signature in _signatures(batch):
                latencies = timed(lambda: client.predict(images[:batch], signature), count)
                rows.append((preset, "REST, cxr serve", signature, batch, count, latencies))
                print(_row(rows[-1]), flush=True)
        return rows
    finally:
        server.terminate()
        server.wait(30)


def _signatures(batch):
    return ("serving_default", "explain") if batch == 1 else ("serving_default",)


def _row(row):
    preset, path, signature, batch, count, latencies = row
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    rate = batch * len(latencies) / latencies.sum()
    return f"| {preset} | {path} | {signature} | {batch} | {count} | {p50:,.1f} | {p99:,.1f} | {rate:,.1f} |"


def render(rows, images):
    from cxr.pipeline.config import PRESETS
    sizes = ", ".join(f"{preset} {PRESETS[preset].model.image_size} px" for preset in RUNS)
    lines = ["# Serving benchmark (`bench/serving.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU (TensorFlow on the CPU). Model input: "
             f"{sizes}; each request carries {INPUT_PIXELS} x {INPUT_PIXELS} 8-bit PNGs (NIH's size), decoded, "
             "resized and scaled inside the model. REST: `cxr serve` in its own process, one client, requests "
             "one after another (latency includes base64 and JSON on both sides). TF Serving itself was not "
             "available here.", "",
             "| size | path | signature | images/request | requests | p50 ms | p99 ms | images/s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [_row(row) for row in rows]
    png_kb = sum(len(image) for image in images) / len(images) / 1e3
    body_mb = len(json.dumps({"instances": [{"b64": base64.b64encode(image).decode()} for image in images]})) / 1e6
    lines += ["", f"The PNGs average {png_kb:,.0f} kB, so a 16-image request body is {body_mb:.1f} MB of JSON: "
                  "base64 and JSON on both sides and the transfer account for much of the gap between REST and "
                  "in-process.",
              "p99 over fewer than 100 requests is the slowest request or close to it."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    parser.add_argument("--quick", action="store_true", help="a few requests only, to check the script runs")
    args = parser.parse_args()
    runs = QUICK_RUNS if args.quick else RUNS
    images = xray_pngs(16)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for preset in runs:
            base_path = export_model(preset, work)
            rows += in_process_rows(preset, base_path, images, runs[preset])
            rows += rest_rows(preset, base_path, images, runs[preset])
    report = render(rows, images)
    print(report)
    if args.write:
        write_section(args.write, report)


if __name__ == "__main__":
    main()
