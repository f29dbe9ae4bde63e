"""`cxr feedback`: images the served model received, once a person confirmed their labels, as a new span.

The pipeline trains on one span (the latest), so the new span is the one it extends: its records,
copied as they are, and one shard more with the confirmed images (source `served`). Each image is
probed as ingestion probes (unreadable ones are quarantined), and de-duplicated against the span's
images and each other as ingestion de-duplicates (sha256, then both perceptual hashes): a copy with
the same label is a duplicate, with another label a conflict, and neither is written. Every labelled
image ends in one outcome, listed in the manifest's `feedback` section. The span is published with
the ingestion's own span publishing (its lock, staging folder and publish step, span_output.py).
"""
import csv
import datetime
import hashlib
import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from cxr import contract
from cxr.contract import CONFLICT, DUPLICATE, LABELS, MANIFEST, QUARANTINED, SHARD_SUFFIX, WRITTEN
from cxr.dataprep import records
from cxr.dataprep.build import read_manifest
from cxr.dataprep.dedup import Candidate, is_duplicate
from cxr.dataprep.layouts import SeenFile
from cxr.dataprep.probe import ImageFacts, probe
from cxr.dataprep.span_output import discard, publish, span_lock, staging_dir

FEEDBACK_SHARD = "feedback"
LABEL_COLUMNS = ("sha256", "label")  # and optionally patient_id


class FeedbackError(ValueError):
    """The labels or the images cannot make a span; nothing was written."""


class Confirmed(NamedTuple):
    sha256: str
    label: str
    patient_id: str
    image: bytes
    file: str


def read_labels(path: str) -> List[Tuple[str, str, str]]:
    """(sha256, label, patient id or '') per row of a CSV with the columns sha256,label[,patient_id]."""
    with tf.io.gfile.GFile(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise FeedbackError(f"{path}: no rows (expected the columns {','.join(LABEL_COLUMNS)}[,patient_id])")
    missing = [column for column in LABEL_COLUMNS if column not in rows[0]]
    if missing:
        raise FeedbackError(f"{path}: no column {', '.join(missing)} (expected {','.join(LABEL_COLUMNS)}[,patient_id])")
    labels: Dict[str, Tuple[str, str, str]] = {}
    for line, row in enumerate(rows, start=2):
        sha, label = row["sha256"].strip().lower(), row["label"].strip()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise FeedbackError(f"{path} line {line}: sha256 {row['sha256']!r} is not 64 hex digits")
        if label not in LABELS:
            raise FeedbackError(f"{path} line {line}: label {label!r} is not one of {', '.join(LABELS)}")
        if sha in labels and labels[sha][1] != label:
            raise FeedbackError(f"{path} line {line}: {sha} is labelled {labels[sha][1]} earlier and {label} here")
        labels[sha] = (sha, label, (row.get("patient_id") or "").strip())
    return list(labels.values())


def find_images(labels: Sequence[Tuple[str, str, str]], images_dir: str) -> List[Confirmed]:
    """The labelled images among the files of images_dir (cxr monitor's queue/), found by their bytes' sha256."""
    by_sha = {}
    for name in sorted(tf.io.gfile.listdir(images_dir)):
        path = os.path.join(images_dir, name)
        if name.endswith(".csv") or tf.io.gfile.isdir(path):
            continue
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        by_sha.setdefault(hashlib.sha256(data).hexdigest(), (name, data))
    missing = [sha for sha, _, _ in labels if sha not in by_sha]
    if missing:
        raise FeedbackError(f"{len(missing)} labelled images are not in {images_dir}: {', '.join(missing[:5])}"
                            + (" ..." if len(missing) > 5 else ""))
    return [Confirmed(sha, label, patient_id or f"served-{sha[:16]}", by_sha[sha][1], by_sha[sha][0])
            for sha, label, patient_id in labels]


def latest_span(tfrecords_dir: str) -> int:
    """The highest span under tfrecords_dir that was published whole (its manifest is written last)."""
    folders = [os.path.basename(os.path.dirname(path))
               for path in tf.io.gfile.glob(f"{tfrecords_dir.rstrip('/')}/span-*/{MANIFEST}")]
    spans = [int(folder[len("span-"):]) for folder in folders if folder[len("span-"):].isdigit()]
    if not spans:
        raise FeedbackError(f"no published span under {tfrecords_dir} (expected span-N/{MANIFEST}): "
                            f"feedback extends a span that cxr build-tfrecords wrote")
    return max(spans)


def write_feedback_span(confirmed: Sequence[Confirmed], tfrecords_dir: str, from_span: int, span: int,
                        near_duplicate_max_distance: Optional[int] = None) -> dict:
    """Publishes span `span`: span `from_span`'s records and the confirmed images that are new. Returns its manifest.

    The images are judged with the settings span `from_span` was built with, as its manifest records them
    (the near-duplicate distance, the pixel limit); a distance given here replaces the recorded one."""
    source_dir = contract.span_dir(tfrecords_dir, from_span)
    manifest = read_manifest(source_dir)
    max_pixels = _recorded(manifest, "max_pixels", source_dir)
    if near_duplicate_max_distance is None:
        near_duplicate_max_distance = _recorded(manifest, "near_duplicate_max_distance", source_dir)
    shards = sorted(tf.io.gfile.glob(f"{source_dir}/*{SHARD_SUFFIX}"))
    existing = _existing_candidates(shards, max_pixels)
    outcomes, kept = _judge(confirmed, existing, near_duplicate_max_distance, max_pixels)
    with span_lock(tfrecords_dir, span):
        span_dir = contract.span_dir(tfrecords_dir, span)
        if tf.io.gfile.exists(span_dir):
            raise FeedbackError(f"{span_dir} already exists: give a new --span")
        staging = staging_dir(tfrecords_dir, span)
        try:
            for shard in shards:
                tf.io.gfile.copy(shard, f"{staging}/{os.path.basename(shard)}")
            _write_shard(kept, f"{staging}/{FEEDBACK_SHARD}-00000-of-00001{SHARD_SUFFIX}")
            new_manifest = _manifest(manifest, from_span, span, outcomes, kept)
            with tf.io.gfile.GFile(f"{staging}/{MANIFEST}", "w") as f:
                json.dump(new_manifest, f, indent=1)
            publish(staging, span_dir, overwrite=False)
        except BaseException:
            discard(staging)
            raise
    return new_manifest


def _recorded(manifest: dict, setting: str, span_dir: str) -> int:
    if not isinstance(manifest.get(setting), int):
        raise FeedbackError(f"{span_dir}/{MANIFEST} records no {setting} (an integer expected): the span was not "
                            f"written by cxr build-tfrecords or cxr feedback")
    return manifest[setting]


def _existing_candidates(shards: Sequence[str], max_pixels: int) -> List[Candidate]:
    """The span's images as ingestion describes them (records keep only the 64-bit hash; both are needed)."""
    spec = {contract.IMAGE: tf.io.FixedLenFeature([], tf.string), contract.LABEL: tf.io.FixedLenFeature([], tf.string),
            contract.SOURCE: tf.io.FixedLenFeature([], tf.string), contract.FILE: tf.io.FixedLenFeature([], tf.string)}
    found = []
    for record in tf.data.TFRecordDataset(list(shards), compression_type="GZIP"):
        example = {name: value.numpy() for name, value in tf.io.parse_single_example(record, spec).items()}
        facts = probe(example[contract.IMAGE], max_pixels)
        if isinstance(facts, ImageFacts):
            seen = SeenFile(example[contract.SOURCE].decode(), "", example[contract.FILE].decode(), 0, "", "", "")
            found.append(Candidate(seen, example[contract.LABEL].decode(), facts))
    return found


def _judge(confirmed: Sequence[Confirmed], existing: List[Candidate], max_distance: int, max_pixels: int):
    outcomes, kept, compared = [], [], list(existing)
    for item in confirmed:
        facts = probe(item.image, max_pixels)
        if isinstance(facts, str):
            outcomes.append({"sha256": item.sha256, "outcome": QUARANTINED, "reason": facts})
            continue
        candidate = Candidate(_seen(item), item.label, facts)
        copy = next((other for other in compared if is_duplicate(candidate.facts, other.facts, max_distance)), None)
        if copy is not None:
            outcomes.append({"sha256": item.sha256, "outcome": DUPLICATE if copy.label == item.label else CONFLICT,
                             "of": f"{copy.seen.source}:{copy.seen.relpath}", "its_label": copy.label})
            continue
        outcomes.append({"sha256": item.sha256, "outcome": WRITTEN, "label": item.label})
        kept.append((candidate, item.image))
        compared.append(candidate)
    return outcomes, kept


def _seen(item: Confirmed) -> SeenFile:
    return SeenFile(contract.SERVED, "", item.file, len(item.image), "", item.sha256, item.patient_id)


def _write_shard(kept, path: str) -> None:
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for candidate, image in kept:
            writer.write(records.to_example(candidate, image).SerializeToString())


def _manifest(previous: dict, from_span: int, span: int, outcomes: List[dict], kept) -> dict:
    manifest = json.loads(json.dumps(previous))
    manifest["span"] = span
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for candidate, _ in kept:
        by_source = manifest["written"].setdefault(candidate.label, {})
        by_source[contract.SERVED] = by_source.get(contract.SERVED, 0) + 1
    counts = {outcome: sum(entry["outcome"] == outcome for entry in outcomes)
              for outcome in (WRITTEN, DUPLICATE, CONFLICT, QUARANTINED)}
    manifest["feedback"] = {"extends_span": from_span, "labelled": len(outcomes), **counts, "images": outcomes}
    return manifest
