"""Benchmark of the README's main command: `make demo` on fresh clones, one after another.

Each run clones the repository (its committed HEAD) into a new folder and runs `make demo` there,
bootstrap included (uv installs from its local cache: no downloads after the first run), and
times each stage from the moment its first line appears. Targets: every run within
TARGET_SECONDS, and test accuracy >= TARGET_ACCURACY in at least TARGET_RUNS_ACCURATE runs.

    .venv/bin/python bench/demo.py --runs 5 --write bench/RESULTS.md
    .venv/bin/python bench/demo.py --runs 5 --precision mixed_bfloat16 --write bench/RESULTS.md

`--precision` runs the preset with `training.precision` set (make demo's DEMO_RUN_FLAGS); each precision's
results have their own section.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import psutil

from measure import write_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_SECONDS = 240  # uv's cache warm, as these runs are; with an empty cache the target is 360 s (timed by hand)
TARGET_ACCURACY = 0.9
TARGET_RUNS_ACCURATE = 4  # of 5
# Where each stage of the Makefile's demo target begins: the command line make echoes.
STAGES = (("setup", "scripts/bootstrap.sh"), ("demo data and span", ".venv/bin/cxr demo-data"),
          ("cxr run", ".venv/bin/cxr run"), ("serve and predict", "scripts/demo_predict.sh"),
          ("report", ".venv/bin/cxr report"))


def run_demo(folder: str, precision=None) -> dict:
    subprocess.run(["git", "clone", "--quiet", REPO, folder], check=True)
    began, lines = time.monotonic(), []
    flags = [f"DEMO_RUN_FLAGS=--set training.precision={precision}"] if precision else []
    process = subprocess.Popen(["make", "demo", *flags], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    for line in process.stdout:
        lines.append((time.monotonic() - began, line.rstrip("\n")))
    process.wait()
    wall = time.monotonic() - began
    with open(os.path.join(folder, "demo.log"), "w") as log:
        log.writelines(f"{at:8.1f} {line}\n" for at, line in lines)
    if process.returncode != 0:
        raise RuntimeError(f"make demo failed in {folder} (its log: {folder}/demo.log):\n"
                           + "\n".join(line for _, line in lines[-40:]))
    return {"wall_s": wall, "precision": trained_precision(folder), **parse(lines, wall)}


def trained_precision(folder: str) -> str:
    """The precision the Trainer resolved and trained in, from the settings it wrote beside its logs."""
    found = glob.glob(os.path.join(folder, "demo", "pipeline", "**", "trainer_settings.json"), recursive=True)
    if len(found) != 1:
        raise RuntimeError(f"expected one trainer_settings.json under {folder}/demo/pipeline, found {len(found)}")
    with open(found[0]) as f:
        return json.load(f)["training"]["precision"]


def parse(lines, wall: float) -> dict:
    """Stage durations, the Trainer's own figure, test accuracy and the verdict, from the timed lines."""
    starts = {name: next(at for at, line in lines if line.startswith(marker)) for name, marker in STAGES}
    ends = list(starts.values())[1:] + [wall]
    text = "\n".join(line for _, line in lines)
    return {"stages": {name: end - start for (name, start), end in zip(starts.items(), ends)},
            "trainer_s": int(re.search(r"^Trainer +finished in (\d+) s", text, re.M).group(1)),
            "accuracy": float(re.search(r"^test split: \d+ examples, accuracy ([\d.]+)", text, re.M).group(1)),
            "blessed": bool(re.search(r"^BLESSED", text, re.M)),
            "pushed": bool(re.search(r"^pushed to: ", text, re.M))}


def report(results, commit: str, precision=None) -> str:
    title = "# make demo (`bench/demo.py`)" + (f", training.precision {precision}" if precision else "")
    lines = [title, "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU. Commit {commit}, each run on a fresh clone "
             "(bootstrap from uv's local cache), one after another, nothing else running. Seconds from the "
             "first line of each stage to the next; the Trainer's figure is the pipeline's own.", "",
             "| run | started (UTC) | make demo s | " + " | ".join(f"{name} s" for name, _ in STAGES)
             + " | Trainer s | trained in | test accuracy | blessed and pushed |",
             "|---|---|---:|" + "---:|" * len(STAGES) + "---:|---|---:|---|"]
    for index, result in enumerate(results, start=1):
        stages = " | ".join(f"{result['stages'][name]:.0f}" for name, _ in STAGES)
        lines.append(f"| {index} | {result['started']} | {result['wall_s']:.0f} | {stages} | {result['trainer_s']} | "
                     f"{result['precision']} | {result['accuracy']:.3f} | {'yes' if result['blessed'] and result['pushed'] else 'no'} |")
    walls = [result["wall_s"] for result in results]
    accurate = sum(result["accuracy"] >= TARGET_ACCURACY for result in results)
    lines += ["", f"- make demo: **{min(walls):.0f}-{max(walls):.0f} s**, median {sorted(walls)[len(walls) // 2]:.0f} s "
              f"(target: every run <= {TARGET_SECONDS} s)",
              f"- test accuracy >= {TARGET_ACCURACY}: **{accurate} of {len(results)}** runs "
              f"(target: {TARGET_RUNS_ACCURATE} of 5)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    parser.add_argument("--precision", help="training.precision for the demo's cxr run (default: the preset's)")
    parser.add_argument("--keep", help="a folder to keep the clones and their logs in")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    base = args.keep or tempfile.mkdtemp(prefix="cxr-demo-bench-")
    results = []
    for index in range(1, args.runs + 1):
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        result = {"started": started, **run_demo(os.path.join(base, f"run{index}"), args.precision)}
        results.append(result)
        print(f"run {index}: {result['wall_s']:.0f} s, accuracy {result['accuracy']:.3f}", file=sys.stderr, flush=True)
    text = report(results, commit, args.precision)
    print(text)
    if args.write:
        write_section(args.write, text)
    if not args.keep:
        subprocess.run(["rm", "-rf", base], check=True)


if __name__ == "__main__":
    main()
