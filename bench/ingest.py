"""Benchmark of `cxr build-tfrecords`: images/s and peak memory, against the study's approach.

Generates phantom datasets at two sizes (1x and 4x), runs the real command as a
subprocess with 1 and 2 Beam workers, and samples the resident memory of the
whole process tree (the driver and its Beam worker processes) every 50 ms. The
study's approach (read every image into one float32 array at 224 x 224 x 3) runs
on the same files for comparison. Writes a Markdown table.

    .venv/bin/python bench/ingest.py --write bench/RESULTS.md
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile

import psutil

from cxr.dataprep.demo_data import DemoDataSpec, write_demo_data
from measure import measure, write_section

STUDY_LOADER = """
import glob, sys
import numpy as np
from PIL import Image
paths = [p for p in glob.glob(sys.argv[1] + '/**/*', recursive=True)
         if p.lower().endswith(('.png', '.jpg', '.jpeg')) and '/masks/' not in p]
images = np.stack([np.asarray(Image.open(p).convert('RGB').resize((224, 224)), np.float32) / 255.0
                   for p in paths])
print(len(paths), images.nbytes)
"""


def files_seen(output):
    for line in output.splitlines():
        if line.startswith("files seen"):
            return int(line.split()[-1].replace(",", ""))
    raise RuntimeError("no 'files seen' line in the output")


def run_ingest(raw, out, workers):
    cxr = os.path.join(os.path.dirname(sys.executable), "cxr")
    command = [cxr, "build-tfrecords", "--covid-radiography", f"{raw}/covid19-radiography-database",
               "--curated", f"{raw}/curated-cxr", "--nih", f"{raw}/nih-chest-xrays", "--out", out,
               "--overwrite", f"--beam-arg=--direct_num_workers={workers}"]
    seconds, peak, output = measure(command)
    return {"seconds": seconds, "peak": peak, "files": files_seen(output)}


def run_study_loader(raw):
    seconds, peak, output = measure([sys.executable, "-c", STUDY_LOADER, raw])
    return {"seconds": seconds, "peak": peak, "files": int(output.split()[-2])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300, help="the 1x size (images per class folder)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--write", help="Markdown file to write the results to")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cxr-bench-")
    rows = []
    try:
        for scale in (1, 4):
            raw = os.path.join(work, f"raw-{scale}x")
            write_demo_data(DemoDataSpec(out_dir=raw, per_class=args.per_class * scale, size=args.size, seed=scale))
            for workers in (1, 2):
                result = run_ingest(raw, os.path.join(work, "out"), workers)
                rows.append((f"{scale}x", f"build-tfrecords, {workers} worker{'s' * (workers > 1)}", result))
                print(rows[-1], flush=True)
            rows.append((f"{scale}x", "study: all images in one float32 array", run_study_loader(raw)))
            print(rows[-1], flush=True)
            shutil.rmtree(raw)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = render(rows, args)
    print(report)
    if args.write:
        write_section(args.write, report)


def render(rows, args):
    by = {(scale, name): r for scale, name, r in rows}
    lines = [
        "# Ingestion benchmark (`bench/ingest.py`)", "",
        f"Machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU. Phantom datasets at {args.size} px "
        f"(`cxr demo-data`), 1x = {args.per_class} images per class folder. Peak memory is the resident "
        "memory of the whole process tree (driver and Beam workers), sampled every 50 ms. "
        "Wall time includes starting Python and Beam's worker processes (about 13 s here).", "",
        "| size | what | files | wall s | images/s | peak RSS MiB |", "|---|---|---:|---:|---:|---:|"]
    for scale, name, r in rows:
        lines.append(f"| {scale} | {name} | {r['files']:,} | {r['seconds']:.1f} | "
                     f"{r['files'] / r['seconds']:.1f} | {r['peak'] / 2**20:,.0f} |")
    one_worker, two_workers = "build-tfrecords, 1 worker", "build-tfrecords, 2 workers"
    growth = by[("4x", two_workers)]["peak"] / by[("1x", two_workers)]["peak"]
    speedup = by[("4x", one_worker)]["seconds"] / by[("4x", two_workers)]["seconds"]
    study_growth = by[("4x", "study: all images in one float32 array")]["peak"] / \
        by[("1x", "study: all images in one float32 array")]["peak"]
    marginal = {name: _marginal_rate(by, name) for name in (one_worker, two_workers)}
    lines += ["", "Targets:",
              f"- peak RSS at 4x / at 1x (2 workers): **{growth:.2f}** (target < 1.3; the study's "
              f"approach: {study_growth:.2f})",
              f"- 2 workers vs 1 at 4x, wall time: **{speedup:.2f}x** faster (target >= 1.6)",
              f"- images/s added between 1x and 4x (start-up excluded): 1 worker "
              f"{marginal[one_worker]:.0f}, 2 workers {marginal[two_workers]:.0f}, "
              f"**{marginal[two_workers] / marginal[one_worker]:.2f}x**", ""]
    return "\n".join(lines)


def _marginal_rate(by, name):
    small, large = by[("1x", name)], by[("4x", name)]
    return (large["files"] - small["files"]) / max(large["seconds"] - small["seconds"], 1e-9)


if __name__ == "__main__":
    main()
