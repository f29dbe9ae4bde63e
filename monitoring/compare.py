"""The checks of one window: skew against training and drift against the previous window with TFDV's
comparators, the schema the training split implies, and a maximum mean discrepancy on embeddings.

Every check returns its raw distance and its threshold; `alarm` is only their comparison.
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from cxr import comparators, contract
from cxr.comparators import is_comparator_finding, set_comparator
from cxr.monitoring import features
from cxr.monitoring.settings import MonitoringSettings

TRAINING, SERVING = "TRAINING", "SERVING"
# Features only the training split has: the schema's SERVING environment leaves them out.
TRAINING_ONLY = (contract.LABEL,)
SKEW, DRIFT, SCHEMA, EMBEDDING = "skew", "drift", "schema", "embedding"
ANSWERS = "answers"  # the served answers against the ServingCheck's on the test split


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str  # SKEW, DRIFT, SCHEMA, ANSWERS or EMBEDDING
    feature: str
    distance: Optional[float]
    threshold: Optional[float]
    alarm: bool
    detail: str = ""
    p_value: Optional[float] = None  # the embedding test's; its threshold is then a p-value


def statistics(table: pd.DataFrame) -> statistics_pb2.DatasetFeatureStatisticsList:
    return tfdv.generate_statistics_from_dataframe(table)


def reference_schema(reference: statistics_pb2.DatasetFeatureStatisticsList,
                     settings: MonitoringSettings) -> schema_pb2.Schema:
    """What the training split implies (TFDV's inferred schema), with a SERVING environment without the
    training-only features and a skew and a drift comparator on every feature the monitor describes."""
    schema = tfdv.infer_schema(reference)
    schema.default_environment.extend([TRAINING, SERVING])
    for feature in schema.feature:
        if feature.name in TRAINING_ONLY:
            feature.not_in_environment.append(SERVING)
        if feature.name in features.CATEGORICAL:
            set_comparator(feature, comparators.SKEW, True, settings.skew_categorical_threshold)
            set_comparator(feature, comparators.DRIFT, True, settings.drift_categorical_threshold)
        elif feature.name in features.NUMERIC:
            set_comparator(feature, comparators.SKEW, False, settings.skew_numeric_threshold)
            set_comparator(feature, comparators.DRIFT, False, settings.drift_numeric_threshold)
    return schema


def skew(reference, window, schema) -> List[Finding]:
    anomalies = tfdv.validate_statistics(reference, schema, environment=TRAINING, serving_statistics=window)
    return _measured(anomalies, SKEW)


def against_test_answers(test_answers, window, schema: schema_pb2.Schema,
                         settings: MonitoringSettings) -> List[Finding]:
    """The model's answers in the window against those the ServingCheck recorded on the test split, with
    skew comparators at the answers' thresholds."""
    answers_only = schema_pb2.Schema()
    answers_only.CopyFrom(schema)
    del answers_only.feature[:]
    answers_only.feature.extend(feature for feature in schema.feature if feature.name in features.ANSWER)
    for feature in answers_only.feature:
        categorical = feature.name in features.CATEGORICAL
        set_comparator(feature, comparators.SKEW, categorical, settings.answers_categorical_threshold if categorical
                       else settings.answers_numeric_threshold)
    anomalies = tfdv.validate_statistics(test_answers, answers_only, environment=TRAINING, serving_statistics=window)
    return [dataclasses.replace(finding, check=ANSWERS) for finding in _measured(anomalies, SKEW)]


def drift(window, previous, schema) -> List[Finding]:
    """Drift against the previous window, and what in the window the training split's schema does not allow."""
    anomalies = tfdv.validate_statistics(window, schema, environment=SERVING, previous_statistics=previous)
    schema_findings = [Finding(SCHEMA, _feature_name(name), None, None, True, "; ".join(reasons))
                       for name, reasons in sorted(_schema_reasons(anomalies).items())]
    return schema_findings + (_measured(anomalies, DRIFT) if previous is not None else [])


def _schema_reasons(anomalies: anomalies_pb2.Anomalies) -> Dict[str, List[str]]:
    """What the window breaks of the schema itself; the comparators' findings are the measured ones."""
    found: Dict[str, List[str]] = {}
    for name, info in anomalies.anomaly_info.items():
        reasons = [f"{reason.short_description}: {reason.description}" for reason in info.reason
                   if not is_comparator_finding(anomalies_pb2.AnomalyInfo.Type.Name(reason.type))]
        if reasons:
            found[name] = reasons
    return found


def _measured(anomalies: anomalies_pb2.Anomalies, check: str) -> List[Finding]:
    found = []
    for info in anomalies.drift_skew_info:
        measurements = info.skew_measurements if check == SKEW else info.drift_measurements
        for measurement in measurements:
            kind = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(measurement.type)
            found.append(Finding(check, ".".join(info.path.step), measurement.value, measurement.threshold,
                                 measurement.value > measurement.threshold, kind.lower()))
    return sorted(found, key=lambda finding: finding.feature)


def _feature_name(name: str) -> str:
    return name.strip("'")


@dataclasses.dataclass(frozen=True)
class Embedding:
    """Principal components of the training split's embeddings, and how far its own images lie from its mean."""
    mean: np.ndarray
    components: np.ndarray  # [k, width]
    scale: np.ndarray  # each component's standard deviation on the training split
    outlier_distance: float  # the settings' quantile of the training images' distances

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return (embeddings - self.mean) @ self.components.T / self.scale

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        return np.linalg.norm(self.project(embeddings), axis=1)


def fit_embedding(embeddings: np.ndarray, settings: MonitoringSettings) -> Embedding:
    mean = embeddings.mean(axis=0)
    _, singular, vectors = np.linalg.svd(embeddings - mean, full_matrices=False)
    k = min(settings.embedding_components, len(singular))
    scale = np.maximum(singular[:k] / np.sqrt(max(len(embeddings) - 1, 1)), 1e-6)
    fitted = Embedding(mean, vectors[:k], scale, 0.0)
    distances = fitted.distance(embeddings)
    return dataclasses.replace(fitted, outlier_distance=float(np.quantile(distances, settings.outlier_quantile)))


def mmd_test(reference: np.ndarray, window: np.ndarray, settings: MonitoringSettings,
             rng: np.random.Generator) -> Finding:
    """Gaussian-kernel maximum mean discrepancy (biased estimate, median-distance bandwidth) between the
    window's and the training split's projected embeddings, and its permutation p-value."""
    if len(reference) > settings.mmd_max_reference:
        reference = reference[rng.choice(len(reference), settings.mmd_max_reference, replace=False)]
    pooled = np.concatenate([reference, window])
    squared = np.sum((pooled[:, None, :] - pooled[None, :, :]) ** 2, axis=-1)
    bandwidth = np.median(squared[np.triu_indices(len(pooled), 1)]) or 1.0
    kernel = np.exp(-squared / bandwidth)
    n = len(reference)
    observed = _mmd(kernel, np.arange(len(pooled)) < n)
    exceeded = 0
    for _ in range(settings.mmd_permutations):
        exceeded += _mmd(kernel, rng.permutation(len(pooled)) < n) >= observed
    p_value = (exceeded + 1) / (settings.mmd_permutations + 1)
    return Finding(EMBEDDING, contract.EMBEDDING, float(observed), settings.mmd_p_value,
                   p_value < settings.mmd_p_value, "maximum mean discrepancy", p_value)


def _mmd(kernel: np.ndarray, first: np.ndarray) -> float:
    second = ~first
    return float(kernel[first][:, first].mean() + kernel[second][:, second].mean()
                 - 2 * kernel[first][:, second].mean())


def as_dict(finding: Finding) -> Dict[str, object]:
    return dataclasses.asdict(finding)
