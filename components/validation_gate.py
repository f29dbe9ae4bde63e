"""A gate after ExampleValidator: it stops the run before Transform when the data cannot be trained on.

- The span must be complete: its `manifest.json`, which `cxr build-tfrecords` publishes last
  (dataprep/span_output.py), must be there; a span still being copied to a bucket is
  not trained on.
- Every split must hold examples of every class, or the model cannot be trained or judged on it.
- ExampleValidator only records anomalies; a run would go on to train on the bad data. The gate
  fails with a readable list (split, feature, what is wrong), unless the configuration says to
  proceed anyway.
"""
from typing import List

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils

from cxr.components import artifacts
from cxr.components.settings import ValidationSettings, from_json
from cxr.contract import LABEL, LABELS, MANIFEST, span_dir


class DataAnomaliesError(RuntimeError):
    """The examples do not match the schema."""


class UnusableSpanError(RuntimeError):
    """The span is incomplete, or a split lacks a class."""


def span_problems(examples, tfrecords_dir: str) -> List[str]:
    span = examples.get_int_custom_property("span")  # where ExampleGen records it
    manifest = f"{span_dir(tfrecords_dir, span)}/{MANIFEST}"
    if not tf.io.gfile.exists(manifest):
        return [f"span {span} has no {manifest}: it is incomplete (still being written or copied, or its "
                f"build failed); cxr build-tfrecords writes the manifest last"]
    return []


def missing_classes(statistics) -> List[str]:
    """'split test has no example of COVID' for each split and class without examples."""
    problems = []
    for split in artifact_utils.decode_split_names(statistics.split_names):
        stats = artifacts.load_statistics(statistics.uri, split)
        counts = {bucket.label: bucket.sample_count for feature in stats.datasets[0].features
                  if feature.path.step == [LABEL] for bucket in feature.string_stats.rank_histogram.buckets}
        problems += [f"split {split} has no example of {label}" for label in LABELS if not counts.get(label)]
    return problems


def describe_anomalies(anomalies_artifact) -> List[str]:
    """One line per anomaly: 'split train: feature 'label': <description>'."""
    lines = []
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        anomalies = artifacts.load_anomalies(anomalies_artifact.uri, split)
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"split {split}: feature {feature!r}: {info.description or info.short_description}")
        if anomalies.HasField("dataset_anomaly_info"):
            lines.append(f"split {split}: dataset: {anomalies.dataset_anomaly_info.description}")
    return lines


@tfx.dsl.components.component
def ValidationGate(anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
                   statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
                   examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
                   settings: tfx.dsl.components.Parameter[str],
                   tfrecords_dir: tfx.dsl.components.Parameter[str],
                   code_fingerprint: tfx.dsl.components.Parameter[str],
                   ) -> tfx.dsl.components.OutputDict(anomaly_count=int):
    """settings: `to_json(ValidationSettings)`; code_fingerprint only keys the cache (pipeline/fingerprint.py)."""
    validation = from_json(ValidationSettings, settings, "validation")
    unusable = span_problems(examples, tfrecords_dir) + missing_classes(statistics)
    if unusable:
        raise UnusableSpanError("the span cannot be trained on, so the run stops before Transform:\n  "
                                + "\n  ".join(unusable))
    found = describe_anomalies(anomalies)
    if found and validation.stop_on_anomalies:
        raise DataAnomaliesError(
            "the examples do not match the schema, so the run stops before Transform "
            "(set validation.stop_on_anomalies: false to go on anyway):\n  " + "\n  ".join(found))
    return {"anomaly_count": len(found)}
