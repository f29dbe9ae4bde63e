"""`cxr serve` against TF Serving's REST contract: request bodies from TF Serving's REST documentation,
its response and error shapes and status codes, bad inputs, labels, concurrency and hot reload."""
import base64
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tensorflow as tf

from cxr.serving import contract
from cxr.serving.dev_server import ServerSettings, start
from helpers import encode
from trained_model import IMAGE_SIZE, demo_png
from PIL import Image

MAX_BODY = 2 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def server(model_base_path):
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0, max_body_bytes=MAX_BODY))
    yield running
    running.stop()


def _post(server, body, path="/v1/models/cxr:predict"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.url + path, data=data, timeout=60)


def _images():
    return [demo_png(seed, label) for seed, label in enumerate(contract.CLASS_NAMES)]


def _direct(loaded_model, images, signature=contract.PREDICT_SIGNATURE):
    return {key: value.numpy() for key, value in loaded_model.signatures[signature](images=tf.constant(images)).items()}


def test_the_row_format_from_the_documentation_answers_one_prediction_per_instance(server, loaded_model):
    images = _images()
    response = _post(server, {"signature_name": "serving_default", "instances": [{"b64": _b64(i)} for i in images]})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    predictions = response.json()["predictions"]
    direct = _direct(loaded_model, images)
    assert [set(p) for p in predictions] == [{"probabilities", "class_id", "class_name"}] * len(images)
    np.testing.assert_allclose([p["probabilities"] for p in predictions], direct["probabilities"], atol=1e-6)
    assert [p["class_name"] for p in predictions] == [name.decode() for name in direct["class_name"]]
    assert [p["class_id"] for p in predictions] == direct["class_id"].tolist()


def test_named_instances_and_both_columnar_forms_give_the_same_answer(server):
    images = _images()[:2]
    rows = _post(server, {"instances": [{"images": {"b64": _b64(i)}} for i in images]}).json()["predictions"]
    for body in ({"inputs": [{"b64": _b64(i)} for i in images]},
                 {"inputs": {"images": [{"b64": _b64(i)} for i in images]}}):
        outputs = _post(server, body).json()["outputs"]
        assert set(outputs) == {"probabilities", "class_id", "class_name"}
        np.testing.assert_allclose(outputs["probabilities"], [r["probabilities"] for r in rows], atol=1e-6)
        assert outputs["class_name"] == [r["class_name"] for r in rows]


def test_explain_returns_a_heatmap_per_image_and_explain_class_takes_the_class(server):
    images = _images()[:2]
    explained = _post(server, {"signature_name": "explain",
                               "instances": [{"b64": _b64(i)} for i in images]}).json()["predictions"]
    heatmap = np.array(explained[0]["heatmap"])
    assert heatmap.shape == (IMAGE_SIZE, IMAGE_SIZE) and heatmap.min() >= 0 and heatmap.max() == pytest.approx(1)
    asked = _post(server, {"signature_name": "explain_class", "instances": [
        {"images": {"b64": _b64(images[0])}, "class_id": 3}]}).json()["predictions"]
    assert asked[0]["class_name"] == contract.CLASS_NAMES[3]


def test_model_status_has_tf_servings_shape(server):
    response = requests.get(server.url + "/v1/models/cxr", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(server.url + "/v1/models/cxr/versions/1", timeout=10).status_code == 200


def test_metadata_lists_the_signatures_as_tf_serving_prints_them(server):
    document = requests.get(server.url + "/v1/models/cxr/metadata", timeout=10).json()
    assert document["model_spec"] == {"name": "cxr", "signature_name": "", "version": "1"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert {contract.PREDICT_SIGNATURE, contract.EXPLAIN_SIGNATURE} <= set(signatures)
    images = signatures[contract.PREDICT_SIGNATURE]["inputs"]["images"]
    assert images["dtype"] == "DT_STRING" and images["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signatures[contract.PREDICT_SIGNATURE]["method_name"] == "tensorflow/serving/predict"


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/cxr/versions/1:predict", 200, None),
    ("/v1/models/cxr/versions/7:predict", 404, "Servable not found for request: Specific(cxr, 7)"),
    ("/v1/models/other:predict", 404, "Servable not found for request: Latest(other)"),
    ("/v1/models/cxr/labels/stable:predict", 400, "Unrecognized servable version label: stable"),
    ("/v1/models/cxr/versions/one:predict", 400, "Malformed request"),
    ("/v1/models/cxr:classify", 501, ":predict only"),
])
def test_versions_labels_and_models_are_resolved_as_tf_serving_does(server, path, status, message):
    response = _post(server, {"instances": [{"b64": _b64(demo_png(1))}]}, path)
    assert response.status_code == status
    if message:
        assert message in response.json()["error"]


def _truncated_png():
    data = demo_png(2)
    return data[:len(data) // 2]


def _one(image: bytes) -> dict:
    return {"instances": [{"b64": _b64(image)}]}


@pytest.mark.parametrize("name, body, status, message", [
    ("not an image", lambda: _one(b"hello, not an image"), 400, "not a PNG or JPEG file"),
    ("truncated PNG", lambda: _one(_truncated_png()), 400, "PNG"),
    ("pixel bomb", lambda: _one(encode(Image.new("L", (1_200, 1_000)), "PNG")), 400, "declares more than"),
    ("empty instances", lambda: {"instances": []}, 400, "No values in 'instances' array"),
    ("unknown signature", lambda: {"signature_name": "nope", **_one(demo_png(1))}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("malformed JSON", lambda: b'{"instances": [', 400, "JSON Parse error"),
    ("not an object", lambda: b"[1, 2]", 400, "Is not object"),
    ("no instances or inputs", lambda: {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    ("both instances and inputs", lambda: {"instances": [1], "inputs": [1]}, 400, "only one of 'inputs' or 'instances'"),
    ("bad base64", lambda: {"instances": [{"b64": "%%%"}]}, 400, "Unable to base64 decode"),
    ("numbers for strings", lambda: {"instances": [1.5]}, 400, "expected string values"),
    ("oversized body", lambda: b'{"instances": ["' + b"A" * MAX_BODY + b'"]}', 413, "over the server's limit"),
])
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_answering(server, name, body, status, message):
    response = _post(server, body())
    assert response.status_code == status, (name, response.text)
    assert message in response.json()["error"], name
    good = _post(server, _one(demo_png(3)))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1, name


def test_concurrent_requests_are_all_answered_correctly(server, loaded_model):
    images = _images()
    expected = _direct(loaded_model, images)["class_id"].tolist()

    def ask(_):
        response = _post(server, {"instances": [{"b64": _b64(i)} for i in images]})
        return response.status_code, [p["class_id"] for p in response.json()["predictions"]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(24)))
    assert answers == [(200, expected)] * 24


def _wait_for(condition, timeout_s=90.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not true after {timeout_s} s")


def _states(running) -> dict:
    answer = requests.get(running.url + "/v1/models/cxr", timeout=10).json()
    return {int(entry["version"]): (entry["state"], entry["status"]["error_message"])
            for entry in answer["model_version_status"]}


def test_a_newly_pushed_version_is_served_without_restart_and_a_broken_push_is_not(model_base_path, tmp_path):
    base_path = str(tmp_path / "cxr")
    shutil.copytree(os.path.join(model_base_path, "1"), os.path.join(base_path, "1"))
    running = start(ServerSettings(model_base_path=base_path, rest_api_port=0, file_system_poll_wait_seconds=0.2))
    try:
        shutil.copytree(os.path.join(base_path, "1"), os.path.join(tmp_path, "staging"))
        os.rename(os.path.join(tmp_path, "staging"), os.path.join(base_path, "2"))
        answered_while_loading = []
        while _states(running).get(2, ("",))[0] != "AVAILABLE":
            answered_while_loading.append(_post(running, _one(demo_png(4))).status_code)
            time.sleep(0.05)
        assert set(answered_while_loading) <= {200}
        _wait_for(lambda: _states(running)[1][0] == "END")
        assert _post(running, _one(demo_png(4)), "/v1/models/cxr/versions/2:predict").status_code == 200
        assert _post(running, _one(demo_png(4)), "/v1/models/cxr/versions/1:predict").status_code == 404

        os.makedirs(os.path.join(base_path, "3"))
        with open(os.path.join(base_path, "3", "saved_model.pb"), "wb") as f:
            f.write(b"half-copied")
        _wait_for(lambda: 3 in _states(running))
        state, error = _states(running)[3]
        assert state == "END" and "version 3 failed to load" in error
        assert _states(running)[2][0] == "AVAILABLE"
        assert _post(running, _one(demo_png(4))).status_code == 200
    finally:
        running.stop()


def test_labels_come_from_the_model_config_file(model_base_path, tmp_path):
    config = tmp_path / "model_config.pbtxt"
    config.write_text('model_config_list { config { name: "cxr" base_path: "%s" model_platform: "tensorflow" '
                      'model_version_policy { specific { versions: 1 } } '
                      'version_labels { key: "stable" value: 1 } } }' % model_base_path)
    running = start(ServerSettings(model_config_file=str(config), rest_api_port=0))
    try:
        assert _post(running, _one(demo_png(5)), "/v1/models/cxr/labels/stable:predict").status_code == 200
        canary = _post(running, _one(demo_png(5)), "/v1/models/cxr/labels/canary:predict")
        assert canary.status_code == 400 and "Unrecognized servable version label: canary" in canary.json()["error"]
    finally:
        running.stop()


def test_the_server_binds_this_machine_only_by_default(server):
    # The module's server is started with the default host.
    assert server.http.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
