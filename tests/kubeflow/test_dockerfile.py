"""kubeflow/Dockerfile, read as Docker reads it (Docker itself is not on these machines)."""
import os
import re
import shlex

PACKAGE_FOLDERS = ("cxr", "pipeline", "components", "kubeflow", "serving")  # setup.py maps them under cxr
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _instructions():
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    with open(os.path.join(ROOT, "kubeflow", "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def _all(name):
    return [arguments for instruction, arguments in _instructions() if instruction.upper() == name]


def test_the_image_starts_from_tfx_1_16():
    [base_arg] = [a for a in _all("ARG") if a.startswith("BASE_IMAGE=")]
    assert base_arg == "BASE_IMAGE=gcr.io/tfx-oss-public/tfx:1.16.0"
    assert _all("FROM") == ["${BASE_IMAGE}"]


def test_every_step_runs_with_legacy_keras():
    env = dict(pair.split("=", 1) for arguments in _all("ENV") for pair in shlex.split(arguments))
    assert env["TF_USE_LEGACY_KERAS"] == "1"


def test_the_project_is_copied_and_installed_without_re_resolving_the_stack():
    copied = {shlex.split(arguments)[0].rstrip("/") for arguments in _all("COPY")}
    assert {"setup.py", *PACKAGE_FOLDERS} <= copied
    [install] = _all("RUN")
    assert "pip install --no-deps ." in install
    assert "import cxr.components.trainer" in install, "the build fails if a component cannot be imported"


def test_the_build_imports_the_module_every_kubeflow_task_runs():
    from cxr.kubeflow.kfp_pipeline import TASK_COMMAND
    python, flag, module = TASK_COMMAND
    assert (python, flag) == ("python", "-m")
    [install] = _all("RUN")
    assert f"{module}," in install or f"{module}\"" in install
