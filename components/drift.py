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

The baseline is an artifact in ML Metadata, resolved as the Evaluator's baseline model is: once
the check lets a span through, the `DriftBaselineGen` node after it writes that span's training
split statistics as a `DriftBaseline`, and the next run's Resolver (LatestArtifactStrategy) hands
the newest one to the check. A span that drift stops gets none, so the baseline stays the last
accepted span; concurrent runs each resolve their own. The baseline is written by its own node,
whose inputs are the span's statistics alone, not by the check: a check that wrote it would make
each run's baseline new, and so its own next run a cache miss for ever (TFX keys the cache on the
input artifacts, tfx/orchestration/portable/cache_utils.py); this way a span run again is
compared once with its own baseline, as the Evaluator compares a model once with its own
blessing, and is cached from then on. TFX 1.16's LatestArtifactStrategy fails its
node when there is no artifact at all (strategies/latest_artifact_strategy.py, resolve_artifacts
returns None, which input_graph_resolver.py raises), and Vertex's compiler takes no other strategy
(kubeflow/v2/step_builder.py): so an Importer registers once, before the Resolver runs, a
`DriftBaseline` with no statistics (`NO_BASELINE`), the oldest of its type, which the check reads as
"the first span: nothing to compare with".
"""
import os
from typing import List, Optional, Tuple

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.types.artifact import Artifact

from cxr import contract
from cxr.comparators import DRIFT, is_comparator_finding, set_comparator
from cxr.components import artifacts
from cxr.components.settings import DriftSettings, from_json

CATEGORICAL_FEATURES = (contract.LABEL, contract.SOURCE, contract.FORMAT, contract.VIEW_POSITION, contract.MODALITY,
                        contract.MANUFACTURER, contract.MANUFACTURER_MODEL)
NUMERIC_FEATURES = (contract.HEIGHT, contract.WIDTH, contract.CHANNELS, contract.BIT_DEPTH, contract.BITS_STORED)
COMPARED_SPLIT = contract.TRAIN
SPAN = "span"  # the custom property of a DriftBaseline (and of the drift anomalies) naming its span
NO_BASELINE = "no_baseline"  # the custom property of the Importer's DriftBaseline that holds no statistics


class DriftBaseline(Artifact):
    """The training split's statistics (artifacts.STATISTICS_FILE) of a span the drift check accepted."""
    # <namespace>.<Name>: what Vertex takes as a custom type's schema title (kubeflow/v2/compiler_utils.py)
    TYPE_NAME = "cxr.DriftBaseline"


def no_baseline_uri(pipeline_root: str) -> str:
    """Where the Importer's empty DriftBaseline points: nothing is written there."""
    return f"{pipeline_root.rstrip('/')}/drift-no-baseline"


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


def read_baseline(baseline: Artifact) -> Tuple[Optional[object], Optional[int]]:
    """(statistics, span) of the last accepted span, or (None, None) for the Importer's empty one."""
    if baseline.has_custom_property(NO_BASELINE):
        return None, None
    if not baseline.has_custom_property(SPAN):
        raise ValueError(f"the drift baseline {baseline.uri} has no {SPAN!r} property: not one DriftCheck wrote")
    path = os.path.join(baseline.uri, artifacts.STATISTICS_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"the drift baseline of span {baseline.get_int_custom_property(SPAN)} has no "
                                f"{path}: its files were removed, but ML Metadata still lists it")
    return artifacts.read_statistics(path), baseline.get_int_custom_property(SPAN)


@tfx.dsl.components.component
def DriftBaselineGen(examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
                     statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
                     baseline: tfx.dsl.components.OutputArtifact[DriftBaseline],
                     code_fingerprint: tfx.dsl.components.Parameter[str]):
    """This span's training split statistics as the next run's drift baseline; it runs after DriftCheck
    (an upstream node, not an input: see the module's docstring), so only for a span the check let through.
    code_fingerprint only keys the cache."""
    tf.io.gfile.makedirs(baseline.uri)
    with tf.io.gfile.GFile(os.path.join(baseline.uri, artifacts.STATISTICS_FILE), "wb") as f:
        f.write(artifacts.load_statistics(statistics.uri, COMPARED_SPLIT).SerializeToString())
    baseline.set_int_custom_property(SPAN, examples.get_int_custom_property(SPAN))


@tfx.dsl.components.component
def DriftCheck(examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
               statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
               schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
               baseline: tfx.dsl.components.InputArtifact[DriftBaseline],
               drift: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
               settings: tfx.dsl.components.Parameter[str],
               code_fingerprint: tfx.dsl.components.Parameter[str],
               ) -> tfx.dsl.components.OutputDict(drifted_features=int):
    """baseline: the Resolver's newest DriftBaseline (DriftBaselineGen's, or the Importer's empty one).
    settings: `to_json(DriftSettings)`; code_fingerprint only keys the cache."""
    config = from_json(DriftSettings, settings, "drift")
    drift.split_names = artifact_utils.encode_split_names([COMPARED_SPLIT])
    current = artifacts.load_statistics(statistics.uri, COMPARED_SPLIT)
    span = examples.get_int_custom_property(SPAN)  # where ExampleGen records it
    previous, baseline_span = read_baseline(baseline)
    found = anomalies_pb2.Anomalies()
    if previous is not None and config.action != "off":
        schema_proto = artifacts.load_schema(schema.uri)
        found = drift_anomalies(current, previous,
                                drift_schema(schema_proto, config.categorical_threshold, config.numeric_threshold))
        drift.set_int_custom_property("baseline_span", baseline_span)
    drift.set_int_custom_property(SPAN, span)
    lines = describe_drift(found)
    drift.set_string_custom_property("drift", "\n".join(lines))
    artifacts.write_anomalies(drift.uri, COMPARED_SPLIT, found)
    if lines and config.action == "stop":
        # The baseline stays the last accepted span.
        raise DataDriftError(
            f"span {span} drifted from span {baseline_span} beyond the thresholds, so the "
            "run stops before training (drift.action: warn only records it):\n  " + "\n  ".join(lines))
    return {"drifted_features": len(lines)}
