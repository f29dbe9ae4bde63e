"""cxr monitor: the logged requests of a time span, cut into windows, each judged against the training
split as the model version that answered it saw it, and against the window before.

Writes into its output folder monitoring.json (every distance, threshold and alarm), index.html
(monitoring/page.py), and queue/ (the images to label: outlying or uncertain, with queue.csv).
"""
import csv
import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from cxr import contract
from cxr.monitoring import compare, features, page
from cxr.monitoring.features import Described, Received
from cxr.monitoring.settings import MonitoringSettings
from cxr.serving import request_log

MONITORING_JSON = "monitoring.json"
PAGE = "index.html"
QUEUE_DIR = "queue"
QUEUE_CSV = "queue.csv"
QUEUE_COLUMNS = ("sha256", "file", "time", "version", "predicted_class", "top_probability", "distance", "reason")
UNCERTAIN, OUTLYING = "uncertain", "outlying"


@dataclasses.dataclass(frozen=True)
class VersionSources:
    """What one served version is compared with: its training split and, where the pipeline recorded it, the
    ServingCheck's answers on its test split (contract.SERVING_CHECK_ANSWERS_FILE)."""
    training_files: Sequence[str]
    test_answers: Optional[str] = None
    origin: str = ""  # where they were found, for the reader: "pipeline run <id>", "--training"


@dataclasses.dataclass
class Reference:
    """The training split as one model version sees it, and its answers on the test split."""
    version: int
    described: Described
    statistics: object
    schema: object
    embedding: compare.Embedding
    test_answers: Optional[object] = None  # TFDV statistics of the ServingCheck's answers


def monitor(model_base_path: str, sources: Callable[[int], VersionSources], since: float, until: float,
            settings: MonitoringSettings, out_dir: str, seed: int = 0) -> dict:
    """The log under settings.logs_root from `since` to `until`, in windows of settings.window_s, judged against
    each version under model_base_path that answered; sources(version): where that version's training split
    and test answers are."""
    logs_root, window_s = settings.logs_root, settings.window_s
    if not logs_root:
        raise ValueError("no request log: give --logs or set monitoring.logs_root")
    if until <= since or window_s <= 0:
        raise ValueError(f"--until must be after --since and the window positive (got {since}..{until}, {window_s} s)")
    unreadable: List[str] = []
    rng = np.random.default_rng(seed)
    received, logged = sample_windows(features.iter_received(request_log.iter_logs(
        _log_files(logs_root, since), unreadable)), since, until, window_s, settings.max_window_images, rng)
    result = {"logs": logs_root, "since": since, "until": until, "window_s": window_s,
              "settings": dataclasses.asdict(settings), "logged_images": sum(logged.values()),
              "unreadable_log_files": unreadable, "versions": {}, "windows": []}
    queued: List[dict] = []
    shown: page.Shown = {}
    for version in sorted({item.version for item in received}):
        model_dir = os.path.join(model_base_path, str(version))
        if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
            raise ValueError(f"version {version} answered logged requests, but {model_dir} holds no SavedModel: "
                             f"give the folder the served versions are pushed to with --model_base_path")
        model = tf.saved_model.load(model_dir)  # once: its embed and explain signatures both serve below
        embed = features.saved_model_embedder(model)
        found = sources(version)
        reference = describe_reference(version, found, embed, settings)
        result["versions"][str(version)] = {
            "model": model_dir, "from": found.origin, "training_files": list(found.training_files),
            "training_images": len(reference.described), "training_unreadable": reference.described.unreadable,
            "test_answers": found.test_answers, "outlier_distance": reference.embedding.outlier_distance}
        mine = [item for item in received if item.version == version]
        windows, queue = judge_windows(mine, reference, embed, since, until, window_s, settings, rng, logged)
        result["windows"] += windows
        queued += queue
        shown.update(_explained(windows, mine, model))
    result["alarm"] = any(window["alarm"] for window in result["windows"])
    write_outputs(result, queued, shown, out_dir, settings.retention_days)
    return result


def window_index(time_: float, since: float, window_s: float) -> int:
    """The window [since + k * window_s, since + (k + 1) * window_s) holding time_, as judge_windows cuts them."""
    index = int((time_ - since) // window_s)
    if time_ < since + index * window_s:
        index -= 1
    elif time_ >= since + (index + 1) * window_s:
        index += 1
    return index


def sample_windows(items: Iterable[Received], since: float, until: float, window_s: float, limit: int,
                   rng: np.random.Generator):
    """The logged images of [since, until) read once, as they stream: per (version, window), all of them up to
    `limit`, past it a uniform sample of `limit` (reservoir sampling), so memory holds at most `limit` images a
    window whatever the traffic. Returns the kept images, oldest first, and {(version, window index): images
    logged}."""
    kept: Dict[tuple, List[Received]] = {}
    logged: Dict[tuple, int] = {}
    for item in items:
        if not since <= item.time < until:
            continue
        key = (item.version, window_index(item.time, since, window_s))
        seen = logged.get(key, 0)
        logged[key] = seen + 1
        sample = kept.setdefault(key, [])
        if seen < limit:
            sample.append(item)
        else:
            slot = rng.integers(seen + 1)
            if slot < limit:
                sample[slot] = item
    return sorted((item for sample in kept.values() for item in sample), key=lambda item: item.time), logged


def _explained(windows: List[dict], received: Sequence[Received], model) -> page.Shown:
    """The outlying images shown on the page, with the Grad-CAM of the version that answered them."""
    wanted = {outlier["sha256"] for window in windows for outlier in window["outliers"]}
    images = {_sha256(item.image): item.image for item in received if _sha256(item.image) in wanted}
    if not images:
        return {}
    explain = model.signatures[contract.EXPLAIN_SIGNATURE]
    heatmaps = explain(**{contract.IMAGES_INPUT: tf.constant(list(images.values()), tf.string)})[contract.HEATMAP]
    return {sha: (image, heatmap) for (sha, image), heatmap in zip(images.items(), heatmaps.numpy())}


def _log_files(root: str, since: float) -> List[str]:
    """The log files that can hold requests from `since` on: each file covers at most the hour it starts in."""
    return [path for path in request_log.log_files(root)
            if (request_log.file_time(path) or since) >= since - 3600]


def describe_reference(version: int, sources: VersionSources, embed, settings: MonitoringSettings) -> Reference:
    training = features.received_from_examples(sources.training_files, settings.max_training_images)
    if not training:
        raise ValueError(f"version {version}: no training images in {list(sources.training_files)[:4]} "
                         f"({sources.origin})")
    test_answers = None
    if sources.test_answers:
        test_answers = compare.statistics(features.answers_table(features.read_test_answers(sources.test_answers)))
    return reference_of(version, features.describe(training, embed), settings, test_answers)


def reference_of(version: int, described: Described, settings: MonitoringSettings, test_answers=None) -> Reference:
    table = described.table.assign(**{contract.LABEL: [item.label for item in described.received]})
    statistics = compare.statistics(table)
    return Reference(version, described, statistics, compare.reference_schema(statistics, settings),
                     compare.fit_embedding(described.embeddings, settings), test_answers)


def judge_windows(received: Sequence[Received], reference: Reference, embed, since: float, until: float,
                  window_s: float, settings: MonitoringSettings, rng: np.random.Generator,
                  logged: Optional[Dict[tuple, int]] = None):
    """`logged`: {(version, window index): images logged} when `received` is a sample (sample_windows)."""
    windows, queue, previous = [], [], None
    index = 0
    while since + index * window_s < until:
        start, end = since + index * window_s, min(since + (index + 1) * window_s, until)
        inside = [item for item in received if start <= item.time < end]
        count = len(inside) if logged is None else logged.get((reference.version, index), 0)
        window = {"version": reference.version, "start": start, "end": end, "images": count,
                  "sampled": len(inside),
                  "judged": False, "alarm": False, "findings": [], "unreadable": [], "outliers": []}
        if inside:
            described = features.describe(inside, embed)
            window_statistics = compare.statistics(described.table)
            window.update(judge(described, window_statistics, previous, reference, settings, rng))
            queue += _to_label(described, reference, settings)
            window["outliers"] = _most_outlying(described, reference, settings.outliers_shown)
            previous = window_statistics
        windows.append(window)
        index += 1
    return windows, queue


def judge(described: Described, window_statistics, previous, reference: Reference,
          settings: MonitoringSettings, rng: np.random.Generator) -> dict:
    """One window's findings against the reference (and the previous window's statistics, if any)."""
    findings = (compare.skew(reference.statistics, window_statistics, reference.schema)
                + compare.drift(window_statistics, previous, reference.schema))
    if reference.test_answers is not None:
        findings += compare.against_test_answers(reference.test_answers, window_statistics, reference.schema,
                                                 settings)
    if len(described):
        findings.append(compare.mmd_test(reference.embedding.project(reference.described.embeddings),
                                         reference.embedding.project(described.embeddings), settings, rng))
    judged = len(described) >= settings.min_window_images
    return {"judged": judged, "alarm": judged and any(finding.alarm for finding in findings),
            "too_small": None if judged else
            f"{len(described)} images, fewer than monitoring.min_window_images ({settings.min_window_images})",
            "findings": [compare.as_dict(finding) for finding in findings], "unreadable": described.unreadable,
            "class_shares": _class_shares(described)}


def _class_shares(described: Described) -> Dict[str, float]:
    counts = described.table[features.PREDICTED_CLASS].value_counts()
    return {label: float(counts.get(label, 0)) / len(described) for label in contract.LABELS}


def _to_label(described: Described, reference: Reference, settings: MonitoringSettings) -> List[dict]:
    distances = reference.embedding.distance(described.embeddings)
    queued = []
    for item, (_, row), distance in zip(described.received, described.table.iterrows(), distances):
        reasons = ([UNCERTAIN] if row[features.TOP_PROBABILITY] < settings.uncertain_below else []) \
            + ([OUTLYING] if distance > reference.embedding.outlier_distance else [])
        if reasons:
            queued.append({"item": item, "predicted_class": row[features.PREDICTED_CLASS],
                           "top_probability": float(row[features.TOP_PROBABILITY]), "distance": float(distance),
                           "reason": "+".join(reasons)})
    return queued


def _most_outlying(described: Described, reference: Reference, shown: int) -> List[dict]:
    distances = reference.embedding.distance(described.embeddings)
    order = np.argsort(-distances)[:shown]
    return [{"index": int(i), "sha256": _sha256(described.received[i].image), "distance": float(distances[i]),
             "predicted_class": described.table[features.PREDICTED_CLASS].iloc[i],
             "top_probability": float(described.table[features.TOP_PROBABILITY].iloc[i])} for i in order]


def write_outputs(result: dict, queued: List[dict], shown: page.Shown, out_dir: str,
                  retention_days: float = MonitoringSettings.retention_days) -> None:
    """monitoring.json, the page and queue/ (patient images: on a local disk folders 0700, files 0600); queued
    images older than retention_days go first."""
    queue_dir = os.path.join(out_dir, QUEUE_DIR)
    _private_folder(out_dir)
    _private_folder(queue_dir)
    result["removed_by_retention"] = prune_old_files(queue_dir, retention_days)
    rows = []
    for entry in queued:
        item: Received = entry["item"]
        sha = _sha256(item.image)
        name = f"{sha}.{'png' if item.image.startswith(contract.PNG_SIGNATURE) else 'jpg'}"
        with tf.io.gfile.GFile(os.path.join(queue_dir, name), "wb") as f:
            f.write(item.image)
        _owner_only(os.path.join(queue_dir, name))
        rows.append({"sha256": sha, "file": name, "time": item.time, "version": item.version,
                     **{key: entry[key] for key in ("predicted_class", "top_probability", "distance", "reason")}})
    with tf.io.gfile.GFile(os.path.join(out_dir, QUEUE_DIR, QUEUE_CSV), "w") as f:
        writer = csv.DictWriter(f, QUEUE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    result["queued_for_labelling"] = len(rows)
    with tf.io.gfile.GFile(os.path.join(out_dir, MONITORING_JSON), "w") as f:
        json.dump(result, f, indent=1, default=_plain)
    with tf.io.gfile.GFile(os.path.join(out_dir, PAGE), "w") as f:
        f.write(page.render(result, shown))
    _owner_only(os.path.join(out_dir, PAGE))


def prune_old_files(folder: str, retention_days: float, now: Optional[float] = None) -> int:
    """Removes the files under folder last written more than retention_days ago; how many."""
    if not tf.io.gfile.exists(folder):
        return 0
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    removed = 0
    for root, _, names in tf.io.gfile.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if tf.io.gfile.stat(path).mtime_nsec / 1e9 < cutoff:
                tf.io.gfile.remove(path)
                removed += 1
    return removed


def _private_folder(path: str) -> None:
    tf.io.gfile.makedirs(path)
    if "://" not in path:
        os.chmod(path, 0o700)


def _owner_only(path: str) -> None:
    if "://" not in path:
        os.chmod(path, 0o600)


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)



def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
