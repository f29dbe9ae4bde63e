"""The installed package, as the pipeline image installs it (not editable): code and the data it reads."""
import os
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
