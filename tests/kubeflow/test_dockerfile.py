"""kubeflow/Dockerfile: the image's Python environment, rebuilt from the Dockerfile's own lines without
Docker (image_env.py, the `image` fixture), runs what a cluster runs in it, from its working directory."""
import json
import os
import re

import pytest
from google.protobuf import json_format

import image_env
from cxr.cli import _parser
from cxr.kubeflow.kfp_pipeline import TASK_COMMAND
from cxr.pipeline.node_launcher import compile_run
from cxr.pipeline.config import load_config

IMAGE_LOCK = os.path.join(image_env.ROOT, "kubeflow", "image.lock")
DEVELOPMENT_LOCK = os.path.join(image_env.ROOT, "requirements.lock")


def _ok(done):
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_installed_package_is_what_the_images_working_directory_imports(image):
    assert not os.path.exists(os.path.join(image.workdir, "cxr")), "a source tree in the working directory"
    where = _ok(image.run(["python", "-c", "import cxr, cxr.dataprep, cxr.kubeflow; print(cxr.__file__)"]))
    assert where.strip() == os.path.join(image.env["VIRTUAL_ENV"], "lib", "python3.10", "site-packages", "cxr",
                                         "__init__.py")


def test_the_image_s_modules_are_compiled_at_install_as_its_user_cannot_write_them(image):
    # Without .pyc files, every task would compile the ~9,600 modules TFX imports (about 19 s each).
    assert image.env["PYTHONDONTWRITEBYTECODE"] == "1"
    script = ("import importlib.util, os, sys, tfx.v1, tensorflow_model_analysis, cxr.components.trainer\n"
              "print([m for m in ('tfx.v1', 'tensorflow_model_analysis', 'cxr.components.trainer')\n"
              "       if not os.path.isfile(importlib.util.cache_from_source(sys.modules[m].__file__))])")
    assert _ok(image.run(["python", "-c", script])).strip().splitlines()[-1] == "[]"


def test_every_kubeflow_task_and_the_serving_check_s_server_start_in_the_image(image):
    python, flag, module = TASK_COMMAND
    for step in ("node", "outputs"):
        assert "--run-id" in _ok(image.run([python, flag, module, step, "--help"]))
    # The ServingCheck starts this inside its task (it needs cxr.dataprep, which the CLI imports).
    assert "--model_base_path" in _ok(image.run(["python", "-m", "cxr", "serve", "--help"]))


def test_the_image_decodes_every_compressed_dicom_syntax(image, tmp_path):
    # The decoders are native wheels (openjpeg, libjpeg, CharLS, RLE): each must load in the image itself.
    import dicom_files as F
    from pydicom.uid import JPEG2000, JPEGLSNearLossless
    files = {"j2k-lossless.dcm": F.real_file("RG1_J2KR.dcm"), "jpeg-lossless.dcm": F.real_file("JPEG-LL.dcm"),
             "jpeg-extended.dcm": F.real_file("JPGExtended.dcm"), "rle.dcm": F.real_file("MR_small_RLE.dcm"),
             "jpeg-ls.dcm": F.dicom_file(syntax=JPEGLSNearLossless), "j2k-lossy.dcm": F.dicom_file(syntax=JPEG2000)}
    paths = []
    for name, data in files.items():
        paths.append(str(tmp_path / name))
        with open(paths[-1], "wb") as f:
            f.write(data)
    shown = _ok(image.run(["python", "-m", "cxr", "convert-dicom", *paths, "--out", str(tmp_path / "png"),
                           "--dicom-modalities", "CR,DX,NM,MR", "--dicom-allow-missing-view-position"]))
    assert shown.strip().splitlines()[-1] == f"{len(files)} converted, 0 refused", shown


def test_every_cxr_command_answers_help_in_the_image(image):
    commands = _subcommands(_parser())
    assert {("run",), ("serve",), ("kfp", "submit"), ("report",)} <= set(commands)
    script = ("import contextlib, io, json, sys\nfrom cxr.cli import main\nfailed = []\n"
              "for command in json.loads(sys.argv[1]):\n"
              "    shown = io.StringIO()\n"
              "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(shown):\n"
              "        main(command + ['--help'])\n"
              "    if not shown.getvalue().startswith('usage: cxr'):\n"
              "        failed.append(command)\n"
              "print(json.dumps(failed))")
    assert json.loads(_ok(image.run(["python", "-c", script, json.dumps(commands)])).splitlines()[-1]) == []
    assert "build-tfrecords" in _ok(image.run(["cxr", "--help"]))


def _subcommands(parser, prefix=()):
    found = []
    for action in parser._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                nested = _subcommands(sub, prefix + (name,))
                found += nested or [prefix + (name,)]
    return found


def test_the_image_imports_every_module_and_class_the_compiled_pipeline_names(image):
    ir = json_format.MessageToJson(compile_run(load_config("demo", overrides=["tuner.enabled=true"])))
    named = sorted(set(re.findall(r'"((?:cxr|tfx)\.[a-z_]+(?:\.\w+)+)"', ir)))
    assert "cxr.components.trainer.run_fn" in named and "cxr.components.serving_check.ServingCheck_Executor" in named
    script = ("import importlib, json, sys\nmissing = []\nfor path in json.loads(sys.argv[1]):\n"
              "    module, _, name = path.rpartition('.')\n"
              "    try:\n        getattr(importlib.import_module(module), name)\n"
              "    except (ImportError, AttributeError) as error:\n        missing.append(f'{path}: {error}')\n"
              "print(json.dumps(missing))")
    assert json.loads(_ok(image.run(["python", "-c", script, json.dumps(named)])).splitlines()[-1]) == []


DEVELOPMENT_ONLY = os.path.join(image_env.ROOT, "requirements-dev.in")
SCHEMAS_LOCK = os.path.join(image_env.ROOT, "requirements-schemas.lock")


def _requirements(path):
    """{name: (version, [sha256...])} of a lock file uv compiled with --generate-hashes."""
    found, name = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if re.match(r"^[A-Za-z0-9]", line):
                name, version = line.split(" ")[0].strip().split("==")
                found[name] = (version, [])
            elif line.strip().startswith("--hash=sha256:"):
                found[name][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
    return found


def _pins(path):
    return {name: version for name, (version, _) in _requirements(path).items()}


def _names(path):
    with open(path, encoding="utf-8") as f:
        return {re.split(r"[=<>\[ ]", line.strip())[0] for line in f if re.match(r"^[A-Za-z0-9]", line)}


def test_the_image_lock_is_the_development_lock_without_the_test_packages_plus_tensorflows_cuda_libraries():
    image_pins, development_pins = _pins(IMAGE_LOCK), _pins(DEVELOPMENT_LOCK)
    shared = set(image_pins) & set(development_pins)
    assert {name: image_pins[name] for name in shared} == {name: development_pins[name] for name in shared}
    added = {name: version for name, version in image_pins.items() if name not in development_pins}
    from importlib import metadata
    cuda_extra = {requirement.split(";")[0].replace(" ", "") for requirement in metadata.requires("tensorflow")
                  if "extra == 'and-cuda'" in requirement}
    assert {f"{name}=={version}" for name, version in added.items()} == cuda_extra
    # Test-only packages (pytest, the storage emulator, the DICOM test files, uv) stay out of the image.
    left_out = _names(DEVELOPMENT_ONLY)
    assert not _names(SCHEMAS_LOCK) & (set(image_pins) | set(development_pins))  # beside both, in neither
    assert {"pytest", "gcp-storage-emulator", "pydicom-data"} <= left_out
    assert left_out & set(development_pins) and not left_out & set(image_pins)


@pytest.mark.parametrize("lock", [IMAGE_LOCK, DEVELOPMENT_LOCK, SCHEMAS_LOCK, os.path.join(
    image_env.ROOT, "scripts", "uv-requirements.txt")], ids=["image", "development", "schemas", "uv"])
def test_every_locked_package_carries_the_sha256_of_its_files(lock):
    requirements = _requirements(lock)
    assert len(requirements) > (150 if lock in (IMAGE_LOCK, DEVELOPMENT_LOCK) else 0)
    assert not [name for name, (_, hashes) in requirements.items() if not hashes]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for _, hashes in requirements.values() for h in hashes)


def test_every_install_checks_the_hashes_with_the_pinned_uv():
    with open(image_env.DOCKERFILE, encoding="utf-8") as f:
        dockerfile = f.read()
    with open(os.path.join(image_env.ROOT, "scripts", "bootstrap.sh"), encoding="utf-8") as f:
        bootstrap = f.read()
    for text in (dockerfile, bootstrap):
        assert re.search(r"pip install [^\n]*--require-hashes -r [^\n]*uv-requirements\.txt", text)
        syncs = [line for line in text.splitlines() if "uv pip sync" in line and not line.lstrip().startswith("#")]
        assert syncs and all("--require-hashes" in line for line in syncs), syncs
    assert "uv pip install" not in re.sub(r"uv pip install [^\n]*--no-deps[^\n]*", "", dockerfile + bootstrap)
    # One uv version: what both install, and what the tests run (the development lock's).
    [pinned] = _pins(os.path.join(image_env.ROOT, "scripts", "uv-requirements.txt")).values()
    assert _pins(DEVELOPMENT_LOCK)["uv"] == pinned


def test_a_lock_file_with_a_wrong_hash_is_refused_by_the_install(tmp_path):
    # uv's --require-hashes refuses a file whose sha256 the lock does not hold, before installing anything.
    name, (version, _) = next((n, r) for n, r in _requirements(DEVELOPMENT_LOCK).items() if n == "six")
    (tmp_path / "bad.lock").write_text(f"{name}=={version} \\\n    --hash=sha256:{'0' * 64}\n")
    import subprocess, sys
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    uv = os.path.join(os.path.dirname(sys.executable), "uv")  # the development lock's, bootstrap's version
    done = subprocess.run([uv, "pip", "sync", "--require-hashes", "--python", str(tmp_path / "venv" / "bin" / "python"),
                           str(tmp_path / "bad.lock")], capture_output=True, text=True)
    assert done.returncode != 0 and "hash" in done.stderr.lower(), done.stderr
    assert not list((tmp_path / "venv").glob("lib/python*/site-packages/six*"))


def test_the_environment_holds_exactly_the_locks_versions(image):
    installed = {_normalized(entry["name"]): entry["version"] for entry in json.loads(
        _ok(image.run(["python", "-m", "pip", "list", "--format", "json"])))}
    expected = {_normalized(name): version for name, version in _pins(IMAGE_LOCK).items()
                if not image_env.GPU_ONLY_PACKAGES.match(f"{name}==")}
    assert {name: installed.get(name) for name in expected} == expected
    assert set(installed) - set(expected) == {"cxr-pipeline", "pip"}  # the project, and pip from --seed


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def test_tensorflow_finds_every_cuda_library_of_the_lock_through_ld_library_path(image):
    library_dirs = image.env["LD_LIBRARY_PATH"].split(":")
    site = os.path.join(image.env["VIRTUAL_ENV"], "lib", "python3.10", "site-packages")
    for package in _pins(IMAGE_LOCK):
        if image_env.GPU_ONLY_PACKAGES.match(f"{package}=="):
            folder = package[len("nvidia-"):-len("-cu12")].replace("-", "_")
            if folder != "cuda_nvcc":  # no libraries: ptxas and libdevice, for XLA
                assert os.path.join(site, "nvidia", folder, "lib") in library_dirs, package
    assert os.path.join(site, "nvidia", "cuda_nvcc", "bin") in image.env["PATH"].split(":")
    assert image.env["XLA_FLAGS"] == f"--xla_gpu_cuda_data_dir={os.path.join(site, 'nvidia', 'cuda_nvcc')}"
    assert image.env["TF_USE_LEGACY_KERAS"] == "1"


def test_the_image_runs_as_a_user_of_its_own_whose_home_is_the_working_directory(image):
    [user_setup] = image.skipped  # the one line the rebuild does not run, read here instead
    uid = re.search(r"--uid (\d+)", user_setup).group(1)
    assert image.user == uid != "0"  # numeric, so that Kubernetes' runAsNonRoot can check it
    home = re.search(r"--home-dir (\S+)", user_setup).group(1)
    assert image.env["HOME"] == os.path.join(image.root, home.lstrip("/")) == image.workdir
    # KFP's launcher makes its artifact folders as this user (launcher_v2.go, LocalPathForURI).
    for folder in (home, "/gcs", "/minio", "/s3"):
        assert re.search(rf"chown {uid}:0 [^&]*{re.escape(folder)}\b", user_setup), folder
        assert re.search(rf"chmod 0775 [^&]*{re.escape(folder)}\b", user_setup), folder


@pytest.mark.parametrize("path, sent", [
    ("setup.py", True), ("cxr/cli.py", True), ("dataprep/mappings/study.yaml", True), ("kubeflow/image.lock", True),
    (".venv/lib/python3.10/site-packages/tensorflow/__init__.py", False), ("demo/tfrecords/span-1/x.gz", False),
    (".git/HEAD", False), ("build/pipeline/x", False), ("cxr/__pycache__/cli.cpython-310.pyc", False),
    ("tests/conftest.py", False),
])
def test_the_build_context_carries_the_package_and_nothing_else(path, sent):
    rules = image_env._dockerignore(os.path.join(image_env.ROOT, ".dockerignore"))
    assert image_env._ignored(path, rules) is not sent


def test_a_run_line_naming_an_absolute_path_is_refused_by_the_rebuild(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM python:3.10-slim\nRUN pip install /wheels/x.whl\n")
    with pytest.raises(image_env.DockerfileError, match=r"RUN names \['/wheels/x.whl'\]"):
        image_env.build(str(tmp_path / "out"), path=str(tmp_path / "Dockerfile"), context=str(tmp_path))
