"""components_fingerprint: the digest that makes Transform and the Trainer re-run when their code changes, and only then."""
import shutil

from cxr.pipeline import fingerprint
from cxr.pipeline import pipeline as pipeline_module


def _covered():
    return fingerprint.imported_modules(pipeline_module.COMPONENT_FUNCTION_MODULES)


def test_it_covers_exactly_the_modules_the_component_functions_import():
    covered = set(_covered())
    assert {"cxr.components.transform", "cxr.components.trainer", "cxr.components.tuner",
            "cxr.components.export", "cxr.components.model", "cxr.components.augmentation", "cxr.components.settings",
            "cxr.contract"} <= covered
    # Data preparation, serving, the pipeline's own modules and the other components are not the
    # functions' code: editing them must not re-run Transform or the Trainer.
    assert not {module for module in covered if module.startswith(("cxr.dataprep", "cxr.serving", "cxr.pipeline",
                                                                   "cxr.kubeflow", "cxr.cli"))}
    assert not covered & {"cxr.components.drift", "cxr.components.validation_gate", "cxr.components.serving_check"}


def test_the_digest_is_stable_and_follows_every_covered_file(tmp_path):
    copies = {}
    for module, path in _covered().items():
        copies[module] = str(tmp_path / f"{module}.py")
        shutil.copyfile(path, copies[module])
    original = fingerprint.digest(copies)
    assert fingerprint.digest(copies) == original == pipeline_module.components_fingerprint()

    seen = {original}
    for module in ("cxr.components.trainer", "cxr.contract", "cxr.components.settings"):
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
