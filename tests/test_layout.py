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
    # Kubeflow runs the pipeline's nodes and the monitor as tasks; it serves nothing and ingests nothing, and the
    # command line calls it, never the reverse.
    "kubeflow": ("cxr.serving", "cxr.dataprep", "cxr.dicom", "cxr.cli"),
    # The one DICOM conversion: ingestion, the client and the serving fronts import it, it imports none of them.
    "dicom": ("cxr.components", "cxr.serving", "cxr.dataprep", "cxr.pipeline", "cxr.kubeflow", "cxr.cli",
              "cxr.monitoring"),
}


# Folder -> the modules of a forbidden package it may import all the same.
ALLOWED = {
    "components": ("cxr.serving.client",),  # the ServingCheck speaks REST as cxr predict does
    "pipeline": ("cxr.kubeflow.settings",),  # the configuration holds each section, the kubeflow section's type too
}


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


def _module_of(path):
    relative = os.path.splitext(os.path.relpath(path, ROOT))[0].replace(os.sep, ".")
    relative = relative[:-len(".__init__")] if relative.endswith(".__init__") else relative
    return relative if relative == "cxr" or relative.startswith("cxr.") else "cxr." + relative  # cxr/ is cxr


def _import_graph():
    """{module: the project modules it imports, at its top or inside a function}."""
    paths = [p for folder in (*FORBIDDEN, "cxr") for p in glob.glob(os.path.join(ROOT, folder, "**", "*.py"),
                                                                        recursive=True)]
    modules = {_module_of(path): path for path in paths}
    return {module: {m for m in _imports(path) if m in modules and m != module} for module, path in modules.items()}


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return stack[stack.index(imported):] + [imported]
            if imported not in state:
                found = visit(imported)
                if found:
                    return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_no_module_of_the_project_imports_itself_through_others():
    graph = _import_graph()
    assert {"cxr.kubeflow.task", "cxr.kubeflow.kfp_pipeline", "cxr.monitoring.monitor", "cxr.cli"} <= set(graph)
    assert "cxr.kubeflow.runner" in graph["cxr.cli"]
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


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



@pytest.mark.parametrize("module, allowed", [("comparators.py", {"typing"}), ("html_page.py", {"html", "typing"}),
                                             ("classification.py", {"math", "typing", "numpy"})])
def test_the_shared_leaves_import_only_the_standard_library_or_numpy(module, allowed):
    # The components and the pipeline's report, or the components and the monitor, use them: neither side may import
    # the other.
    path = os.path.join(ROOT, "cxr", module)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= allowed, imported
