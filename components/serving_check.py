"""ServingCheck: the candidate served before it is pushed, in the way TF Serving will serve it.

TFX's InfraValidator does this with Docker or a Kubernetes cluster, neither of which every
installation has. This component starts the development server (`cxr serve`, TF Serving's REST
API) in a fresh process on the candidate: it loads the SavedModel and replays its warm-up file as
TF Serving does. Then it sends the test split's encoded images through `serving_default` with
the project's REST client (`serving.client`, what `cxr predict` uses), and checks that:
- every request is answered, every probability is finite and each image's sum to 1;
- the arg-max of those answers scores the accuracy the Evaluator measured on the same split
  through `serving_examples` (so raw bytes and tf.Examples take the same path through the model);
- the median latency per image of single-image requests stays within `max_latency_ms`;
- in every class x source slice with at least `min_slice_examples` test images, the share of that
  class found is at least `min_slice_recall` (DeGrave et al. 2021: these models learn the source).
  This rule lives here rather than in the Evaluator's thresholds because TFMA cannot leave out
  slices by size, and small slices would fail on chance alone; here the per-image answers are at hand.
Its InfraBlessing is what the Pusher requires besides the Evaluator's blessing: a model that fails
the check is not pushed, and the artifact says why. A model that passes leaves its answers on the
test split beside it (contract.SERVING_CHECK_ANSWERS_FILE): `cxr monitor` compares the answers the
pushed version gives in service with them.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.utils import path_utils

from cxr import classification, contract
from cxr.components import artifacts
from cxr.components.settings import GateSettings, from_json
from cxr.contract import LABELS
from cxr.serving.client import ServingClient, ServingRequestError

LATENCY_REQUESTS = 30  # single-image requests timed for the median
BATCH = 16
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120
SERVED_NAME = contract.MODEL_NAME  # the candidate is served as version 1 of this model
# The server the check starts as a process of its own: no import of this module reaches it, so the code
# fingerprint (pipeline/fingerprint.py) follows it from here, and a change to serving reruns the check.
SERVER_MODULE = "cxr.serving.dev_server"
SUBPROCESS_MODULES = (SERVER_MODULE,)


class ServingCheckFailed(Exception):
    """Why the candidate must not be pushed."""


def check_candidate(model_dir: str, examples_uri: str, evaluated_accuracy: float, gate: GateSettings) -> dict:
    """The check's findings; raises ServingCheckFailed with the reason when the candidate fails."""
    images, labels, sources = test_images(examples_uri)
    if not images:
        raise ServingCheckFailed(f"no test images under {examples_uri}")
    with _served(model_dir) as client:
        latencies = [_timed_predict(client, [image])[1] for image in images[:LATENCY_REQUESTS]]
        probabilities = np.concatenate([_timed_predict(client, images[start:start + BATCH])[0]
                                        for start in range(0, len(images), BATCH)])
    _check_distributions(probabilities)
    served_accuracy = float(np.mean(probabilities.argmax(axis=1) == np.array(labels)))
    if abs(served_accuracy - evaluated_accuracy) > 1e-6:
        raise ServingCheckFailed(f"served, the test split scores accuracy {served_accuracy:.6f}; the Evaluator "
                                 f"measured {evaluated_accuracy:.6f} on the same images")
    weak = weak_slices(probabilities.argmax(axis=1), labels, sources, gate)
    if weak:
        raise ServingCheckFailed("class x source slices under gate.min_slice_recall "
                                 f"{gate.min_slice_recall:g}: " + "; ".join(weak))
    p50_ms = float(np.median(latencies)) * 1000
    if p50_ms > gate.max_latency_ms:
        raise ServingCheckFailed(f"median latency {p50_ms:.0f} ms per image over REST, over gate.max_latency_ms "
                                 f"{gate.max_latency_ms:g}")
    return {"images": len(images), "p50_ms": p50_ms, "accuracy": served_accuracy, "probabilities": probabilities}


def weak_slices(predicted, labels: List[int], sources: List[str], gate: GateSettings) -> List[str]:
    """'COVID from curated: 3 of 12 found (0.25)' for each large enough slice under the recall limit."""
    keys = [f"{LABELS[label]} from {source}" for label, source in zip(labels, sources)]
    # A slice of one class holds that class's recall as its accuracy.
    table = classification.sliced_accuracy(np.array(labels), np.asarray(predicted), keys)
    return [f"{key}: {row['hits']} of {row['count']} found ({row['accuracy']:.2f})" for key, row in table.items()
            if row["count"] >= gate.min_slice_examples and row["accuracy"] < gate.min_slice_recall]


def test_images(examples_uri: str) -> Tuple[List[bytes], List[int], List[str]]:
    """The test split's encoded images, class ids and sources."""
    images, labels, sources = [], [], []
    for batch in artifacts.read_split(examples_uri, contract.TEST, (contract.IMAGE, contract.LABEL, contract.SOURCE)):
        images += list(batch[contract.IMAGE])
        labels += [LABELS.index(label.decode()) for label in batch[contract.LABEL]]
        sources += [source.decode() for source in batch[contract.SOURCE]]
    return images, labels, sources


class _served:
    """`with _served(model_dir) as client:` the development server on a copy laid out as a model base path,
    and a `serving.client` for it. The server is given port 0 and writes the URL it got to a file."""

    def __init__(self, model_dir: str):
        self._model_dir = model_dir

    def __enter__(self) -> ServingClient:
        self._work = tempfile.mkdtemp(prefix="serving-check-")
        artifacts.copy_tree(self._model_dir, os.path.join(self._work, SERVED_NAME, "1"))  # the model may be in a bucket
        address = os.path.join(self._work, "address")
        # Its log goes to a file: a pipe nobody reads while it serves would stop it once full.
        self._log_path = os.path.join(self._work, "server.log")
        with open(self._log_path, "w") as log:
            settings = {"model_base_path": os.path.join(self._work, SERVED_NAME), "model_name": SERVED_NAME,
                        "rest_api_port": 0, "address_file": address}
            self._server = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE, "--settings", json.dumps(settings)],
                stdout=subprocess.DEVNULL, stderr=log)
        try:
            url = self._wait_for(address)
        except ServingCheckFailed:
            self.__exit__()
            raise
        return ServingClient(url=url, model=SERVED_NAME, timeout_s=REQUEST_TIMEOUT_S, retries=0)

    def _wait_for(self, address: str) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(address):
            if self._server.poll() is not None:
                raise ServingCheckFailed(f"the serving process did not start: {self._last_log_line()}")
            if time.monotonic() > deadline:
                raise ServingCheckFailed(f"the serving process did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.1)
        with open(address, encoding="utf-8") as f:
            return f.read().strip()

    def _last_log_line(self) -> str:
        with open(self._log_path) as log:
            lines = [line for line in log.read().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self._server.returncode}"

    def __exit__(self, *exc) -> None:
        self._server.terminate()
        try:
            self._server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._server.kill()
        shutil.rmtree(self._work, ignore_errors=True)


def _timed_predict(client: ServingClient, images: List[bytes]) -> Tuple[np.ndarray, float]:
    started = time.perf_counter()
    try:
        predictions = client.predict(images)
    except ServingRequestError as error:
        raise ServingCheckFailed(f"a test image was answered {error.message}") from error
    took = (time.perf_counter() - started) / len(images)
    return np.array([p[contract.PROBABILITIES] for p in predictions], dtype=float), took


def _check_distributions(probabilities: np.ndarray) -> None:
    if not np.all(np.isfinite(probabilities)):
        raise ServingCheckFailed(f"{int(np.sum(~np.isfinite(probabilities)))} probabilities are not finite")
    sums = probabilities.sum(axis=1)
    if np.any(np.abs(sums - 1) > 1e-3):
        raise ServingCheckFailed(f"probabilities do not sum to 1: {sums[np.abs(sums - 1) > 1e-3][:5]}")


def _write_answers(folder: str, probabilities: np.ndarray) -> None:
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(os.path.join(folder, contract.SERVING_CHECK_ANSWERS_FILE), "w") as f:
        json.dump({contract.PROBABILITIES: np.round(probabilities, 6).tolist()}, f)


def evaluated_accuracy(evaluation_uri: str) -> float:
    accuracy = artifacts.evaluation_metrics(evaluation_uri).get(contract.OVERALL, {}).get(contract.ACCURACY)
    if accuracy is None:
        raise ServingCheckFailed(f"no overall accuracy in the Evaluator's result at {evaluation_uri}")
    return float(accuracy)


@tfx.dsl.components.component
def ServingCheck(model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
                 examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
                 evaluation: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
                 blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.InfraBlessing],
                 settings: tfx.dsl.components.Parameter[str],
                 code_fingerprint: tfx.dsl.components.Parameter[str]) -> None:
    """settings: `to_json(GateSettings)`; code_fingerprint only keys the cache (pipeline/fingerprint.py)."""
    try:
        found = check_candidate(path_utils.serving_model_path(model.uri), examples.uri,
                                evaluated_accuracy(evaluation.uri), from_json(GateSettings, settings, "gate"))
        verdict, blessed = (f"{found['images']} test images served through {contract.PREDICT_SIGNATURE} agree with "
                            f"the Evaluator (accuracy {found['accuracy']:.4f}); median {found['p50_ms']:.0f} ms "
                            f"per image"), 1
        blessing.set_float_custom_property("p50_ms", found["p50_ms"])
        _write_answers(blessing.uri, found["probabilities"])
    except ServingCheckFailed as failure:
        verdict, blessed = str(failure), 0
    blessing.set_int_custom_property(contract.INFRA_BLESSED, blessed)
    blessing.set_string_custom_property(contract.SERVING_CHECK_VERDICT, verdict)
