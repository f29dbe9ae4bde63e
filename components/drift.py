"""DriftCheck: compares this span's statistics with the last accepted span's, with TFDV's drift comparators.

ExampleValidator checks one span against the schema; a span can fit the schema
and still differ from the last one (a site stops sending one class, a new
scanner changes image sizes). The comparators:
- L-infinity distance for the categorical `label`, `source` and `format`, and the acquisition's
  `view_position`, `modality`, `manufacturer` and `manufacturer_model` (a new scanner, a flood of AP films);
- Jensen-Shannon divergence for the numeric image statistics the ingestion
  records: `height`, `width`, `channels`, `bit_depth`, `bits_stored`.
Per configuration the run warns (the result is recorded on the output artifact
and in the run summary) or stops before training.

The baseline is kept in `baseline_dir` (under the pipeline root by default):
the training split's statistics of the last span that passed this check. A
Resolver over past ExampleStatistics would be the MLMD way, but TFX 1.16's
LatestArtifactStrategy fails the resolver node when there is nothing yet (the
first run) and Kubeflow's compiler accepts no other strategy.
"""
import os
from typing import List

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

from cxr import contract
from cxr.comparators import DRIFT, is_comparator_finding, set_comparator
from cxr.components import artifacts
from cxr.components.settings import DriftSettings, from_json

CATEGORICAL_FEATURES = (contract.LABEL, contract.SOURCE, contract.FORMAT, contract.VIEW_POSITION, contract.MODALITY,
                        contract.MANUFACTURER, contract.MANUFACTURER_MODEL)
NUMERIC_FEATURES = (contract.HEIGHT, contract.WIDTH, contract.CHANNELS, contract.BIT_DEPTH, contract.BITS_STORED)
COMPARED_SPLIT = contract.TRAIN
BASELINE_SPAN_FILE = "span"  # beside the statistics


class DataDriftError(RuntimeError):
    """The span differs from the previous one beyond the configured thresholds."""


def drift_schema(schema, categorical_threshold: float, numeric_threshold: float):
    """A copy of the schema with a drift comparator on each compared feature."""
    with_comparators = type(schema)()
    with_comparators.CopyFrom(schema)
    for name in CATEGORICAL_FEATURES:
        set_comparator(tfdv.get_feature(with_comparators, name), DRIFT, True, categorical_threshold)
    for name in NUMERIC_FEATURES:
        set_comparator(tfdv.get_feature(with_comparators, name), DRIFT, False, numeric_threshold)
    return with_comparators


def drift_anomalies(current, previous, schema) -> anomalies_pb2.Anomalies:
    """Only the comparator findings: schema anomalies are ExampleValidator's business."""
    anomalies = tfdv.validate_statistics(current, schema, previous_statistics=previous)
    drift = anomalies_pb2.Anomalies()
    drift.CopyFrom(anomalies)
    drift.ClearField("anomaly_info")
    drift.ClearField("dataset_anomaly_info")
    for feature, info in anomalies.anomaly_info.items():
        reasons = [reason for reason in info.reason
                   if is_comparator_finding(anomalies_pb2.AnomalyInfo.Type.Name(reason.type))]
        if reasons:
            kept = drift.anomaly_info[feature]
            kept.CopyFrom(info)
            del kept.reason[:]
            kept.reason.extend(reasons)
    return drift


def describe_drift(drift: anomalies_pb2.Anomalies) -> List[str]:
    return [f"{feature}: {reason.description}" for feature, info in sorted(drift.anomaly_info.items())
            for reason in info.reason]


def _read_baseline(baseline_dir: str):
    """(statistics, span) of the last accepted span, or (None, None) before the first."""
    path = os.path.join(baseline_dir, artifacts.STATISTICS_FILE)
    if not tf.io.gfile.exists(path):
        return None, None
    with tf.io.gfile.GFile(os.path.join(baseline_dir, BASELINE_SPAN_FILE)) as f:
        span = int(f.read().strip())
    return artifacts.read_statistics(path), span


def _write_baseline(baseline_dir: str, statistics, span: int) -> None:
    tf.io.gfile.makedirs(baseline_dir)
    with tf.io.gfile.GFile(os.path.join(baseline_dir, artifacts.STATISTICS_FILE), "wb") as f:
        f.write(statistics.SerializeToString())
    with tf.io.gfile.GFile(os.path.join(baseline_dir, BASELINE_SPAN_FILE), "w") as f:
        f.write(str(span))


@tfx.dsl.components.component
def DriftCheck(examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
               statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
               schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
               drift: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
               settings: tfx.dsl.components.Parameter[str],
               code_fingerprint: tfx.dsl.components.Parameter[str],
               ) -> tfx.dsl.components.OutputDict(drifted_features=int):
    """settings: `to_json(DriftSettings)` with its baseline_dir filled in; code_fingerprint only keys the cache."""
    config = from_json(DriftSettings, settings, "drift")
    drift.split_names = artifact_utils.encode_split_names([COMPARED_SPLIT])
    current = artifacts.load_statistics(statistics.uri, COMPARED_SPLIT)
    span = examples.get_int_custom_property("span")  # where ExampleGen records it
    baseline, baseline_span = _read_baseline(config.baseline_dir)
    found = anomalies_pb2.Anomalies()
    if baseline is not None and config.action != "off":
        schema_proto = artifacts.load_schema(schema.uri)
        found = drift_anomalies(current, baseline,
                                drift_schema(schema_proto, config.categorical_threshold, config.numeric_threshold))
        drift.set_int_custom_property("baseline_span", baseline_span)
    drift.set_int_custom_property("span", span)
    lines = describe_drift(found)
    drift.set_string_custom_property("drift", "\n".join(lines))
    artifacts.write_anomalies(drift.uri, COMPARED_SPLIT, found)
    if lines and config.action == "stop":
        # The baseline stays the last accepted span.
        raise DataDriftError(
            f"span {span} drifted from span {baseline_span} beyond the thresholds, so the "
            "run stops before training (drift.action: warn only records it):\n  " + "\n  ".join(lines))
    _write_baseline(config.baseline_dir, current, span)
    return {"drifted_features": len(lines)}
