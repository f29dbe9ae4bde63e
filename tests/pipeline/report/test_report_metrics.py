"""The report's statistics against values worked out by hand."""
import math

import numpy as np
import pytest

from cxr import classification as metrics


def test_wilson_interval_matches_the_textbook_value():
    low, high = metrics.wilson(8, 10)  # 0.8 of 10: 0.490 .. 0.943
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert all(math.isnan(v) for v in metrics.wilson(0, 0))


def test_auc_counts_ordered_pairs_and_ties_half():
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    positive = np.array([True, False, True, False])
    assert metrics.auc(scores, positive) == pytest.approx((2 + 0.5 + 1) / 4)


def test_per_class_rates_from_a_known_confusion():
    labels = np.array([0, 0, 1, 1, 1, 2])
    probabilities = np.eye(3)[[0, 1, 1, 1, 2, 2]] * 0.9 + 0.05
    rows = {row["class"]: row for row in metrics.per_class(labels, probabilities, ["A", "B", "C"], resamples=20)}
    assert rows["A"]["recall"] == 0.5 and rows["A"]["precision"] == 1.0 and rows["A"]["specificity"] == 1.0
    assert rows["B"]["recall"] == pytest.approx(2 / 3) and rows["B"]["precision"] == pytest.approx(2 / 3)
    assert rows["C"]["f1"] == pytest.approx(2 / 3)
    assert metrics.confusion(labels, probabilities.argmax(1), 3).tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]


def test_expected_calibration_error_of_an_overconfident_model():
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1]] * 4)  # always 0.9 sure of class 0, right half the time
    assert metrics.calibration(labels, probabilities)["ece"] == pytest.approx(0.4)


def test_the_source_confound_is_the_accuracy_of_each_sources_majority_label():
    result = metrics.source_confound(np.array([1, 1, 0, 3, 3, 3]), ["a", "a", "a", "b", "b", "b"])
    assert result["majority_label"] == {"a": 1, "b": 3} and result["accuracy"] == pytest.approx(5 / 6)
