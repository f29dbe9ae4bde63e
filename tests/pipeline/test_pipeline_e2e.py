"""The whole TFX pipeline on the local runner, on tiny phantom data: real components, real MLMD."""
import csv
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from cxr import contract
from cxr.components.transform import decode_pixels
from cxr.contract import class_metric_name
from cxr.contract import LABELS
from cxr.dataprep.build import build_tfrecords
from cxr.dataprep.config import IngestConfig
from cxr.dataprep.dicom_source import DicomSource
from cxr.dicom.pseudonyms import PseudonymKey
from cxr.pipeline.config import PRESETS
from cxr.pipeline.local_runner import run_local
from cxr.pipeline.metadata_reader import sqlite_connection
from cxr.pipeline.pipeline import create_pipeline
import dicom_files
from helpers import IN_PROCESS_BEAM, latest_artifact_uris, tiny_pipeline_config, write_tiny_data

PSEUDONYM_KEY = "c3" * 32

pytestmark = pytest.mark.slow

UPSTREAM = ("ImportExampleGen", "StatisticsGen", "ExampleValidator", "ValidationGate")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The three datasets' phantoms and a hospital's DICOM export (planted identifiers, files named by MRN)."""
    base = tmp_path_factory.mktemp("pipeline")
    roots = write_tiny_data(base / "raw")
    export = base / "hospital" / "export"
    dicom_files.write_dicom_export(str(export), str(base / "hospital" / "labels.csv"), per_class=8, size=64)
    dicom = DicomSource(root=str(export), labels_file=str(base / "hospital" / "labels.csv"),
                        key=PseudonymKey(PSEUDONYM_KEY.encode(), "test")).with_labels()
    build_tfrecords(IngestConfig(source_roots=roots, out_dir=str(base / "tfrecords"), beam_args=IN_PROCESS_BEAM,
                                 dicom=dicom))
    return base


def _config(base, *overrides):
    return tiny_pipeline_config(base, *overrides)


@pytest.fixture(scope="module")
def first_run(workspace):
    return run_local(_config(workspace))


def _versions(base):
    return sorted(os.listdir(base / "serving" / "cxr"))


def test_every_component_runs_and_a_blessed_model_is_pushed(first_run, workspace):
    assert first_run.error is None
    assert set(first_run.statuses.values()) == {"COMPLETE"}, first_run.statuses
    assert set(first_run.statuses) == {component.id for component in create_pipeline(_config(workspace)).components}
    assert _config(workspace).gate == PRESETS["demo"].gate  # the gate a user's demo run faces
    assert first_run.blessed is True, first_run.failed_thresholds
    [version] = _versions(workspace)
    assert version.isdigit()
    assert os.path.isfile(workspace / "serving" / "cxr" / version / "saved_model.pb")
    assert first_run.pushed_to.rstrip("/").endswith(version)
    assert first_run.metrics[""]["example_count"] > 0


def test_no_identifier_of_the_hospital_s_dicom_reaches_anything_the_run_wrote(first_run, workspace):
    """The span, the pipeline's every artifact (statistics, schema, Transform's output, the model, TFMA's
    results), ML Metadata and the pushed model: no planted identifier, UID, file name or the key."""
    export = workspace / "hospital" / "export"
    files = {}
    for path in glob.glob(str(export / "**" / "*.dcm"), recursive=True):
        with open(path, "rb") as f:
            files[os.path.relpath(path, export)] = f.read()
    identifiers = dicom_files.identifiers_in(files.values()) | {PSEUDONYM_KEY}
    identifiers |= {part for relpath in files for part in re.split(r"[/.]", relpath) if part != "dcm"}
    written = [p for folder in ("tfrecords", "root", "serving") for p in glob.glob(
        str(workspace / folder / "**"), recursive=True) if os.path.isfile(p)] + [str(workspace / "metadata.sqlite")]
    assert len(written) > 50
    sources = set()
    for path in written:
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        found = [identifier for identifier in identifiers if identifier.encode() in data]
        assert not found, (os.path.relpath(path, workspace), found)
        sources.add(b"dicom" in data)
    assert True in sources  # the DICOM span did reach the run's outputs


def test_served_signature_on_raw_bytes_matches_the_model_on_transform_output(first_run, workspace):
    [version] = _versions(workspace)
    path = str(workspace / "serving" / "cxr" / version)
    loaded = tf.saved_model.load(path)
    assert {"serving_default", "serving_examples", "transform_features"} <= set(loaded.signatures)
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1]["images"].dtype == tf.string
    raw = [open(p, "rb").read() for p in sorted(glob.glob(str(workspace / "raw" / "**" / "*.png"),
                                                            recursive=True))[:6]]
    served = serve(images=tf.constant(raw))
    assert served["probabilities"].shape == (6, 4)
    assert served["class_name"].dtype == tf.string
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"NORMAL"]))})).SerializeToString()
        for data in raw]
    transformed = loaded.signatures["transform_features"](examples=tf.constant(examples))
    model = keras.models.load_model(path)
    direct = model(decode_pixels(transformed["image"], _config(workspace).model.image_size), training=False)
    np.testing.assert_allclose(served["probabilities"].numpy(), direct.numpy(), atol=1e-5)


def test_the_pushed_model_explains_guards_and_warms_up_as_tf_serving_expects(first_run, workspace):
    [version] = _versions(workspace)
    path = workspace / "serving" / "cxr" / version
    assert (path / contract.WARMUP_FILE).is_file()
    loaded = tf.saved_model.load(str(path))
    raw = [open(p, "rb").read() for p in sorted(glob.glob(str(workspace / "raw" / "**" / "*.png"),
                                                            recursive=True))[:2]]
    explained = loaded.signatures[contract.EXPLAIN_SIGNATURE](images=tf.constant(raw))
    size = _config(workspace).model.image_size
    assert explained[contract.HEATMAP].shape == (2, size, size)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a PNG or JPEG"):
        loaded.signatures[contract.PREDICT_SIGNATURE](images=tf.constant([b"not an image"]))


def test_a_model_that_never_trained_is_refused_by_the_demo_gate(first_run, workspace):
    summary = run_local(_config(workspace, "training.epochs=0"))
    assert all(summary.statuses[node] == "CACHED" for node in UPSTREAM + ("Transform",))
    assert summary.statuses["Trainer"] == "COMPLETE" and summary.blessed is False
    gate = PRESETS["demo"].gate
    assert any(f.startswith("sparse_categorical_accuracy = ") and f.endswith(f"required >= {gate.min_accuracy}")
               for f in summary.failed_thresholds), summary.failed_thresholds
    assert summary.pushed_to is None and len(_versions(workspace)) == 1


def test_a_worse_candidate_is_refused_by_the_regression_threshold_alone(first_run, workspace):
    # Absolute thresholds at 0: only the comparison with the blessed first model can refuse it.
    summary = run_local(_config(workspace, "training.epochs=0", "gate.min_accuracy=0.0", "gate.min_class_recall=0.0"))
    assert summary.blessed is False
    regression = f"no worse than -{PRESETS['demo'].gate.max_accuracy_regression}"
    assert summary.failed_thresholds and all(
        "(change against the baseline)" in f and f.endswith(regression) for f in summary.failed_thresholds), \
        summary.failed_thresholds
    assert summary.pushed_to is None and len(_versions(workspace)) == 1


def test_the_candidate_is_served_before_it_is_pushed(first_run):
    assert first_run.serving_check_passed is True
    assert re.search(r"^\d+ test images served through serving_default agree with the Evaluator \(accuracy "
                     r"[\d.]+\); median \d+ ms per image$", first_run.serving_check), first_run.serving_check


def test_a_candidate_too_slow_to_serve_is_blessed_but_not_pushed(first_run, workspace):
    summary = run_local(_config(workspace, "gate.max_latency_ms=0.001"))
    assert summary.blessed is True and summary.serving_check_passed is False
    assert "over gate.max_latency_ms 0.001" in summary.serving_check
    assert summary.pushed_to is None and len(_versions(workspace)) == 1
    assert summary.statuses["Trainer"] == "CACHED"  # the same model, judged again and refused by the check


def test_an_edited_component_reruns_and_the_components_it_does_not_run_stay_cached(first_run, workspace, tmp_path,
                                                                                   monkeypatch):
    """validation_gate.py edited (a copy read in its place: the checkout stays as it is)."""
    from cxr.pipeline import fingerprint
    real_source = fingerprint._source_file
    edited = tmp_path / "validation_gate.py"
    edited.write_text(open(real_source("cxr.components.validation_gate")).read() + "\n# an edit\n")
    monkeypatch.setattr(fingerprint, "_source_file", lambda module: str(edited) if module.endswith(
        ".validation_gate") else real_source(module))
    config = _config(workspace)
    # DriftCheck's inputs hold the newest accepted span's statistics: it runs again only when those are newer
    # than what it last compared with (here: when this test runs alone, right after the first span was accepted).
    newest_baseline = latest_artifact_uris(config, "DriftBaselineGen", "baseline")
    last_compared = latest_artifact_uris(config, "DriftCheck", "baseline", output=False)
    summary = run_local(config)
    assert summary.statuses["ValidationGate"] == "COMPLETE"
    assert all(summary.statuses[node] == "CACHED" for node in (
        "ImportExampleGen", "StatisticsGen", "ExampleValidator", "DriftBaselineGen", "Transform", "Trainer")), \
        summary.statuses
    assert summary.statuses["DriftCheck"] == ("CACHED" if last_compared == newest_baseline else "COMPLETE")
    assert latest_artifact_uris(config, "DriftCheck", "baseline", output=False) == newest_baseline


def test_records_with_an_unknown_label_or_source_stop_the_run_at_the_validation_gate(first_run, workspace, tmp_path):
    bad_dir = tmp_path / "tfrecords"
    shutil.copytree(workspace / "tfrecords", bad_dir)
    shard = sorted(glob.glob(str(bad_dir / "span-1" / "*.tfrecord.gz")))[0]
    records = [tf.train.Example.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(shard, compression_type="GZIP")]
    records[0].features.feature["label"].bytes_list.value[0] = b"VIRAL_PNEUMONIA"
    records[1].features.feature["source"].bytes_list.value[0] = b"padchest"
    with tf.io.TFRecordWriter(shard, options="GZIP") as writer:
        for record in records:
            writer.write(record.SerializeToString())
    summary = run_local(_config(workspace, f"data.tfrecords_dir={bad_dir}"))
    assert summary.statuses["ValidationGate"] == "FAILED"
    assert "Transform" not in summary.statuses
    assert "DataAnomaliesError" in summary.error
    assert "'label'" in summary.error and "VIRAL_PNEUMONIA" in summary.error
    assert "'source'" in summary.error and "padchest" in summary.error



def test_the_report_s_gallery_shows_no_site_image_unless_asked(first_run, workspace):
    from cxr.pipeline.report.collect import collect
    connection = sqlite_connection(_config(workspace).metadata_path)
    predictions = collect(connection, first_run.run_id).predictions
    sources = dict(zip(predictions.files, predictions.sources))
    assert "dicom" in sources.values()  # the hospital's images are in the test split and its figures
    assert predictions.gallery and all(sources[file] in contract.SOURCES for file in predictions.gallery)
    shown = collect(connection, first_run.run_id, gallery_all_sources=True).predictions.gallery
    assert len(shown) >= len(predictions.gallery)


def test_the_report_reads_the_serving_check_s_answers_instead_of_predicting_again(first_run, workspace, tmp_path):
    from tfx.utils import path_utils

    from cxr.pipeline.metadata_reader import read_run
    from cxr.pipeline.report.collect import collect, predict_test_split
    connection = sqlite_connection(_config(workspace).metadata_path)
    _, outputs = read_run(connection, first_run.run_id)
    with open(os.path.join(outputs["ServingCheck"]["blessing"].uri, contract.SERVING_CHECK_ANSWERS_FILE)) as f:
        answers = np.array(json.load(f)[contract.PROBABILITIES])
    reported = collect(connection, first_run.run_id).predictions.probabilities
    np.testing.assert_array_equal(reported, answers)
    model_dir = path_utils.serving_model_path(outputs["Trainer"]["model"].uri)
    examples = outputs["ImportExampleGen"]["examples"].uri
    np.testing.assert_allclose(predict_test_split(model_dir, examples).probabilities, answers, atol=2e-6)
    truncated = tmp_path / "answers.json"
    truncated.write_text(json.dumps({contract.PROBABILITIES: answers[:-1].tolist()}))
    with pytest.raises(ValueError, match="not the answers of this run's test split"):
        predict_test_split(model_dir, examples, answers_file=str(truncated))


def test_the_report_agrees_with_tfma_and_with_a_count_of_its_predictions(first_run, workspace, tmp_path):
    from cxr.pipeline.report.collect import collect
    from cxr.pipeline.report.render import write_report
    config = _config(workspace)
    index = write_report(collect(sqlite_connection(config.metadata_path), first_run.run_id), str(tmp_path / "report"))
    with open(tmp_path / "report" / "report.json") as f:
        numbers = json.load(f)
    with open(tmp_path / "report" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == numbers["test_examples"] == int(first_run.metrics[""]["example_count"])
    counted = [[sum(1 for r in rows if r["label"] == t and r["predicted"] == p) for p in LABELS] for t in LABELS]
    assert numbers["confusion"] == counted
    assert numbers["accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in rows) / len(rows))
    assert numbers["accuracy"] == pytest.approx(first_run.metrics[""]["sparse_categorical_accuracy"], abs=1e-6)
    compared = 0
    for class_id, row in enumerate(numbers["per_class"]):
        tfma_recall = first_run.metrics[f"classId:{class_id} topK:1"].get(class_metric_name("recall", LABELS[class_id]))
        if row["support"]:  # TFMA reports NaN for a class absent from the test split
            assert row["recall"] == pytest.approx(tfma_recall, abs=1e-6), LABELS[class_id]
            compared += 1
    assert compared >= 2
    assert set(numbers["patient_overlap"].values()) == {0}
    assert os.path.isfile(index)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium: scripts/test-packages.sh installs it")
def test_the_report_renders_in_headless_chromium_with_every_image_loaded(first_run, workspace, tmp_path):
    # `cxr report` from another folder, given only the metadata file and the run: the rest is read from the run.
    cxr = os.path.join(os.path.dirname(sys.executable), "cxr")
    done = subprocess.run([cxr, "report", "--metadata", _config(workspace).metadata_path, "--run", first_run.run_id,
                           "--out", "report"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    index = str(tmp_path / "report" / "index.html")
    assert done.stdout.strip() == f"report: {index}"
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", f"file://{index}"], capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="yes"' in dom
    loaded = re.findall(r'data-loaded="(\w+)"', dom)
    assert loaded and set(loaded) == {"yes"}, loaded
    assert "Grad-CAM gallery" in dom and "Confusion matrix" in dom and "Model card" in dom
