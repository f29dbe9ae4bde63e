"""The `cxr` command line: what a user types and what they read back."""
import argparse
import os
import re
import subprocess
import sys
import textwrap

import pytest

from cxr import cli


def test_build_tfrecords_without_sources_says_what_to_give(tmp_path, capsys):
    assert cli.main(["build-tfrecords", "--out", str(tmp_path)]) == 2
    assert "give at least one dataset folder" in capsys.readouterr().err


def test_an_unknown_mapping_file_is_named(tmp_path, capsys):
    code = cli.main(["build-tfrecords", "--curated", str(tmp_path), "--out", str(tmp_path),
                     "--mapping", str(tmp_path / "mine.yaml")])
    assert code == 2
    assert f"cannot read mapping file {tmp_path / 'mine.yaml'}" in capsys.readouterr().err


def test_a_missing_nih_label_file_is_reported(tmp_path, capsys):
    (tmp_path / "nih" / "images_001" / "images").mkdir(parents=True)
    code = cli.main(["build-tfrecords", "--nih", str(tmp_path / "nih"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv in" in capsys.readouterr().err


def test_demo_data_refuses_tiny_images(tmp_path, capsys):
    assert cli.main(["demo-data", "--out", str(tmp_path), "--size", "4"]) == 2
    assert "--size must lie in 32..2048" in capsys.readouterr().err


HEAVY = ("tensorflow", "tfx", "tensorflow_transform", "tensorflow_model_analysis", "apache_beam", "tf_keras")


def _cli_without_heavy_imports(args, cwd):
    """cxr with TensorFlow, TFX and Beam made unimportable: what it answers before it would need them."""
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError("imported before the flags were checked: " + name)
        sys.meta_path.insert(0, Block())
        from cxr.cli import main
        sys.exit(main({args!r}))
    """)
    return subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "demoo"], "invalid choice: 'demoo' (choose from 'demo', 'study')"),
    (["run", "--set", "training.epoch=3"], "unknown setting training.epoch"),
    (["run", "--set", "tuner.algorithm=grid"], "tuner.algorithm must be one of random, bayesian, hyperband"),
    (["run", "--set", "data.tfrecords_dir=nowhere"],
     "no span under {cwd}/nowhere (data.tfrecords_dir): expected span-N/*.tfrecord.gz, which "
     "`cxr build-tfrecords --out nowhere` writes"),
    (["kfp", "compile", "--config", "missing.yaml"], "cannot read configuration file missing.yaml"),
    (["report", "--metadata", "missing.sqlite"], "no ML Metadata at missing.sqlite"),
])
def test_flags_and_configuration_are_checked_before_tensorflow_is_imported(tmp_path, args, message):
    done = _cli_without_heavy_imports(args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message.format(cwd=tmp_path) in done.stderr
    assert not os.listdir(tmp_path)  # nothing created: no empty metadata file, no folders


def test_the_demo_preset_finds_the_folders_make_demo_writes():
    from cxr.pipeline.config import PRESETS
    demo = PRESETS["demo"]
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "Makefile")) as f:
        makefile = f.read()
    [demo_dir] = re.findall(r"^DEMO_DIR := (\S+)$", makefile, flags=re.M)
    [spans_out] = re.findall(r"--out (\S+) --span", makefile)
    # What make demo writes its spans to is what the preset reads, and every folder of the preset is under it.
    assert spans_out.replace("$(DEMO_DIR)", demo_dir) == demo.data.tfrecords_dir
    assert all(path.startswith(demo_dir + "/") for path in demo.storage_paths().values())
    # So the commands after it need no flags.
    assert "cxr run --preset demo $(DEMO_RUN_FLAGS)\n" in makefile and "cxr report\n" in makefile


@pytest.mark.slow
def test_readme_main_job_runs_with_the_default_multiprocess_runner(tmp_path):
    """The installed `cxr` script, as the README runs it: demo data, then a span."""
    cxr = os.path.join(os.path.dirname(sys.executable), "cxr")
    raw, out = tmp_path / "raw", tmp_path / "tfrecords"
    subprocess.run([cxr, "demo-data", "--out", str(raw), "--per-class", "12", "--size", "64"], check=True)
    result = subprocess.run(
        [cxr, "build-tfrecords", "--covid-radiography", str(raw / "covid19-radiography-database"),
         "--curated", str(raw / "curated-cxr"), "--nih", str(raw / "nih-chest-xrays"),
         "--out", str(out), "--span", "2", "--beam-arg=--direct_num_workers=2"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "balanced: seen = written + duplicate + conflict + quarantined + unmapped" in result.stdout
    shards = [n for n in os.listdir(out / "span-2") if n.endswith(".tfrecord.gz")]
    assert len(shards) >= 2, shards  # one shard per worker bundle at least
    assert "PNEUMOTHORAX" in result.stdout and "BACTERIAL_PNEUMONIA" in result.stdout


@pytest.mark.slow
def test_cxr_predict_asks_cxr_serve_as_the_readme_main_job_ends(model_base_path, tmp_path):
    """The installed scripts, as scripts/demo_predict.sh runs them: serve on a free port, then predict."""
    from helpers import write
    from trained_model import demo_png
    cxr = os.path.join(os.path.dirname(sys.executable), "cxr")
    server = subprocess.Popen([cxr, "serve", "--model_base_path", model_base_path, "--rest_api_port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = re.search(r"at (http://\S+)/v1/models/cxr$", server.stdout.readline().strip()).group(1)
        image = write(str(tmp_path / "covid.png"), demo_png(1, "COVID"))
        done = subprocess.run([cxr, "predict", image, "--url", url, "--wait", "60", "--explain", str(tmp_path)],
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert re.search(r"^covid\.png\s+(BACTERIAL_PNEUMONIA|COVID|NORMAL|PNEUMOTHORAX)\s", done.stdout, re.M)
        assert (tmp_path / "covid_gradcam.png").is_file()
    finally:
        server.terminate()
        server.wait(30)


def _flag_defaults(*command):
    parser = cli._parser()
    for name in command:
        [subparsers] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        parser = subparsers.choices[name]
    return {action.dest: action.default for action in parser._actions if action.dest != "help"}


def test_the_flags_defaults_are_the_settings_types_own():
    import dataclasses
    from cxr.dataprep.config import IngestConfig
    from cxr.dataprep.demo_data import DemoDataSpec
    from cxr.serving.client import ServingClient
    from cxr.serving.server_settings import ServerSettings
    serve = _flag_defaults("serve")
    assert serve.pop("model_base_path") == "demo/serving/cxr"  # where make demo pushes, not the type's None
    serve["request_log_label_rates"] = tuple(serve["request_log_label_rates"])  # appended to, so a list
    assert serve == {name: value for name, value in dataclasses.asdict(ServerSettings()).items()
                     if name != "model_base_path"}
    predict = _flag_defaults("predict")
    client = ServingClient()
    assert (predict["url"], predict["model"], predict["timeout"], predict["retries"]) == (
        client.url, client.model, client.timeout_s, client.retries)
    demo = _flag_defaults("demo-data")
    spec = DemoDataSpec(out_dir="x")
    assert (demo["per_class"], demo["size"], demo["seed"]) == (spec.per_class, spec.size, spec.seed)
    build = _flag_defaults("build-tfrecords")
    ingest = IngestConfig(source_roots={"nih": "x"}, out_dir="x")
    assert (build["span"], build["near_duplicate_distance"], build["max_pixels"]) == (
        ingest.span, ingest.near_duplicate_max_distance, ingest.max_pixels)


@pytest.mark.parametrize("args, status, said", [
    (["--help"], 0, "usage: cxr"),
    (["run", "--preset", "nope"], 2, "invalid choice: 'nope'"),
    (["demo-data", "--out", "{tmp}", "--size", "8"], 2, "cxr demo-data: error:"),
])
def test_the_command_ends_with_main_s_status_and_all_it_printed(tmp_path, args, status, said):
    # cli.entry leaves without Python's teardown (os._exit): nothing printed may be lost on the way out.
    done = subprocess.run([sys.executable, "-m", "cxr", *[a.replace("{tmp}", str(tmp_path)) for a in args]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == status
    assert said in done.stdout + done.stderr
