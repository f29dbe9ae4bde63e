"""The installed package, as the pipeline image installs it (not editable): code and the data it reads."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_built_package_holds_every_module_under_cxr_and_the_files_read_at_run_time(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "setup.py", "--quiet", "build_py", "--build-lib", str(tmp_path)],
                   cwd=root, check=True, capture_output=True)
    built = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files}
    assert {"cxr/pipeline/schema/schema.pbtxt", "cxr/dataprep/mappings/study.yaml",
            "cxr/components/trainer.py", "cxr/components/drift.py", "cxr/kubeflow/runner.py",
            "cxr/contract.py", "cxr/dataprep/build.py", "cxr/serving/client.py", "cxr/cli.py"} <= built
    assert not [path for path in built if not path.startswith("cxr/")], "one import root: cxr"


def test_a_checkout_without_a_folder_setup_py_maps_does_not_build(tmp_path):
    # The first image's build context had no dataprep/; setup.py skipped it, and `cxr` failed in every task.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copy(os.path.join(root, "setup.py"), tmp_path)
    for folder in ("cxr", "pipeline", "components", "kubeflow", "serving"):
        shutil.copytree(os.path.join(root, folder), tmp_path / folder)
    built = subprocess.run([sys.executable, "setup.py", "--quiet", "build_py", "--build-lib", str(tmp_path / "lib")],
                           cwd=tmp_path, capture_output=True, text=True)
    assert built.returncode != 0
    assert f"{tmp_path / 'dataprep'}/__init__.py is missing; the package maps dataprep/ to cxr.dataprep" in built.stderr


IMPORTED_FOLDERS = """
import importlib, json, os, sys, sysconfig
for module in sys.argv[1:]:
    importlib.import_module(module)
site = os.path.realpath(sysconfig.get_paths()["purelib"])
files = [os.path.realpath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)]
print(json.dumps(sorted({os.path.relpath(os.path.dirname(f), site) for f in files
                         if f.startswith(site + os.sep) and f.endswith(".py")})))
"""


@pytest.mark.slow
def test_bootstrap_compiles_the_folder_of_every_module_the_pipeline_and_serving_import():
    # scripts/bytecode-folders.txt goes stale when the lock moves modules: then make demo compiles them in
    # every process again (PYTHONDONTWRITEBYTECODE). `python scripts/bytecode.py list` rewrites it.
    modules = ["cxr.pipeline.local_runner", "cxr.pipeline.pipeline", "cxr.components.trainer",
               "cxr.components.transform", "cxr.components.serving_check", "cxr.serving.dev_server",
               "cxr.dataprep.build", "cxr.pipeline.report.render", "tfx.components.evaluator.executor",
               "tfx.components.transform.executor"]
    found = subprocess.run([sys.executable, "-c", IMPORTED_FOLDERS, *modules], capture_output=True, text=True,
                           check=True)
    imported = set(json.loads(found.stdout.splitlines()[-1]))
    assert len(imported) > 500  # TFX, TensorFlow, Beam and the rest
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import bytecode
    finally:
        sys.path.pop(0)
    assert sorted(imported - set(bytecode.listed_folders())) == []
