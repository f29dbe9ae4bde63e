"""components_fingerprint: the digest that makes Transform and the Trainer re-run when their code changes."""
import shutil

from cxr.pipeline import pipeline as pipeline_module
from cxr.serving import contract


def test_the_digest_is_stable_and_follows_every_component_file_and_the_contract(tmp_path, monkeypatch):
    components = tmp_path / "components"
    shutil.copytree(pipeline_module._components_dir(), components)
    contract_copy = tmp_path / "contract.py"
    shutil.copyfile(contract.__file__, contract_copy)
    monkeypatch.setattr(pipeline_module, "_components_dir", lambda: str(components))
    monkeypatch.setattr(pipeline_module.serving_contract, "__file__", str(contract_copy))
    original = pipeline_module.components_fingerprint()
    assert pipeline_module.components_fingerprint() == original

    trainer = components / "trainer.py"
    trainer.write_text(trainer.read_text() + "\n# an edit\n")
    edited = pipeline_module.components_fingerprint()
    assert edited != original

    contract_copy.write_text(contract_copy.read_text().replace('"probabilities"', '"scores"'))
    assert pipeline_module.components_fingerprint() not in (original, edited)

    (components / "notes.txt").write_text("not code")  # only Python sources count
    before = pipeline_module.components_fingerprint()
    (components / "notes.txt").write_text("still not code")
    assert pipeline_module.components_fingerprint() == before
