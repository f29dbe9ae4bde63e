"""The request log: TF Serving's PredictionLog records of a sample of what `cxr serve` answered."""
import base64
import calendar
import os
import random
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from cxr import contract
from cxr.serving import request_log as request_log_module
from cxr.serving.dev_server import ServerSettings, start
from cxr.serving.request_log import RequestLogger, Served, enforce_retention, log_files, prediction_log, read_logs
from cxr.serving.server_settings import RequestLogSettings
from trained_model import demo_png

SERVED = Served(model="cxr", version=3, label="canary", signature=contract.PREDICT_SIGNATURE)


def _build(images, served=SERVED):
    return lambda: (served, {contract.IMAGES_INPUT: images}, {contract.PROBABILITIES: np.full((len(images), 4), 0.25)})


def test_every_answered_request_of_a_served_model_is_a_prediction_log_tf_serving_s_reader_parses(
        model_base_path, tmp_path):
    root = str(tmp_path / "log")
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0, request_log_root=root,
                                   request_log_sample_rate=1.0))
    images = [demo_png(seed) for seed in range(3)]
    try:
        body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}
        answer = requests.post(f"{running.url}/v1/models/cxr:predict", json=body, timeout=60).json()
        refused = requests.post(f"{running.url}/v1/models/cxr:predict", json={"instances": []}, timeout=60)
        assert refused.status_code == 400
    finally:
        running.stop()
    [record] = read_logs(log_files(root))
    spec = record.log_metadata.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == ("cxr", contract.PREDICT_SIGNATURE, 1)
    assert abs(record.log_metadata.timestamp_secs - time.time()) < 120
    assert record.log_metadata.sampling_config.sampling_rate == 1.0
    request, response = record.predict_log.request, record.predict_log.response
    assert list(tf.make_ndarray(request.inputs[contract.IMAGES_INPUT])) == images
    logged = tf.make_ndarray(response.outputs[contract.PROBABILITIES])
    served = np.array([prediction[contract.PROBABILITIES] for prediction in answer["predictions"]])
    assert np.allclose(logged, served, atol=1e-6)
    assert running.request_log.counts() == {"sampled": 1, "written": 1, "refused: 400 INVALID_ARGUMENT": 1}


def test_a_label_s_rate_overrides_the_default_and_the_sample_is_uniform(tmp_path):
    settings = RequestLogSettings(root=str(tmp_path), sample_rate=0.2, label_rates={"canary": 1.0}, max_queued=4096)
    logger = RequestLogger(settings, rng=random.Random(7))
    try:
        taken = sum(logger.offer("canary", _build([b"x"])) for _ in range(50))
        plain = Served("cxr", 3, None, contract.PREDICT_SIGNATURE)
        sampled = sum(logger.offer(None, _build([b"x"], plain)) for _ in range(2000))
    finally:
        logger.close()
    assert taken == 50
    assert 300 < sampled < 500  # 2,000 at 0.2: 400 expected, sd 18
    assert len(read_logs(log_files(str(tmp_path)))) == 50 + sampled


def test_files_roll_by_size_and_by_hour_and_name_their_model_day_and_hour(tmp_path):
    now = [calendar.timegm((2026, 12, 1, 9, 59, 0, 0, 0, 0))]
    record = prediction_log(*_build([bytes(600)])(), now[0], 1.0).ByteSize() + 16  # with TFRecord's framing
    logger = RequestLogger(RequestLogSettings(root=str(tmp_path), sample_rate=1.0, max_file_bytes=2 * record + 10),
                           clock=lambda: now[0])
    try:
        for index in range(4):
            logger.offer("canary", _build([bytes(600)]))  # two per file
        _drain(logger, 4)
        now[0] += 120  # 10:01
        logger.offer("canary", _build([bytes(10)]))
    finally:
        logger.close()
    files = log_files(str(tmp_path))
    folders = [os.path.relpath(os.path.dirname(path), tmp_path) for path in files]
    assert folders == ["cxr/2026-12-01/09"] * 2 + ["cxr/2026-12-01/10"]
    assert [len(read_logs([path])) for path in files] == [2, 2, 1]
    first = read_logs(files[:1])[0].predict_log.request.inputs[contract.IMAGES_INPUT]
    assert tf.make_ndarray(first)[0] == bytes(600)  # trailing zero bytes kept


def test_a_failing_store_drops_samples_and_counts_them_and_requests_never_wait(tmp_path, monkeypatch):
    release = threading.Event()

    def stuck_then_broken(*args):
        release.wait(10)  # a bucket that does not answer
        raise tf.errors.UnavailableError(None, None, "the bucket refuses writes")

    monkeypatch.setattr(request_log_module.tf.io, "TFRecordWriter", stuck_then_broken)
    logger = RequestLogger(RequestLogSettings(root=str(tmp_path), sample_rate=1.0, max_queued=4))
    started = time.monotonic()
    offered = [logger.offer("canary", _build([b"x"])) for _ in range(20)]
    assert time.monotonic() - started < 0.5
    release.set()
    logger.close()
    counts = logger.counts()
    assert offered.count(True) == counts["sampled"] and counts["dropped: queue full"] == offered.count(False) > 0
    assert counts["dropped: write failed"] == counts["sampled"] and "written" not in counts


def test_retention_removes_files_past_their_age_then_the_oldest_past_the_total(tmp_path):
    def write(name, size):
        folder = tmp_path / "cxr" / "day"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(bytes(size))
    write("requests-20261101T000000-1-1.tfrecord", 100)  # 30 days and 10 hours before `now`
    write("requests-20261201T080000-1-2.tfrecord", 100)
    write("requests-20261201T090000-1-3.tfrecord", 100)
    write("requests-20261201T100000-1-4.tfrecord", 100)
    write("notes.txt", 10_000)  # not a log file: never counted, never removed
    now = calendar.timegm((2026, 12, 1, 10, 0, 0, 0, 0, 0))
    removed = enforce_retention(str(tmp_path), max_age_hours=24 * 30, max_total_bytes=250, now=now)
    assert [os.path.basename(path) for path in removed] == ["requests-20261101T000000-1-1.tfrecord",
                                                              "requests-20261201T080000-1-2.tfrecord"]
    assert sorted(os.listdir(tmp_path / "cxr" / "day")) == ["notes.txt", "requests-20261201T090000-1-3.tfrecord",
                                                            "requests-20261201T100000-1-4.tfrecord"]


@pytest.mark.parametrize("settings, message", [
    (dict(sample_rate=1.5), "sample rate must lie in 0..1, got 1.5"),
    (dict(label_rates={"canary": -1.0}), "sample rate of label 'canary' must lie in 0..1"),
])
def test_a_rate_outside_0_to_1_is_refused_by_name(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        RequestLogSettings(root=str(tmp_path), **settings)


def test_a_label_rate_flag_must_say_label_and_rate():
    with pytest.raises(ValueError, match="'canary' must look like label=rate"):
        ServerSettings(request_log_root="x", request_log_label_rates=("canary",)).request_log()


def _drain(logger, written, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while logger.counts().get("written", 0) < written and time.monotonic() < deadline:
        time.sleep(0.05)


def test_files_are_partial_until_closed_writer_unique_and_owner_only(tmp_path, monkeypatch):
    import stat
    from cxr.serving import request_log as module
    root = str(tmp_path / "log")
    logger = RequestLogger(RequestLogSettings(root=root, sample_rate=1.0))
    assert logger.offer(None, _build([demo_png(1)]))
    deadline = time.monotonic() + 30
    while logger.counts().get("written", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_files(root) == []  # being written: not listed, not read
    [partial] = module._partial_files(root)
    assert partial.endswith(".tfrecord.partial") and module._OpenFile._writer_id in partial
    logger.close()
    [closed] = log_files(root)
    assert closed == partial[:-len(".partial")] and not module._partial_files(root)
    assert stat.S_IMODE(os.stat(closed).st_mode) == 0o600
    folder = os.path.dirname(closed)
    while folder != os.path.dirname(root):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
        folder = os.path.dirname(folder)
    # Two replicas in containers are both PID 1: the random part still tells their files apart.
    monkeypatch.setenv("HOSTNAME", "cxr-serving-7d9f-abcde")
    assert module.writer_id() != module.writer_id() and module.writer_id().startswith("cxr-serving-7d9f-abcde-")


def test_a_corrupt_file_is_skipped_with_its_reason_and_the_others_read(tmp_path):
    root = str(tmp_path / "log")
    logger = RequestLogger(RequestLogSettings(root=root, sample_rate=1.0, max_file_bytes=1))
    for seed in range(3):
        assert logger.offer(None, _build([demo_png(seed)]))
    logger.close()
    files = log_files(root)
    assert len(files) == 3
    with open(files[1], "r+b") as f:
        f.truncate(os.path.getsize(files[1]) // 2)
    unreadable = []
    assert len(read_logs(files, unreadable)) == 2
    assert len(unreadable) == 1 and unreadable[0].startswith(files[1]) and "DataLossError" in unreadable[0]


def test_retention_removes_a_dead_writer_s_partial_file_once_past_the_age(tmp_path):
    from cxr.serving import request_log as module
    folder = tmp_path / "log" / "cxr" / "2026-11-01" / "08"
    folder.mkdir(parents=True)
    stale = folder / "requests-20261101T080000-pod-1-abcd-1.tfrecord.partial"
    stale.write_bytes(b"half a record")
    now = calendar.timegm(time.strptime("20261201T080000", "%Y%m%dT%H%M%S"))
    removed = enforce_retention(str(tmp_path / "log"), 24 * 30 - 2, 1 << 30, now)
    assert removed == [str(stale)] and not stale.exists() and module._partial_files(str(tmp_path / "log")) == []


def test_the_queue_holds_at_most_max_queued_bytes_of_bodies(tmp_path):
    release = threading.Event()

    def slow_build():
        release.wait(30)
        return _build([demo_png(1)])()

    logger = RequestLogger(RequestLogSettings(root=str(tmp_path), sample_rate=1.0, max_queued_bytes=100))
    assert logger.offer(None, slow_build, size=80)  # the writer holds it until released
    assert not logger.offer(None, _build([demo_png(2)]), size=80)
    assert logger.counts()["dropped: queue full (bytes)"] == 1
    release.set()
    logger.close()
    assert logger.counts()["written"] == 1
    assert logger.offer(None, _build([demo_png(3)]), size=1_000)  # alone, one body always fits
