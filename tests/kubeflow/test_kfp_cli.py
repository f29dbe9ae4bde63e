"""`cxr kfp ...` as a user types it: compile the real pipeline, then submit and schedule it to the fake KFP API."""
from cxr.cli import main


def test_compile_then_submit_then_schedule_the_pipeline(kfp_server, tmp_path, capsys):
    out = str(tmp_path / "build")
    assert main(["kfp", "compile", "--set", "pipeline_root=gs://bucket/root", "--out", out]) == 0
    package = f"{out}/pipeline.yaml"
    assert f"compiled for kfp: {package}" in capsys.readouterr().out

    assert main(["kfp", "submit", "--host", kfp_server.url, "--package", package, "--token", "s3cret"]) == 0
    assert "/#/runs/details/" in capsys.readouterr().out
    [upload] = kfp_server.requests_to("POST", "/pipelines/upload")
    with open(package, "rb") as f:
        assert f.read() in upload.files.values()
    assert upload.headers["authorization"] == "Bearer s3cret"

    assert main(["kfp", "schedule", "--host", kfp_server.url, "--package", package, "--name", "nightly",
                 "--cron", "0 0 3 * * *"]) == 0
    assert "recurring run 'nightly'" in capsys.readouterr().out
    assert main(["kfp", "schedules", "--host", kfp_server.url]) == 0
    listed = capsys.readouterr().out
    assert "nightly" in listed and "0 0 3 * * *" in listed
    assert main(["kfp", "unschedule", "nightly", "--host", kfp_server.url]) == 0
    assert "recurring run 'nightly'" in capsys.readouterr().out
    deleted = [r for r in kfp_server.requests if r.method == "DELETE"]
    assert len(deleted) == 1 and deleted[0].path.startswith("/apis/v2beta1/recurringruns/")
    assert main(["kfp", "schedules", "--host", kfp_server.url]) == 0
    assert "nightly" not in capsys.readouterr().out


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
