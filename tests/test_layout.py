"""The architecture the folders promise: who may import whom (read from the import statements)."""
import ast
import glob
import os

import pytest

from cxr.pipeline import fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Folder -> project packages its modules must not import.
FORBIDDEN = {
    "components": ("cxr.serving", "cxr.dataprep", "cxr.pipeline", "cxr.kubeflow", "cxr.cli", "cxr.monitoring"),
    "serving": ("cxr.components", "cxr.dataprep", "cxr.pipeline", "cxr.kubeflow", "cxr.cli", "cxr.monitoring"),
    "dataprep": ("cxr.components", "cxr.serving", "cxr.pipeline", "cxr.kubeflow", "cxr.cli", "cxr.monitoring"),
    "pipeline": ("cxr.kubeflow", "cxr.cli", "cxr.dataprep"),
    # The monitor reads what serving logged and describes images as ingestion does; it runs no component.
    "monitoring": ("cxr.components", "cxr.pipeline", "cxr.kubeflow", "cxr.cli"),
    # The one DICOM conversion: ingestion, the client and the serving fronts import it, it imports none of them.
    "dicom": ("cxr.components", "cxr.serving", "cxr.dataprep", "cxr.pipeline", "cxr.kubeflow", "cxr.cli",
              "cxr.monitoring"),
}


# Folder -> the modules of a forbidden package it may import all the same.
ALLOWED = {"components": ("cxr.serving.client",)}  # the ServingCheck speaks REST as cxr predict does


def _imports(path):
    with open(path, encoding="utf-8") as f:
        return set(fingerprint._project_imports(ast.parse(f.read(), path)))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_each_folder_imports_only_what_its_place_allows(folder):
    offending = {}
    for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
        bad = sorted(m for m in _imports(path)
                     if m.startswith(FORBIDDEN[folder]) and m not in ALLOWED.get(folder, ()))
        if bad:
            offending[os.path.relpath(path, ROOT)] = bad
    assert not offending


def test_the_contract_is_a_leaf():
    with open(os.path.join(ROOT, "cxr", "contract.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"typing"}, imported


def test_the_output_module_needs_only_the_contract():
    # cxr predict formats its answers without TensorFlow; every command's printing lives there.
    with open(os.path.join(ROOT, "cxr", "output.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    assert _imports(os.path.join(ROOT, "cxr", "output.py")) <= {"cxr", "cxr.contract"}
    third_party = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
    assert third_party <= {"json", "os", "time"}, third_party

