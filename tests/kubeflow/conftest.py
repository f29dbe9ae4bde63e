"""The fake KFP API, and kfp.Client isolated from this machine's KFP context."""
import kfp
import pytest

from fake_kfp_server import FakeKfpServer


@pytest.fixture(autouse=True)
def no_kfp_context(monkeypatch, tmp_path):
    """kfp.Client reads ~/.config/kfp/context.json and KF_PIPELINES_* variables; the tests see neither."""
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for variable in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
                     "KF_PIPELINES_APP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def kfp_server():
    with FakeKfpServer() as server:
        yield server

