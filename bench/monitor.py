"""Calibration of cxr monitor's thresholds: how often each check raises an alarm on windows where nothing
shifted (its false-alarm rate), and how often it finds a window that did.

The training split is described once by the model (monitoring/features.py). Each repeat draws half of it
as the reference and cuts the other half into windows: data like training, so every alarm there is false.
The model's answers on the test split (what the ServingCheck records) are the answers check's reference.
The same windows shifted (monitoring/shifts.py: inverted, dimmed, screen photos) must raise alarms.

    .venv/bin/python bench/monitor.py --write bench/RESULTS.md   # after make demo (the demo's model and split)
"""
import argparse
import collections
import datetime
import glob
import os
import platform
import sys
import time

import numpy as np

from measure import write_section

from cxr.monitoring import compare, features, monitor, shifts
from cxr.monitoring.settings import MonitoringSettings


def _latest(pattern: str) -> str:
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise SystemExit(f"nothing matches {pattern}: run make demo first")
    return found[-1]


def calibrate(model_dir, training_files, test_files, window, repeats, settings, seed=0):
    rng = np.random.default_rng(seed)
    embed = features.saved_model_embedder(model_dir)
    described = features.describe(features.received_from_examples(training_files), embed)
    test = features.describe(features.received_from_examples(test_files), embed)
    test_answers = compare.statistics(test.table[list(features.ANSWER)])
    half = len(described) // 2
    if half < window:
        raise SystemExit(f"{len(described)} training images: too few for windows of {window} beside a reference")
    outcomes = collections.defaultdict(list)  # (shifted?, check) -> alarms per window
    distances = collections.defaultdict(list)  # (check, feature) -> distances on unshifted windows
    for _ in range(repeats):
        order = rng.permutation(len(described))
        reference = monitor.reference_of(0, described.subset(order[:half]), settings, test_answers)
        previous = None
        for start in range(half, len(described) - window + 1, window):
            plain = described.subset(order[start:start + window])
            plain_statistics = compare.statistics(plain.table)
            _record(outcomes, distances, "none",
                    monitor.judge(plain, plain_statistics, previous, reference, settings, rng))
            for kind, shift in shifts.SHIFTS.items():
                moved = features.describe([features.Received(shift(item.image)) for item in plain.received], embed)
                _record(outcomes, None, kind, monitor.judge(moved, compare.statistics(moved.table), plain_statistics,
                                                            reference, settings, rng))
            previous = plain_statistics
    return (len(described), len(test)), outcomes, distances


CHECKS = (compare.SKEW, compare.ANSWERS, compare.DRIFT, compare.SCHEMA, compare.EMBEDDING)


def _record(outcomes, distances, shift, judged):
    outcomes[(shift, "any")].append(judged["alarm"])
    for check in CHECKS:
        outcomes[(shift, check)].append(any(f["alarm"] for f in judged["findings"] if f["check"] == check))
    if distances is not None:
        for f in judged["findings"]:
            if f["distance"] is not None:
                distances[(f["check"], f["feature"])].append(f["distance"] if f["check"] != compare.EMBEDDING
                                                              else f["p_value"])


def report(images, outcomes, distances, window, repeats, seed, settings, model_dir, seconds) -> str:
    kinds = ["none"] + list(shifts.SHIFTS)
    lines = ["# Monitoring: false alarms and detections", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
             f"`bench/monitor.py --window {window} --repeats {repeats} --seed {seed}` ({seconds:.0f} s), model {model_dir}, "
             f"{images[0]} training images: each repeat takes half as the reference and cuts the other half into "
             f"windows of {window} (drift: against the unshifted window before; answers: against the model's on "
             f"the {images[1]} test images). Thresholds as configured: skew "
             f"{settings.skew_categorical_threshold} (categorical, L-inf) and {settings.skew_numeric_threshold} "
             f"(numeric, Jensen-Shannon), answers {settings.answers_categorical_threshold} and "
             f"{settings.answers_numeric_threshold}, drift {settings.drift_categorical_threshold} and "
             f"{settings.drift_numeric_threshold}, MMD p-value {settings.mmd_p_value}.", "",
             "Share of windows with an alarm (\"none\": unshifted, so every alarm is false):", "",
             "| check | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for check in ("any",) + CHECKS:
        cells = [f"{np.mean(outcomes[(kind, check)]):.2f} ({len(outcomes[(kind, check)])})" for kind in kinds]
        lines.append(f"| {check} | " + " | ".join(cells) + " |")
    lines += ["", "Distances on unshifted windows (median / 99th percentile / max; the embedding's: its p-value, "
              "min instead of max):", "", "| check | feature | median | p99 | extreme |", "|---|---|---|---|---|"]
    for (check, feature), values in sorted(distances.items()):
        values = np.asarray(values)
        extreme = values.min() if check == compare.EMBEDDING else values.max()
        lines.append(f"| {check} | {feature} | {np.median(values):.3f} | {np.quantile(values, 0.99):.3f} | "
                     f"{extreme:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported model version (default: the demo's latest push)")
    parser.add_argument("--training", help="glob of the raw training split (default: the demo's latest); the test "
                                           "split is its Split-test")
    parser.add_argument("--window", type=int, default=MonitoringSettings().min_window_images)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1,
                        help="the draws (the thresholds' defaults were chosen on seed 0's: measure on another)")
    parser.add_argument("--write", help="Markdown file whose section of these results to replace")
    args = parser.parse_args()
    model_dir = args.model or _latest("demo/serving/cxr/*")
    split = args.training or os.path.join(_latest("demo/pipeline/ImportExampleGen/examples/*"), "Split-train", "*")
    settings = MonitoringSettings()
    began = time.monotonic()
    test_split = split.replace("Split-train", "Split-test")
    images, outcomes, distances = calibrate(model_dir, sorted(glob.glob(split)), sorted(glob.glob(test_split)),
                                            args.window, args.repeats, settings, args.seed)
    text = report(images, outcomes, distances, args.window, args.repeats, args.seed, settings, model_dir,
                  time.monotonic() - began)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    sys.exit(main())
