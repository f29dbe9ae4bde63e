"""The fake KFP API, kfp.Client isolated from this machine's KFP context, and the pipeline image's environment."""
import kfp
import pytest

import image_env
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


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> image_env.ImageEnvironment:
    """kubeflow/Dockerfile's last stage, rebuilt without Docker (image_env.py)."""
    return image_env.build(str(tmp_path_factory.mktemp("image")))
