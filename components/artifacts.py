"""Where TFX's artifacts keep their files and what TFMA's results hold: the one reader of both.

Read through tf.io.gfile, so that a pipeline root in a local folder and one in a gs:// bucket are
read alike. The components, the run summary, the report and Kubeflow's UI outputs read artifacts
here; the names of TFMA's metrics they look up are in cxr/contract.py.
"""
import os
from typing import Dict, Iterator, List, Sequence

import numpy as np
import tensorflow as tf

from cxr import contract

from cxr.contract import LABELS

STATISTICS_FILE = "FeatureStats.pb"  # StatisticsGen's, per split
ANOMALIES_FILE = "SchemaDiff.pb"  # ExampleValidator's, per split
SCHEMA_FILE = "schema.pbtxt"  # SchemaGen's and the Importer's


def split_uri(artifact_uri: str, split: str) -> str:
    """The folder of one split of a multi-split artifact (Examples, ExampleStatistics, ExampleAnomalies)."""
    return os.path.join(artifact_uri, f"Split-{split}")


def split_files(examples_uri: str, split: str) -> List[str]:
    """The compressed TFRecord files of one split of an Examples artifact (ExampleGen's and Transform's layout)."""
    return sorted(tf.io.gfile.glob(os.path.join(split_uri(examples_uri, split), "*.gz")))


def read_split(examples_uri: str, split: str, features: Sequence[str], batch: int = 64) -> Iterator[Dict[str, np.ndarray]]:
    """One split of ExampleGen's raw examples, `batch` at a time: {feature: bytes values} of these bytes features
    (the acquisition features read as 'unknown' from records written before they existed)."""
    spec = {name: tf.io.FixedLenFeature([], tf.string, default_value=contract.UNKNOWN
                                        if name in contract.ACQUISITION_BYTES_FEATURES else None)
            for name in features}
    dataset = tf.data.TFRecordDataset(split_files(examples_uri, split), compression_type="GZIP")
    for parsed in dataset.batch(batch).map(lambda serialized: tf.io.parse_example(serialized, spec)):
        yield {name: values.numpy() for name, values in parsed.items()}


def load_statistics(statistics_uri: str, split: str):
    """StatisticsGen's DatasetFeatureStatisticsList of one split."""
    return read_statistics(os.path.join(split_uri(statistics_uri, split), STATISTICS_FILE))


def read_statistics(path: str):
    import tensorflow_data_validation as tfdv
    return tfdv.load_stats_binary(path)


def load_anomalies(anomalies_uri: str, split: str):
    """ExampleValidator's Anomalies of one split (or another component's, written by write_anomalies)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    with tf.io.gfile.GFile(os.path.join(split_uri(anomalies_uri, split), ANOMALIES_FILE), "rb") as f:
        return anomalies_pb2.Anomalies.FromString(f.read())


def write_anomalies(anomalies_uri: str, split: str, anomalies) -> None:
    folder = split_uri(anomalies_uri, split)
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(os.path.join(folder, ANOMALIES_FILE), "wb") as f:
        f.write(anomalies.SerializeToString())


def load_schema(schema_uri: str):
    import tensorflow_data_validation as tfdv
    return tfdv.load_schema_text(os.path.join(schema_uri, SCHEMA_FILE))


def evaluation_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """The Evaluator's metrics on the whole test split: {sub key: {metric: value}}, sub keys as
    contract.metric_sub_key spells them ('' overall). A value TFMA could not compute is None."""
    import tensorflow_model_analysis as tfma
    for slice_key, metrics in tfma.load_eval_result(evaluation_uri).slicing_metrics:
        if slice_key == ():
            return {sub_key: {name: value.get("doubleValue") for name, value in values.items() if "doubleValue" in value}
                    for sub_key, values in metrics.get("", {}).items()}
    return {}


def failed_thresholds(evaluation_uri: str) -> List[str]:
    """'sparse_categorical_accuracy = 0.4000, required >= 0.9' for each of the Evaluator's thresholds that failed."""
    import tensorflow_model_analysis as tfma
    validation = tfma.load_validation_result(evaluation_uri)
    return [_describe_failure(failure) for per_slice in validation.metric_validations_per_slice
            for failure in per_slice.failures]


def _describe_failure(failure) -> str:
    key = failure.metric_key
    name = f"{key.name} of {LABELS[key.sub_key.class_id.value]}" if key.sub_key.HasField("class_id") else key.name
    baseline = " (change against the baseline)" if key.is_diff else ""
    threshold = failure.metric_threshold
    if threshold.HasField("value_threshold"):
        bound = f">= {threshold.value_threshold.lower_bound.value}"
    else:
        bound = f"no worse than {threshold.change_threshold.absolute.value}"
    return f"{name}{baseline} = {failure.metric_value.double_value.value:.4f}, required {bound}"


def confusion_matrix(evaluation_uri: str) -> List[List[int]]:
    """Rows: the true class; columns: the arg-max prediction; from TFMA's MultiClassConfusionMatrixPlot."""
    import tensorflow_model_analysis as tfma
    result = tfma.load_eval_result(evaluation_uri)
    [candidate] = [spec.name for spec in result.config.model_specs if not spec.is_baseline]
    if candidate:  # named ("candidate") when the Evaluator compared with a baseline; its plots load by name
        result = tfma.load_eval_result(evaluation_uri, model_name=candidate)
    matrix = [[0] * len(LABELS) for _ in LABELS]
    for slice_key, plots in result.plots:
        if slice_key != ():
            continue
        thresholds = plots[""][""]["multiClassConfusionMatrixAtThresholds"]["matrices"]
        for entry in thresholds[0].get("entries", []):
            actual, predicted = entry.get("actualClassId", 0), entry.get("predictedClassId", 0)
            matrix[actual][predicted] = int(entry.get("numWeightedExamples", 0))
    return matrix


def copy_tree(source: str, destination: str) -> None:
    """Copies a folder (a SavedModel, say) between any two file systems TensorFlow reads."""
    for folder, _, files in tf.io.gfile.walk(source):
        target = os.path.join(destination, os.path.relpath(folder, source))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name), overwrite=True)
