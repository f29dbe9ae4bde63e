"""The pipeline with its TFRecords, pipeline root and serving folder in a gs:// bucket, as the pipeline image
runs it: every command in the image's environment (image_env.py), inside the GCS sandbox (gcs_sandbox.py),
where TensorFlow's own gs:// file system and Beam's GCS client reach an emulated bucket and nothing else.
Only ML Metadata stays local (SQLite), as it is a database, not a file in the bucket."""
import json
import os
import sys

import pytest
import yaml

import gcs_sandbox
from cxr.pipeline.config import to_dict
from helpers import IN_PROCESS_BEAM, ORCHESTRATION_ONLY, tiny_pipeline_config, write_tiny_data

pytestmark = pytest.mark.slow

BUCKET = f"gs://{gcs_sandbox.BUCKET}"
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bucket_probe.py")


@pytest.fixture(scope="module")
def in_sandbox(tmp_path_factory, image):
    """run(*command): the command in the image's environment, in the sandbox; the bucket lasts the module."""
    reason = gcs_sandbox.unavailable()
    if reason:
        pytest.skip(reason)
    storage = str(tmp_path_factory.mktemp("gcs"))

    def run(*command):
        # The sandbox (the emulator, test-only) runs on the tests' Python; the command in the image's environment.
        done = gcs_sandbox.run(list(command), storage, python=sys.executable, cwd=image.workdir, env=image.env,
                               capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        return done.stdout

    return run


@pytest.fixture(scope="module")
def bucket_run(tmp_path_factory, in_sandbox):
    """Phantom downloads built into a span in the bucket, one pipeline run on it, and what it left there
    (bucket_probe.py, run in the sandbox: the test's own process cannot read the bucket)."""
    work = tmp_path_factory.mktemp("bucket-run")
    roots = write_tiny_data(work / "downloads", per_class=16, seed=3)
    in_sandbox("cxr", "build-tfrecords", "--covid-radiography", roots["covid_radiography"], "--curated",
               roots["curated"], "--nih", roots["nih"], "--out", f"{BUCKET}/tfrecords", "--span", "1",
               *(f"--beam-arg={flag}" for flag in IN_PROCESS_BEAM))
    config = tiny_pipeline_config(work, f"data.tfrecords_dir={BUCKET}/tfrecords", f"pipeline_root={BUCKET}/root",
                                  f"serving_dir={BUCKET}/serving", *ORCHESTRATION_ONLY)
    config_file = work / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    in_sandbox("cxr", "run", "--config", str(config_file))
    image = next((work / "downloads").rglob("*.png"))
    found = json.loads(in_sandbox("python", PROBE, config.metadata_path, f"{BUCKET}/serving/{config.model_name}",
                                  str(image), f"{BUCKET}/monitoring").splitlines()[-1])
    return work, config, found, image


def test_a_run_on_a_bucket_serves_its_test_split_and_pushes_into_the_bucket(bucket_run):
    work, config, found, _ = bucket_run
    assert set(found["statuses"].values()) == {"COMPLETE"}, found["statuses"]
    assert found["examples_uri"].startswith(f"{BUCKET}/root/")
    assert f"{int(found['test_examples'])} test images served" in found["verdict"]  # not "no test images"
    assert found["blessed"] and found["pushed_to"].startswith(f"{BUCKET}/serving/{config.model_name}/")
    assert not os.path.exists(work / "root") and not os.path.exists(work / "serving")


def test_the_report_and_the_server_read_the_run_from_the_bucket(bucket_run, in_sandbox, tmp_path):
    work, config, found, image = bucket_run
    in_sandbox("cxr", "report", "--metadata", config.metadata_path, "--out", str(tmp_path / "report"))
    with open(tmp_path / "report" / "report.json") as f:
        numbers = json.load(f)
    assert numbers["test_examples"] == int(found["test_examples"]) > 0
    assert found["epochs"] == {"train": config.training.epochs, "validation": config.training.epochs}
    assert found["served_version"] == int(os.path.basename(found["pushed_to"]))
    assert found["predicted"]["file"] == str(image) and len(found["predicted"]["probabilities"]) == 4


def test_cxr_monitor_reads_the_request_log_and_the_serving_check_s_answers_from_the_bucket(bucket_run):
    # cxr serve logged the one prediction above into the bucket (its file uploaded when SIGTERM stopped it);
    # cxr monitor found the version's run in ML Metadata and read its split and test answers from gs://.
    _, _, found, _ = bucket_run
    monitored = found["monitored"]
    assert "error" not in monitored, monitored.get("error")
    assert monitored["logged_images"] == 1
    version = monitored["versions"][str(found["served_version"])]
    assert version["from"].startswith("pipeline run ") and version["training_images"] > 0
    assert version["test_answers"].startswith(f"{BUCKET}/root/ServingCheck/")
    assert all(path.startswith(f"{found['examples_uri']}/Split-train/") for path in version["training_files"])
