"""code_fingerprint: the digest that makes a component re-run when the code it runs changes, and only then."""
import json
import shutil

import pytest

from cxr.pipeline import fingerprint
from cxr.pipeline import pipeline as pipeline_module

COMPONENT_MODULES = {
    "Transform": "cxr.components.transform", "Trainer": "cxr.components.trainer", "Tuner": "cxr.components.tuner",
    "ValidationGate": "cxr.components.validation_gate", "DriftCheck": "cxr.components.drift",
    "DriftBaselineGen": "cxr.components.drift",
    "ServingCheck": "cxr.components.serving_check"}
CUSTOM_COMPONENTS = ("ValidationGate", "DriftCheck", "ServingCheck")


def _covered(module):
    return set(fingerprint.imported_modules([module]))


def test_every_component_that_runs_project_code_carries_the_fingerprint_of_that_code():
    from cxr.pipeline.config import load_config
    components = {component.id: component for component in
                  pipeline_module.create_pipeline(load_config("demo", overrides=["tuner.enabled=true"])).components}
    for node, module in COMPONENT_MODULES.items():
        parameters = components[node].exec_properties
        carried = parameters.get("custom_config") or {}
        if isinstance(carried, str):
            carried = json.loads(carried)
        given = parameters.get(pipeline_module.CODE_FINGERPRINT) or carried.get(pipeline_module.CODE_FINGERPRINT)
        assert given == pipeline_module.code_fingerprint(module), node


def test_each_fingerprint_covers_the_modules_its_component_runs_and_no_other():
    trainer = _covered("cxr.components.trainer")
    assert {"cxr.components.export", "cxr.components.model", "cxr.components.augmentation",
            "cxr.components.settings", "cxr.contract"} <= trainer
    assert "cxr.components.trainer" in _covered("cxr.components.tuner")
    assert "cxr.components.trainer" not in _covered("cxr.components.transform")
    assert _covered("cxr.components.validation_gate") >= {"cxr.components.validation_gate", "cxr.contract"}
    # Data preparation, the pipeline's own modules, Kubeflow and the CLI are no component's code:
    # editing them must not re-run a component.
    for module in COMPONENT_MODULES.values():
        assert not {m for m in _covered(module) if m.startswith(("cxr.dataprep", "cxr.pipeline", "cxr.kubeflow",
                                                                   "cxr.cli"))}, module
    for node in CUSTOM_COMPONENTS:
        others = {COMPONENT_MODULES[other] for other in CUSTOM_COMPONENTS if other != node}
        assert not _covered(COMPONENT_MODULES[node]) & (others | {"cxr.components.trainer"}), node


@pytest.mark.parametrize("node", ["Trainer", "ValidationGate"])
def test_the_digest_is_stable_and_follows_every_covered_file(tmp_path, node):
    covered = fingerprint.imported_modules([COMPONENT_MODULES[node]])
    copies = {}
    for module, path in covered.items():
        copies[module] = str(tmp_path / f"{module}.py")
        shutil.copyfile(path, copies[module])
    original = fingerprint.digest(copies)
    assert fingerprint.digest(copies) == original == pipeline_module.code_fingerprint(COMPONENT_MODULES[node])

    seen = {original}
    for module in (COMPONENT_MODULES[node], "cxr.contract", "cxr.components.settings"):
        with open(copies[module], "a") as f:
            f.write("\n# an edit\n")
        edited = fingerprint.digest(copies)
        assert edited not in seen, module
        seen.add(edited)


def test_an_import_inside_a_function_is_followed(tmp_path, monkeypatch):
    package = tmp_path / "cxr_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cxr_probe import b\n    return b\n")
    (package / "b.py").write_text("from cxr_probe.c import NAME\n")
    (package / "c.py").write_text("NAME = 1\n")
    (package / "unused.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fingerprint, "ROOT_PACKAGE", "cxr_probe")
    assert set(fingerprint.imported_modules(["cxr_probe.a"])) == {"cxr_probe", "cxr_probe.a", "cxr_probe.b",
                                                                   "cxr_probe.c"}


def test_the_serving_check_covers_the_server_it_starts_as_a_process():
    covered = _covered("cxr.components.serving_check")
    assert {"cxr.serving.dev_server", "cxr.serving.http_server", "cxr.serving.model_store", "cxr.serving.rest_json",
            "cxr.serving.request_log"} <= covered
    assert "cxr.serving.dev_server" not in _covered("cxr.components.trainer")


def _fingerprints(config):
    components = {component.id: component for component in pipeline_module.create_pipeline(config).components}
    return {node: components[node].exec_properties[pipeline_module.CODE_FINGERPRINT] for node in CUSTOM_COMPONENTS}


def test_an_edit_of_a_serving_module_reruns_the_serving_check_and_no_other_component(tmp_path, monkeypatch):
    """TFX keys its cache on the exec properties (tfx/orchestration/portable/cache_utils.py, get_cache_context):
    a changed code_fingerprint is a cache miss for the component that carries it."""
    from cxr.pipeline.config import load_config
    config = load_config("demo")
    before = _fingerprints(config)
    edited = tmp_path / "http_server.py"
    original = fingerprint._source_file("cxr.serving.http_server")
    edited.write_text(open(original, encoding="utf-8").read() + "\n# a fix in the server\n")
    source_file = fingerprint._source_file
    monkeypatch.setattr(fingerprint, "_source_file",
                        lambda module: str(edited) if module == "cxr.serving.http_server" else source_file(module))
    after = _fingerprints(config)
    assert after["ServingCheck"] != before["ServingCheck"]
    assert {node: after[node] for node in CUSTOM_COMPONENTS if node != "ServingCheck"} == {
        node: before[node] for node in CUSTOM_COMPONENTS if node != "ServingCheck"}


def test_subprocess_modules_must_name_modules(tmp_path, monkeypatch):
    package = tmp_path / "cxr_subprocess_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("SERVER = 'cxr_subprocess_probe.b'\nSUBPROCESS_MODULES = (SERVER, 'cxr_subprocess_probe.c')\n")
    (package / "b.py").write_text("")
    (package / "c.py").write_text("")
    (package / "bad.py").write_text("SUBPROCESS_MODULES = (compute(),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fingerprint, "ROOT_PACKAGE", "cxr_subprocess_probe")
    assert set(fingerprint.imported_modules(["cxr_subprocess_probe.a"])) == {"cxr_subprocess_probe", "cxr_subprocess_probe.a", "cxr_subprocess_probe.b",
                                                                   "cxr_subprocess_probe.c"}
    with pytest.raises(ValueError, match="bad.py: SUBPROCESS_MODULES holds compute()"):
        fingerprint.imported_modules(["cxr_subprocess_probe.bad"])
