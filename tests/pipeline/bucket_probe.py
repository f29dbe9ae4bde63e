"""Run inside the GCS sandbox by test_bucket_storage.py: reads back what the run left in the bucket.

    python bucket_probe.py METADATA_SQLITE MODEL_BASE_PATH IMAGE MONITORING_ROOT

Prints one JSON line: the run's summary (its evaluation is read from gs://), the ServingCheck's verdict,
the epochs of the learning curves the report reads from the Trainer's gs:// logs, the version
`cxr serve` loaded from the gs:// base path, what `cxr predict` answered for IMAGE, and what `cxr monitor`
made of the request `cxr serve` logged under MONITORING_ROOT/log (its monitoring.json, read back from
MONITORING_ROOT/out).
"""
import json
import re
import subprocess
import sys
import time

import requests

from cxr.pipeline.metadata_reader import read_run, sqlite_connection
from cxr.pipeline.report.collect import learning_curves


def main(metadata: str, model_base_path: str, image: str, monitoring_root: str) -> None:
    summary, outputs = read_run(sqlite_connection(metadata))
    curves = learning_curves(outputs["Trainer"]["model_run"].uri)
    found = {"statuses": summary.statuses, "blessed": summary.blessed, "pushed_to": summary.pushed_to,
             "test_examples": summary.metrics[""]["example_count"],
             "examples_uri": outputs["ImportExampleGen"]["examples"].uri,
             "verdict": outputs["ServingCheck"]["blessing"].custom_properties["verdict"].string_value,
             "epochs": {phase: len(values.get("loss", [])) for phase, values in curves.items()}}
    since = time.time() - 1
    found.update(_served(model_base_path, image, f"{monitoring_root}/log"))
    found["monitored"] = _monitored(metadata, model_base_path, monitoring_root, since)
    print(json.dumps(found))


def _monitored(metadata: str, model_base_path: str, root: str, since: float) -> dict:
    import tensorflow as tf
    done = subprocess.run(["cxr", "monitor", "--logs", f"{root}/log", "--metadata", metadata, "--model_base_path",
                           model_base_path, "--since", str(since), "--until", str(time.time() + 1), "--out",
                           f"{root}/out"], capture_output=True, text=True)
    if done.returncode not in (0, 4):
        return {"error": done.stderr[-3000:]}
    with tf.io.gfile.GFile(f"{root}/out/monitoring.json") as f:
        return json.load(f)


def _served(model_base_path: str, image: str, log_root: str) -> dict:
    server = subprocess.Popen(["cxr", "serve", "--model_base_path", model_base_path, "--rest_api_port", "0",
                               "--request_log_root", log_root, "--request_log_sample_rate", "1.0"],
                              stdout=subprocess.PIPE, text=True)  # its log goes to stderr, the test's output
    try:
        first_line = server.stdout.readline()
        started = re.search(r"at (http://\S+)/v1/models/", first_line)
        assert started, f"cxr serve did not start on {model_base_path}: {first_line!r}"
        url = started.group(1)
        status = requests.get(f"{url}/v1/models/cxr", timeout=60).json()["model_version_status"]
        predicted = subprocess.run(["cxr", "predict", image, "--url", url, "--wait", "60", "--json"],
                                   capture_output=True, text=True)
        answer = json.loads(predicted.stdout)[0] if predicted.returncode == 0 else {"error": predicted.stderr}
        return {"served_version": int(status[0]["version"]), "predicted": answer}
    finally:
        server.terminate()  # SIGTERM: it writes its request log's file into the bucket, then exits
        server.wait(30)


if __name__ == "__main__":
    main(*sys.argv[1:])
