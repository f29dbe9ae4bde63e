"""ServingCheck's rules on the served answers (the whole check runs in the pipeline's end-to-end test)."""
import numpy as np
import pytest

from cxr.components.serving_check import ServingCheckFailed, _check_distributions, weak_slices
from cxr.components.settings import GateSettings
from cxr.contract import LABELS

LIMITS = GateSettings(max_latency_ms=100.0, min_slice_recall=0.5, min_slice_examples=4)


def test_a_class_missed_in_one_source_is_named_and_small_slices_are_left_out():
    labels = [1] * 4 + [1] * 4 + [2] * 3
    sources = ["curated"] * 4 + ["covid_radiography"] * 4 + ["nih"] * 3
    predicted = [1, 2, 2, 2] + [1, 1, 1, 2] + [0, 0, 0]  # COVID from curated: 1 of 4; NORMAL from nih: too few
    assert weak_slices(np.array(predicted), labels, sources, LIMITS) == ["COVID from curated: 1 of 4 found (0.25)"]
    assert weak_slices(np.array(labels), labels, sources, LIMITS) == []


@pytest.mark.parametrize("probabilities, message", [
    ([[0.5, 0.5, 0.0, 0.0], [np.nan, 0.0, 0.0, 1.0]], "1 probabilities are not finite"),
    ([[0.5, 0.5, 0.0, 0.0], [0.9, 0.9, 0.0, 0.0]], "do not sum to 1"),
])
def test_answers_that_are_not_distributions_fail(probabilities, message):
    with pytest.raises(ServingCheckFailed, match=message):
        _check_distributions(np.array(probabilities))
    _check_distributions(np.array([[0.25, 0.25, 0.25, 0.25]]))


def _examples_dir(tmp_path, images_and_labels):
    import os
    import tensorflow as tf
    folder = tmp_path / "examples" / "Split-test"
    os.makedirs(folder)
    with tf.io.TFRecordWriter(str(folder / "data.gz"), options="GZIP") as writer:
        for image, label in images_and_labels:
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                       "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()])),
                       "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"nih"]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return str(tmp_path / "examples")


@pytest.mark.slow  # trains a model, or starts the real command in a process of its own
def test_served_answers_that_disagree_with_the_evaluator_fail_the_check(model_base_path, tmp_path):
    """The real check: `cxr serve` in a fresh process on an exported model, the test split over REST."""
    import os
    from cxr.components.serving_check import check_candidate
    from trained_model import demo_png
    examples = _examples_dir(tmp_path, [(demo_png(seed, label), label) for seed, label in enumerate(
        ["COVID", "NORMAL", "PNEUMOTHORAX", "BACTERIAL_PNEUMONIA"] * 2)])
    model_dir = os.path.join(model_base_path, "1")
    lenient = GateSettings(max_latency_ms=60_000, min_slice_recall=0.0, min_slice_examples=1)
    with pytest.raises(ServingCheckFailed, match=r"served, the test split scores accuracy ([\d.]+); the Evaluator "
                                                 r"measured 0\.123000 on the same images") as failed:
        check_candidate(model_dir, examples, evaluated_accuracy=0.123, gate=lenient)
    served = float(failed.value.args[0].split("accuracy ")[1].split(";")[0])
    found = check_candidate(model_dir, examples, evaluated_accuracy=served, gate=lenient)
    assert found["images"] == 8 and found["accuracy"] == pytest.approx(served) and found["p50_ms"] > 0
    labels = ["COVID", "NORMAL", "PNEUMOTHORAX", "BACTERIAL_PNEUMONIA"] * 2  # the answers monitoring compares with
    assert found["probabilities"].shape == (8, 4)
    assert found["accuracy"] == pytest.approx(
        sum(LABELS[i] == label for i, label in zip(found["probabilities"].argmax(axis=1), labels)) / 8)


@pytest.mark.slow  # trains a model, or starts the real command in a process of its own
def test_the_check_s_server_keeps_answering_past_a_pipe_s_worth_of_log(model_base_path):
    """Its access log, a line a request, outgrows a 64 KiB pipe on the full downloads (NIH alone has
    112,120 images: a test split of thousands, 16 a request, plus the latency requests)."""
    import os
    from cxr.components.serving_check import _served
    with _served(os.path.join(model_base_path, "1")) as client:
        for _ in range(1500):  # about 100 bytes of log each
            assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"


def test_a_server_that_cannot_start_fails_the_check_with_its_last_log_line(tmp_path):
    from cxr.components.serving_check import _served
    (tmp_path / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(ServingCheckFailed, match=r"the serving process did not start: .+"):
        with _served(str(tmp_path)):
            pass
