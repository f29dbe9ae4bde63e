"""cxr monitor on what cxr log-proxy really logged in front of cxr serve: a window like training passes, a shifted
one raises alarms."""
import collections
import csv
import hashlib
import json
import math
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from cxr import contract, output
from cxr.cli import main
from cxr.monitoring import compare, shifts
from cxr.monitoring.settings import MonitoringSettings
from cxr.serving.client import ServingClient
from cxr.serving.dev_server import ServerSettings, start
from cxr.serving.log_proxy import LogProxy
from cxr.serving.server_settings import ProxySettings
from trained_model import demo_png

PER_CLASS_TRAINING = 30
PER_CLASS_WINDOW = 10


def _write_training_split(path):
    """Raw tf.Examples as ExampleGen writes them (gzipped), of phantoms the model never trained on."""
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for class_id, label in enumerate(contract.LABELS):
            for i in range(PER_CLASS_TRAINING):
                example = tf.train.Example(features=tf.train.Features(feature={
                    contract.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[demo_png(5000 + 100 * class_id + i, label)])),
                    contract.LABEL: tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()]))}))
                writer.write(example.SerializeToString())


def _like_training():
    return [demo_png(7000 + 100 * class_id + i, label) for class_id, label in enumerate(contract.LABELS)
            for i in range(PER_CLASS_WINDOW)]


def _shifted():
    """Inverted, dimmed, and photographed-screen versions of unseen phantoms."""
    return shifts.mixed([demo_png(8000 + 100 * class_id + i, label) for class_id, label in enumerate(contract.LABELS)
                         for i in range(PER_CLASS_WINDOW)])


def _send(client, images, batch=8):
    for start_at in range(0, len(images), batch):
        client.predict(images[start_at:start_at + batch])


@pytest.fixture(scope="module")
def logged(model_base_path, tmp_path_factory):
    """Three windows of requests to cxr serve through cxr log-proxy, logged in full: like training, shifted, and
    too few shifted."""
    root = tmp_path_factory.mktemp("monitoring")
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0))
    batches = [_like_training(), _shifted(), _shifted()[:9]]
    # The log's clock, not the wall's: each batch is stamped inside its own window, with no wait between them.
    since, window = 1_700_000_000, 600
    now = [since]
    proxy = LogProxy(ProxySettings(upstream=running.url, port=0, request_log_root=str(root / "log"),
                                   request_log_sample_rate=1.0), clock=lambda: now[0]).start()
    try:
        client = ServingClient(proxy.url)
        requests = 0
        for index, images in enumerate(batches):
            now[0] = since + index * window + 1
            _send(client, images)
            # The proxy stamps a request once it has answered it: the clock moves on once all are stamped.
            requests += math.ceil(len(images) / 8)
            deadline = time.monotonic() + 30
            while proxy.request_log.counts().get("sampled", 0) < requests:
                assert time.monotonic() < deadline, proxy.request_log.counts()
                time.sleep(0.01)
    finally:
        proxy.stop()  # and the logger writes what it holds
        running.stop()
    _write_training_split(str(root / "train.tfrecord.gz"))
    return {"root": root, "since": since, "window": window, "until": since + 3 * window}


@pytest.fixture(scope="module")
def monitored(logged, model_base_path):
    out = logged["root"] / "out"
    status = main(["monitor", "--logs", str(logged["root"] / "log"), "--training", str(logged["root"] / "train.tfrecord.gz"),
                   "--model_base_path", model_base_path, "--since", str(logged["since"]),
                   "--until", str(logged["until"]), "--window", str(logged["window"]), "--out", str(out)])
    with open(out / "monitoring.json") as f:
        return {"status": status, "result": json.load(f), "out": out}


def _alarms(window):
    return {(f["check"], f["feature"]) for f in window["findings"] if f["alarm"]}


def test_the_window_like_training_passes_and_the_shifted_one_raises_alarms(monitored):
    like, shifted, few = monitored["result"]["windows"]
    assert (like["images"], shifted["images"], few["images"]) == (40, 40, 9)
    assert like["judged"] and not like["alarm"], _alarms(like)
    assert shifted["judged"] and shifted["alarm"]
    alarms = _alarms(shifted)
    assert {(compare.SKEW, "pixel_mean"), (compare.EMBEDDING, contract.EMBEDDING)} <= alarms, alarms
    assert (compare.SCHEMA, contract.FORMAT) in alarms  # JPEG, which the training split never had
    assert monitored["status"] == output.EXIT_ALARM


def test_every_distance_is_recorded_with_its_threshold_alarm_or_not(monitored):
    like = monitored["result"]["windows"][0]
    skewed = {f["feature"]: f for f in like["findings"] if f["check"] == compare.SKEW}
    assert {"pixel_mean", "pixel_std", "top_probability", "entropy", contract.FORMAT, "predicted_class"} <= set(skewed)
    assert all(f["distance"] is not None and f["threshold"] > 0 for f in skewed.values())
    [embedding] = [f for f in like["findings"] if f["check"] == compare.EMBEDDING]
    assert embedding["p_value"] >= MonitoringSettings().mmd_p_value


def test_the_shifted_window_drifts_from_the_one_before_and_a_window_too_small_is_not_judged(monitored):
    _, shifted, few = monitored["result"]["windows"]
    assert any(f["check"] == compare.DRIFT and f["alarm"] for f in shifted["findings"])
    assert not few["judged"] and not few["alarm"]
    assert "fewer than monitoring.min_window_images" in few["too_small"]


def test_outlying_and_uncertain_images_are_queued_for_labelling_with_their_bytes(monitored):
    queue = monitored["out"] / "queue"
    with open(queue / "queue.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    shifted = set(map(_sha256, _shifted()))
    assert sum(row["sha256"] in shifted for row in rows) > len(rows) / 2
    for row in rows:
        with open(queue / row["file"], "rb") as f:
            assert _sha256(f.read()) == row["sha256"]
        assert row["reason"] in ("uncertain", "outlying", "uncertain+outlying")


def test_the_page_shows_the_verdicts_and_the_outlying_images(monitored):
    page = (monitored["out"] / "index.html").read_text()
    assert "Alarm" in page and "as in training" in page and "fewer than" in page
    assert page.count("data:image/png;base64,") >= MonitoringSettings().outliers_shown


def test_the_embedding_test_alarms_at_its_p_value_on_no_shift_and_finds_a_shift():
    settings = MonitoringSettings(mmd_p_value=0.1, mmd_permutations=50, mmd_max_reference=150)
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(150, 5))
    same = [compare.mmd_test(reference, rng.normal(size=(30, 5)), settings, rng).alarm for _ in range(40)]
    moved = [compare.mmd_test(reference, rng.normal(size=(30, 5)) + [1.0, 0, 0, 0, 0], settings, rng).alarm
             for _ in range(10)]
    assert sum(same) <= 8  # 10 % expected: 4 of 40
    assert sum(moved) == 10


def _answers(rng, n, favoured):
    """n answers of four classes, each image's top class drawn with the `favoured` shares, mostly confident."""
    top = rng.choice(4, size=n, p=favoured)
    probabilities = rng.dirichlet([0.5] * 4, size=n) * 0.3
    probabilities[np.arange(n), top] += 0.7
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def test_the_served_answers_are_compared_with_the_serving_check_s_and_a_shifted_mix_is_an_alarm(tmp_path):
    from cxr.monitoring import features
    rng = np.random.default_rng(0)
    recorded = tmp_path / contract.SERVING_CHECK_ANSWERS_FILE
    recorded.write_text(json.dumps({contract.PROBABILITIES: _answers(rng, 120, [0.25] * 4).tolist()}))
    test_answers = compare.statistics(features.answers_table(features.read_test_answers(str(recorded))))
    settings = MonitoringSettings(answers_categorical_threshold=0.3, skew_categorical_threshold=0.9)
    schema = compare.reference_schema(test_answers, settings)

    def judged(favoured):
        window = compare.statistics(features.answers_table(_answers(rng, 40, favoured)))
        return {f.feature: f for f in compare.against_test_answers(test_answers, window, schema, settings)}

    alike, shifted = judged([0.25] * 4), judged([0.85, 0.05, 0.05, 0.05])
    assert set(alike) == set(features.ANSWER) and all(f.check == compare.ANSWERS for f in alike.values())
    assert not any(f.alarm for f in alike.values()), alike
    assert shifted[features.PREDICTED_CLASS].alarm
    assert shifted[features.PREDICTED_CLASS].distance > alike[features.PREDICTED_CLASS].distance
    assert shifted[features.PREDICTED_CLASS].threshold == 0.3  # the answers' own, not skew's


def test_a_test_answers_file_of_the_wrong_shape_is_named(tmp_path):
    from cxr.monitoring import features
    recorded = tmp_path / "answers.json"
    recorded.write_text(json.dumps({contract.PROBABILITIES: [[0.5, 0.5]]}))
    with pytest.raises(ValueError, match=r"answers.json: expected .*4 probabilities per test image.*shape \(1, 2\)"):
        features.read_test_answers(str(recorded))


def test_a_training_split_larger_than_the_limit_is_sampled_uniformly_in_one_pass(tmp_path):
    from cxr.monitoring import features
    path = str(tmp_path / "train.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i in range(50):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                contract.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"image %d" % i])),
                contract.LABEL: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"NORMAL"]))})).SerializeToString())
    assert len(features.received_from_examples([path])) == 50
    chosen = collections.Counter()
    for seed in range(200):
        sample = [item.image for item in features.received_from_examples([path], limit=10, seed=seed)]
        assert len(set(sample)) == 10 and all(item.startswith(b"image ") for item in sample)
        chosen.update(sample)
    assert len(chosen) == 50 and 20 <= min(chosen.values()) and max(chosen.values()) <= 65  # 40 each expected


def test_the_log_is_read_as_it_streams_and_each_window_keeps_a_uniform_sample_of_at_most_the_limit():
    import gc
    import weakref
    from cxr.monitoring.features import Received
    from cxr.monitoring.monitor import sample_windows
    alive, most_alive = set(), [0]

    def stream():  # 2 versions x 3 windows of 600 images each, every one tracked while it lives
        for i in range(3600):
            item = Received(b"image %d" % i, 100.0 + (i % 1800) / 10, 1 + i // 1800, (0.25,) * 4)
            alive.add(id(item))
            weakref.finalize(item, alive.discard, id(item))
            if i % 100 == 0:
                gc.collect()
                most_alive[0] = max(most_alive[0], len(alive))
            yield item

    kept, logged = sample_windows(stream(), since=100.0, until=280.0, window_s=60.0, limit=50,
                                  rng=np.random.default_rng(0))
    assert logged == {(version, window): 600 for version in (1, 2) for window in range(3)}
    per_window = collections.Counter((item.version, int((item.time - 100.0) // 60.0)) for item in kept)
    assert set(per_window.values()) == {50} and len(per_window) == 6
    assert [item.time for item in kept] == sorted(item.time for item in kept)
    assert most_alive[0] <= 6 * 50 + 2  # never the whole log: the samples, and the image in hand
    # uniform: over seeds, every image of a window is about equally likely to be kept
    chosen = collections.Counter()
    for seed in range(100):
        window = (Received(b"%d" % i, 0.5 + i / 1000, 1, (0.25,) * 4) for i in range(200))
        chosen.update(item.image for item in sample_windows(window, 0.0, 1.0, 1.0, 20, np.random.default_rng(seed))[0])
    assert len(chosen) == 200 and 2 <= min(chosen.values()) and max(chosen.values()) <= 22  # 10 each expected


def test_a_window_over_the_limit_is_judged_on_its_sample_and_reports_every_logged_image(logged, model_base_path):
    out = logged["root"] / "out-sampled"
    main(["monitor", "--logs", str(logged["root"] / "log"), "--training", str(logged["root"] / "train.tfrecord.gz"),
          "--model_base_path", model_base_path, "--since", str(logged["since"]), "--until", str(logged["until"]),
          "--window", str(logged["window"]), "--out", str(out), "--set", "monitoring.max_window_images=32"])
    with open(out / "monitoring.json") as f:
        result = json.load(f)
    windows = result["windows"]
    assert result["logged_images"] == 89
    assert [(w["images"], w["sampled"], w["judged"]) for w in windows] == [(40, 32, True), (40, 32, True),
                                                                           (9, 9, False)]
    with open(out / "index.html", encoding="utf-8") as f:
        assert f.read().count("<td>40 (32 judged, a sample)</td>") == 2


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _one_logged_request(root, version, when):
    from cxr.serving.request_log import Served, prediction_log
    path = root / "cxr" / "requests-20261202T000000-1-1.tfrecord"
    path.parent.mkdir(parents=True)
    record = prediction_log(Served("cxr", version, None, contract.PREDICT_SIGNATURE),
                            {contract.IMAGES_INPUT: [demo_png(1)]},
                            {contract.PROBABILITIES: np.array([[0.1, 0.2, 0.6, 0.1]], np.float32)}, when, 1.0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record.SerializeToString())


def test_a_version_the_model_folder_lacks_is_named(tmp_path, capsys):
    _one_logged_request(tmp_path / "log", 7, 1_700_000_000)
    _write_training_split(str(tmp_path / "train.gz"))
    status = main(["monitor", "--logs", str(tmp_path / "log"), "--training", str(tmp_path / "train.gz"),
                   "--model_base_path", str(tmp_path / "models"), "--since", "1699999000", "--until", "1700001000",
                   "--out", str(tmp_path / "out")])
    assert status == 2
    assert f"version 7 answered logged requests, but {tmp_path / 'models' / '7'} holds no SavedModel" in \
        capsys.readouterr().err


def test_no_request_in_the_span_is_said_and_a_bad_moment_is_refused_by_flag(tmp_path, capsys):
    _one_logged_request(tmp_path / "log", 1, 1_700_000_000)
    _write_training_split(str(tmp_path / "train.gz"))
    common = ["monitor", "--logs", str(tmp_path / "log"), "--training", str(tmp_path / "train.gz"),
              "--out", str(tmp_path / "out")]
    assert main(common + ["--since", "2026-01-01T00:00", "--until", "2026-01-02T00:00"]) == 0
    assert "no logged :predict request with images between 2026-01-01 00:00:00 and 2026-01-02 00:00:00" in \
        capsys.readouterr().out
    assert main(common + ["--since", "yesterday"]) == 2
    assert "--since 'yesterday': expected ISO 8601" in capsys.readouterr().err


def test_the_queue_and_page_are_owner_only_and_old_queued_images_go_with_retention(monitored, tmp_path):
    import stat
    from cxr.monitoring.monitor import prune_old_files
    queue = monitored["out"] / "queue"
    assert stat.S_IMODE(os.stat(queue).st_mode) == 0o700 and stat.S_IMODE(os.stat(monitored["out"]).st_mode) == 0o700
    queued = [p for p in queue.iterdir() if p.suffix in (".png", ".jpg")]
    assert queued and all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in queued)
    assert stat.S_IMODE(os.stat(monitored["out"] / "index.html").st_mode) == 0o600
    old = tmp_path / "old-run" / "queue"
    old.mkdir(parents=True)
    (old / "a.png").write_bytes(b"x")
    (old / "b.png").write_bytes(b"y")
    month_ago = time.time() - 31 * 86400
    os.utime(old / "a.png", (month_ago, month_ago))
    assert prune_old_files(str(tmp_path / "old-run"), retention_days=30) == 1
    assert [p.name for p in old.iterdir()] == ["b.png"]


def test_the_monitored_span_is_built_one_way_for_the_command_line_and_the_kubeflow_job():
    from cxr.monitoring.moments import monitored_span
    now = lambda: 1_800_000_000.0  # noqa: E731
    assert monitored_span(None, None, 3600, now) == (1_799_996_400.0, 1_800_000_000.0)
    assert monitored_span("1000", "2026-01-09T13:00:00Z", 60, now) == (1000.0, 1767963600.0)
    # KFP up to 2.15 passes its schedule-time placeholder through unresolved: then the span ends now.
    assert monitored_span(None, "{{$.pipeline_job_schedule_time_utc}}", 60, now) == (1_799_999_940.0, 1_800_000_000.0)
    with pytest.raises(ValueError, match="--until 'yesterday': expected ISO 8601"):
        monitored_span(None, "yesterday", 60, now)
