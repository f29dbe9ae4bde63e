"""`cxr kfp ...` as a user types it: compile the real pipeline, check it, submit and schedule it to the fake KFP API."""
import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
import yaml

from cxr.cli import main

CLUSTER = ["--set", "name=cxr-radiology", "--set", "kubeflow.image=registry.example.com/cxr-pipeline:1", "--set", "pipeline_root=gs://bucket/root",
           "--set", "data.tfrecords_dir=gs://bucket/tfrecords", "--set", "serving_dir=gs://bucket/serving"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("build"))
    assert main(["kfp", "compile", *CLUSTER, "--out", out]) == 0
    return f"{out}/pipeline.yaml"


def test_compile_then_submit_then_schedule_the_pipeline(kfp_server, package, capsys, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", package, "--token-file", str(token)]) == 0
    assert "/#/runs/details/" in capsys.readouterr().out
    [upload] = kfp_server.requests_to("POST", "/pipelines/upload")
    with open(package, "rb") as f:
        assert f.read() in upload.files.values()
    assert upload.headers["authorization"] == "Bearer s3cret"
    [run] = kfp_server.requests_to("POST", "/runs")
    assert run.body["runtime_config"]["parameters"] == {}  # the configuration is the parameter's default
    # KFP's backend takes a run's root from the run, not the spec: the bucket holds KFP's outputs too.
    assert run.body["runtime_config"]["pipeline_root"] == "gs://bucket/root"

    assert main(["kfp", "schedule", "--host", kfp_server.url, "--package", package, "--name", "nightly",
                 "--cron", "0 0 3 * * *"]) == 0
    assert "recurring run 'nightly'" in capsys.readouterr().out
    [recurring] = kfp_server.requests_to("POST", "/recurringruns")
    assert recurring.body["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    assert main(["kfp", "schedules", "--host", kfp_server.url]) == 0
    listed = capsys.readouterr().out
    assert "nightly" in listed and "0 0 3 * * *" in listed
    assert main(["kfp", "unschedule", "nightly", "--host", kfp_server.url]) == 0
    assert "recurring run 'nightly'" in capsys.readouterr().out
    deleted = [r for r in kfp_server.requests if r.method == "DELETE"]
    assert len(deleted) == 1 and deleted[0].path.startswith("/apis/v2beta1/recurringruns/")
    assert main(["kfp", "schedules", "--host", kfp_server.url]) == 0
    assert "nightly" not in capsys.readouterr().out


def test_the_configuration_parameter_is_sent_as_the_json_text_given(kfp_server, package, capsys):
    # The way to change a setting for one run (merged onto the compiled configuration by each task);
    # a struct for a STRING parameter is refused by KFP.
    text = '{"training": {"epochs": 3}}'
    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", package, "--param", f"config={text}"]) == 0
    [run] = kfp_server.requests_to("POST", "/runs")
    assert run.body["runtime_config"]["parameters"] == {"config": text}


def test_a_run_parameter_changing_what_the_spec_holds_is_refused_before_connecting(kfp_server, package, capsys):
    text = '{"kubeflow": {"volumes": ["other:/mnt/other"]}}'
    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", package, "--param", f"config={text}"]) == 2
    assert "changes kubeflow.volumes, which the compiled pipeline holds" in capsys.readouterr().err
    assert not kfp_server.requests


def test_more_than_ten_concurrent_runs_are_refused_before_connecting(kfp_server, package, capsys):
    assert main(["kfp", "schedule", "--host", kfp_server.url, "--package", package, "--name", "busy",
                 "--cron", "0 0 3 * * *", "--max-concurrency", "11"]) == 2
    assert "Max concurrency of a recurring run must be at least 1 and at most 10. Received 11" in (
        capsys.readouterr().err)
    assert kfp_server.requests == []


def test_compiling_the_example_file_as_is_names_what_to_replace(tmp_path, capsys):
    assert main(["kfp", "compile", "--config", "kubeflow/cluster.example.yaml", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "kubeflow.image is 'YOUR-REGISTRY/cxr-pipeline:1'" in error
    assert not (tmp_path / "pipeline.yaml").exists()


def test_the_example_file_is_refused_before_tfx_or_tensorflow_is_imported(tmp_path):
    # A left-over YOUR-... is answered at once, not after TFX's import (53 s on two cores).
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tfx", "apache_beam"):
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        from cxr.cli import main
        sys.exit(main(["kfp", "compile", "--config", "kubeflow/cluster.example.yaml", "--out", {str(tmp_path)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 2, done.stderr
    assert "kubeflow.image is 'YOUR-REGISTRY/cxr-pipeline:1'" in done.stderr and "blocked" not in done.stderr


def test_a_package_kfp_would_refuse_is_refused_before_connecting(kfp_server, package, tmp_path, capsys):
    with open(package) as f:
        documents = list(yaml.safe_load_all(f))
    documents[0]["schemaVersion"] = "2.0.0"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump_all(documents))
    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", str(tmp_path / "old.yaml")]) == 2
    assert "KFP only supports schema version 2.1.0, but the pipeline spec has version 2.0.0" in capsys.readouterr().err
    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", package, "--param", "epochs=3"]) == 2
    assert "not required by pipeline: epochs" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_a_dead_host_is_one_line_naming_it(package, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["kfp", "submit", "--host", f"http://127.0.0.1:{port}", "--package", package]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert f"cannot reach the Kubeflow Pipelines API at http://127.0.0.1:{port}" in error
    assert "Connection refused" in error


def test_a_host_that_is_not_the_kfp_api_is_one_line_naming_it(package, capsys):
    class NotKfp(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            page = b"<html><body>Kubeflow Central Dashboard</body></html>"
            self.send_response(404)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["kfp", "schedules", "--host", host]) == 2
    finally:
        server.shutdown()
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert f"the Kubeflow Pipelines API at {host} answered HTTP 404" in error
    assert "Kubeflow Central Dashboard" in error and "is this the Kubeflow Pipelines API?" in error


def test_a_unix_cron_is_refused_before_anything_is_uploaded(kfp_server, tmp_path, capsys):
    package = tmp_path / "pipeline.yaml"
    package.write_text("{}")
    assert main(["kfp", "schedule", "--host", kfp_server.url, "--package", str(package), "--name", "nightly",
                 "--cron", "0 3 * * *"]) == 2
    assert "six fields" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_submit_without_a_compiled_pipeline_says_to_compile_first(kfp_server, tmp_path, capsys):
    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", str(tmp_path / "none.yaml")]) == 2
    assert "run `cxr kfp compile` first" in capsys.readouterr().err


def test_a_token_is_taken_from_a_file_or_the_environment_and_never_sent_over_plain_http(kfp_server, package,
                                                                                        capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_KFP_TOKEN", "from-the-environment")
    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", package]) == 0
    assert kfp_server.requests_to("POST", "/pipelines/upload")[-1].headers["authorization"] == "Bearer from-the-environment"
    assert main(["kfp", "submit", "--host", "http://kfp.hospital.example:8080", "--package", package]) == 2
    assert "refusing to send the token or cookies to http://kfp.hospital.example:8080 over plain HTTP" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["kfp", "submit", "--host", kfp_server.url, "--package", package, "--token", "s3cret"])
