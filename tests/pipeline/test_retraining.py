"""A scheduled retrain, reproduced locally: span 1 is trained and pushed; a span 2 whose class balance
shifted is stopped by the drift check; a healthy span 2 is trained and judged against span 1's model;
labelled served images (cxr feedback) make span 3, which the next run trains on."""
import glob
import hashlib
import json
import os
import time

import pytest
import tensorflow as tf

from cxr import contract, output
from cxr.cli import main
from cxr.components import artifacts
from cxr.components.drift import no_baseline_uri
from cxr.dataprep.build import build_tfrecords
from cxr.dataprep.config import IngestConfig
from cxr.pipeline.local_runner import run_local
from helpers import (IN_PROCESS_BEAM, ORCHESTRATION_ONLY, encode, latest_artifact_uris, phantom_picture,
                     serve_and_log, tiny_pipeline_config, write, write_tiny_data)

pytestmark = pytest.mark.slow

# The phantoms are all 64 px but for a few resized near-copies, which differ by seed: on so
# degenerate a histogram TFDV's approximate Jensen-Shannon divergence of two healthy spans
# reached 0.35, hence the loose numeric threshold here.
DRIFT = ("drift.action=stop", "drift.categorical_threshold=0.15", "drift.numeric_threshold=0.5",
         *ORCHESTRATION_ONLY)


def _write_shifted_span(base, name, span, seed, drop_covid=True):
    roots = write_tiny_data(base / name, per_class=16, seed=seed)
    if drop_covid:  # a site stopped sending COVID-19 cases
        for folder in (os.path.join(roots["covid_radiography"], "COVID-19_Radiography_Dataset", "COVID", "images"),
                       os.path.join(roots["curated"], "Curated X-Ray Dataset", "COVID-19")):
            for path in glob.glob(os.path.join(folder, "*")):
                os.remove(path)
    build_tfrecords(IngestConfig(source_roots=roots, out_dir=str(base / "tfrecords"), span=span, overwrite=True,
                                 beam_args=IN_PROCESS_BEAM))


def _evaluator_baseline_and_trained_models(config):
    """(uri of the baseline model the latest Evaluator used, uri of the model the latest Trainer wrote)."""
    return (latest_artifact_uris(config, "Evaluator", "baseline_model", output=False),
            latest_artifact_uris(config, "Trainer", "model"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_span):
    """Span 1 trained and pushed: where each test starts, whichever runs first or alone."""
    base = tmp_path_factory.mktemp("retraining")
    tiny_span(base / "tfrecords", span=1, seed=3)
    config = tiny_pipeline_config(base, *DRIFT)
    first = run_local(config)
    assert first.error is None and first.blessed and first.pushed_to
    assert first.drift_baseline_span is None
    # The first span is compared with nothing: the Importer's empty baseline, resolved as the newest.
    assert latest_artifact_uris(config, "DriftCheck", "baseline", output=False) == [no_baseline_uri(config.pipeline_root)]
    return base


def test_a_shifted_span_is_stopped_and_a_healthy_one_is_retrained_against_the_blessed_model(base, tiny_span):
    config = tiny_pipeline_config(base)
    _, [span_1_model] = _evaluator_baseline_and_trained_models(config)
    [span_1_statistics] = latest_artifact_uris(config, "DriftBaselineGen", "baseline")
    pushed = len(os.listdir(base / "serving" / "cxr"))

    span = _latest_span(base) + 1
    _write_shifted_span(base, "span-shifted", span=span, seed=4)
    shifted = run_local(tiny_pipeline_config(base, *DRIFT))
    assert shifted.statuses["DriftCheck"] == "FAILED" and "Transform" not in shifted.statuses
    assert f"span {span} drifted from span {span - 1}" in shifted.error
    assert "label:" in shifted.error.split("beyond the thresholds")[1], shifted.error
    assert shifted.pushed_to is None
    # It was compared with span 1's statistics, an artifact in ML Metadata, and left no baseline of its own.
    assert latest_artifact_uris(config, "DriftCheck", "baseline", output=False) == [span_1_statistics]
    assert "DriftBaselineGen" not in shifted.statuses
    assert latest_artifact_uris(config, "DriftBaselineGen", "baseline") == [span_1_statistics]

    tiny_span(base / "tfrecords", span=span, seed=5)
    healthy = run_local(tiny_pipeline_config(base, *DRIFT))
    assert healthy.error is None, healthy.error
    assert healthy.drift_baseline_span == span - 1 and healthy.drift == []
    assert latest_artifact_uris(config, "DriftCheck", "baseline", output=False) == [span_1_statistics]
    [span_2_statistics] = latest_artifact_uris(config, "DriftBaselineGen", "baseline")
    assert span_2_statistics != span_1_statistics and healthy.statuses["DriftBaselineGen"] == "COMPLETE"
    assert not os.path.exists(no_baseline_uri(config.pipeline_root))
    assert healthy.statuses["Trainer"] == "COMPLETE"
    baseline, [span_2_model] = _evaluator_baseline_and_trained_models(tiny_pipeline_config(base))
    assert baseline == [span_1_model] and span_2_model != span_1_model
    assert healthy.blessed and len(os.listdir(base / "serving" / "cxr")) == pushed + 1


def _latest_span(base) -> int:
    from cxr.dataprep.feedback import latest_span
    return latest_span(str(base / "tfrecords"))


def test_labelled_served_images_become_the_span_the_next_run_trains_on(base):
    # Images the served model received, labelled by a person, as cxr monitor queues them (<sha256>.png),
    # come back through cxr feedback as the next span, and the next run reads it.
    images = [encode(phantom_picture(4000 + i, size=64, finding=finding), "PNG")
              for i, finding in enumerate(["normal", "pneumothorax"] * 3)]
    rows = []
    for data, finding in zip(images, ["NORMAL", "PNEUMOTHORAX"] * 3):
        sha = hashlib.sha256(data).hexdigest()
        write(str(base / "queue" / f"{sha}.png"), data)
        rows.append(f"{sha},{finding}\n")
    write(str(base / "labels.csv"), ("sha256,label\n" + "".join(rows)).encode())
    assert main(["feedback", "--labels", str(base / "labels.csv"), "--images", str(base / "queue"),
                 "--tfrecords-dir", str(base / "tfrecords")]) == 0
    retrained = run_local(tiny_pipeline_config(base, *DRIFT))
    assert retrained.error is None, retrained.error
    assert retrained.statuses["Trainer"] == "COMPLETE"
    [examples] = latest_artifact_uris(tiny_pipeline_config(base), "ImportExampleGen", "examples")
    shards = glob.glob(os.path.join(examples, "Split-*", "*.gz"))
    sources = [tf.train.Example.FromString(record.numpy()).features.feature[contract.SOURCE].bytes_list.value[0]
               for record in tf.data.TFRecordDataset(shards, compression_type="GZIP")]
    assert sources.count(contract.SERVED.encode()) == len(images)


def test_cxr_monitor_finds_the_served_version_s_training_split_and_test_answers_in_ml_metadata(base):
    # The newest pushed version serves and logs; cxr monitor, given only ML Metadata,
    # compares its requests with the training split and the ServingCheck's answers of the run that pushed it.
    from cxr.pipeline.metadata_reader import read_run, sqlite_connection
    summary, outputs = read_run(sqlite_connection(str(base / "metadata.sqlite")))
    version = os.path.basename(summary.pushed_to)
    since = time.time() - 1
    serve_and_log(str(base / "serving" / "cxr"), str(base / "log"), requests=32)
    out = base / "monitoring"
    status = main(["monitor", "--logs", str(base / "log"), "--metadata", str(base / "metadata.sqlite"),
                   "--model_base_path", str(base / "serving" / "cxr"), "--since", str(since),
                   "--until", str(time.time() + 1), "--window", "3600", "--out", str(out)])
    assert status in (0, output.EXIT_ALARM)
    with open(out / "monitoring.json") as f:
        result = json.load(f)
    found = result["versions"][version]
    assert found["from"] == f"pipeline run {summary.run_id}"
    assert found["training_files"] == artifacts.split_files(outputs["ImportExampleGen"]["examples"].uri, contract.TRAIN)
    assert found["test_answers"] == os.path.join(outputs["ServingCheck"]["blessing"].uri,
                                                 contract.SERVING_CHECK_ANSWERS_FILE)
    with open(found["test_answers"]) as f:
        test_images = len(json.load(f)[contract.PROBABILITIES])
    assert test_images == sum(1 for _ in tf.data.TFRecordDataset(
        artifacts.split_files(outputs["ImportExampleGen"]["examples"].uri, contract.TEST), compression_type="GZIP"))
    [window] = result["windows"]
    assert window["images"] == 32 and window["judged"]
    answers = {f["feature"] for f in window["findings"] if f["check"] == "answers" and f["distance"] is not None}
    assert answers == {"predicted_class", "top_probability", "entropy"}
