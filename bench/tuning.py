"""Benchmark of the Tuner: a tuned demo run against the untuned one, on the same span.

Makes the demo's span as `make demo` does (100 phantoms per class folder), then runs `cxr run --preset demo`
twice on it, each in its own folders (nothing cached between them): once as configured, once with the
Tuner's default search (`tuner.enabled=true`: tuner.max_trials random trials of tuner.epochs_per_trial
epochs over the knobs' default choices). Reports each run's time, its Tuner's and Trainer's time and its
test accuracy, and every trial's values, objective, epochs and time.

    .venv/bin/python bench/tuning.py --write bench/RESULTS.md
    .venv/bin/python bench/tuning.py --set tuner.max_trials=4 --set tuner.epochs_per_trial=3
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
CXR = os.path.join(REPO, ".venv", "bin", "cxr")


def _cxr(*args, ok=(0,)) -> str:
    process = subprocess.run([CXR, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if process.returncode not in ok:
        raise RuntimeError(f"cxr {' '.join(args)} exited {process.returncode}:\n{process.stdout[-4000:]}")
    return process.stdout


def make_span(work: str, per_class: int) -> str:
    raw, tfrecords = os.path.join(work, "raw"), os.path.join(work, "tfrecords")
    _cxr("demo-data", "--out", raw, "--per-class", str(per_class))
    _cxr("build-tfrecords", "--covid-radiography", f"{raw}/covid19-radiography-database", "--curated",
         f"{raw}/curated-cxr", "--nih", f"{raw}/nih-chest-xrays", "--out", tfrecords, "--span", "1", "--overwrite")
    return tfrecords


def run(work: str, name: str, tfrecords: str, overrides) -> dict:
    folder = os.path.join(work, name)
    settings = [f"pipeline_root={folder}/pipeline", f"metadata_path={folder}/metadata.sqlite",
                f"serving_dir={folder}/serving", f"data.tfrecords_dir={tfrecords}", *overrides]
    began = time.monotonic()
    text = _cxr("run", "--preset", "demo", *[part for setting in settings for part in ("--set", setting)], ok=(0, 3))
    wall = time.monotonic() - began
    with open(os.path.join(work, f"{name}.log"), "w") as log:
        log.write(text)
    took = {node: int(seconds) for node, seconds in re.findall(r"^(\w+) +finished in (\d+) s", text, re.M)}
    trials = []
    for path in glob.glob(os.path.join(folder, "pipeline", "Tuner", "tuner_results", "*", "trials.json")):
        with open(path) as f:
            trials = json.load(f)
    return {"name": name, "wall_s": wall, "tuner_s": took.get("Tuner"), "trainer_s": took["Trainer"],
            "accuracy": float(re.search(r"^test split: \d+ examples, accuracy ([\d.]+)", text, re.M).group(1)),
            "blessed": bool(re.search(r"^BLESSED", text, re.M)), "trials": trials,
            "search": (re.search(r"^tuner: (.*)$", text, re.M) or [None, None])[1]}


STUDY_TRAIN, STUDY_EVAL = 4800, 600  # the study's 6,000 images split 8 / 1 / 1


def study_step_rates(steps: int = 3) -> dict:
    """{width multiplier: training images/s} of the study's model at 224 px, batch 16, on this machine's CPU:
    one batch held in memory, after a first step that traces."""
    import numpy as np
    import tensorflow as tf
    from cxr.components.model import build_model
    from cxr.components.settings import KNOBS, TrainerSettings
    from cxr.pipeline.config import PRESETS
    study = PRESETS["study"].trainer_settings()
    rates = {}
    for width in KNOBS["width_multiplier"].choices:
        settings: TrainerSettings = KNOBS["width_multiplier"].apply(study, width)
        model = build_model(settings.model, settings.training)
        images = tf.constant(np.random.default_rng(0).integers(0, 255, (16, 224, 224, 1), dtype=np.uint8))
        labels = tf.constant(np.arange(16) % 4)
        model.train_on_batch({"image": images}, labels)
        began = time.monotonic()
        for _ in range(steps):
            model.train_on_batch({"image": images}, labels)
        rates[width] = 16 * steps / (time.monotonic() - began)
    return rates


def study_lines(rates: dict, epochs: int, trials: int) -> list:
    lines = ["", f"Study size on this CPU (224 px, batch 16, one batch in memory, {len(rates)} widths measured, "
             "the rest worked out): a trial of "
             f"{epochs} epochs trains {STUDY_TRAIN * epochs:,} images and validates {STUDY_EVAL * epochs:,} "
             "(at about 3x the training rate):", "",
             "| width_multiplier | training images/s | one trial (h) | "
             f"{trials} trials (h) |", "|---:|---:|---:|---:|"]
    for width, rate in rates.items():
        hours = epochs * (STUDY_TRAIN / rate + STUDY_EVAL / (3 * rate)) / 3600
        lines.append(f"| {width} | {rate:.1f} | {hours:.1f} | {hours * trials:.0f} |")
    return lines


def report(runs, overrides, commit: str, study: list = ()) -> str:
    lines = ["# Tuning (`bench/tuning.py`)", "",
             f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU. Commit {commit}, "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. `make demo`'s span (100 phantoms "
             "per class folder), `cxr run --preset demo` twice on it in separate folders (nothing cached between "
             f"them); the tuned run adds {', '.join(f'`{o}`' for o in overrides)}.", "",
             "| run | cxr run s | Tuner s | Trainer s | test accuracy | blessed |", "|---|---:|---:|---:|---:|---|"]
    for result in runs:
        lines.append(f"| {result['name']} | {result['wall_s']:.0f} | {result['tuner_s'] or '-'} | "
                     f"{result['trainer_s']} | {result['accuracy']:.3f} | {'yes' if result['blessed'] else 'no'} |")
    tuned = runs[-1]
    if tuned["trials"]:
        knobs = list(tuned["trials"][0]["values"])
        lines += ["", f"The tuned run's search: {tuned['search']}.", "",
                  "| trial | status | val_loss | epochs | s | " + " | ".join(knobs) + " |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(knobs)]
        for trial in tuned["trials"]:
            objective = f"{trial['objective']:.4f}" if trial["objective"] is not None else "-"
            lines.append(f"| {trial['trial_id']}{' (best)' if trial['best'] else ''} | {trial['status']} | "
                         f"{objective} | {trial['epochs']} | {trial['seconds']:.0f} | "
                         + " | ".join(str(trial["values"][k]) for k in knobs) + " |")
        seconds = [trial["seconds"] for trial in tuned["trials"]]
        lines += ["", f"- trials: {len(seconds)}, {min(seconds):.0f}-{max(seconds):.0f} s each, "
                  f"{sum(seconds):.0f} s in all; the Tuner task {tuned['tuner_s']} s"]
    return "\n".join([*lines, *study]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="a further setting of the tuned run (section.field=value)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--work", help="a folder to keep the runs in (default: a temporary one)")
    parser.add_argument("--no-baseline", action="store_true", help="run the tuned run only (no untuned run)")
    parser.add_argument("--write", help="replace this section of a results file (bench/RESULTS.md)")
    args = parser.parse_args()
    overrides = ["tuner.enabled=true", *args.overrides]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="cxr-tuning-") as scratch:
        work = args.work or scratch
        os.makedirs(work, exist_ok=True)
        tfrecords = make_span(work, args.per_class)
        runs = [] if args.no_baseline else [run(work, "untuned", tfrecords, [])]
        runs.append(run(work, "tuned", tfrecords, overrides))
    tuned = runs[-1]["trials"]
    epochs = max((trial["epoch_budget"] for trial in tuned), default=5)
    text = report(runs, overrides, commit, study_lines(study_step_rates(), epochs, len(tuned) or 10))
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
