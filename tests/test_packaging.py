"""The installed package, as the pipeline image installs it (not editable): code and the data it reads."""
import os
import shutil
import subprocess
import sys


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
