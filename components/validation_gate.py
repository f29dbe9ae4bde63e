"""A gate after ExampleValidator: it stops the run before Transform when the data has anomalies.

ExampleValidator only records anomalies; a run would go on to train on the bad
data. This component reads them and fails with a readable list (split, feature,
what is wrong), unless the configuration says to proceed anyway.
"""
import os
from typing import List

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """The examples do not match the schema."""


def describe_anomalies(anomalies_artifact) -> List[str]:
    """One line per anomaly: 'split train: feature 'label': <description>'."""
    lines = []
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(anomalies_artifact.uri, f"Split-{split}", ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies.FromString(tf.io.gfile.GFile(path, "rb").read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"split {split}: feature {feature!r}: {info.description or info.short_description}")
        if anomalies.HasField("dataset_anomaly_info"):
            lines.append(f"split {split}: dataset: {anomalies.dataset_anomaly_info.description}")
    return lines


@tfx.dsl.components.component
def ValidationGate(anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
                   stop_on_anomalies: tfx.dsl.components.Parameter[int]
                   ) -> tfx.dsl.components.OutputDict(anomaly_count=int):
    found = describe_anomalies(anomalies)
    if found and stop_on_anomalies:
        raise DataAnomaliesError(
            "the examples do not match the schema, so the run stops before Transform "
            "(set stop_on_anomalies: false to go on anyway):\n  " + "\n  ".join(found))
    return {"anomaly_count": len(found)}
