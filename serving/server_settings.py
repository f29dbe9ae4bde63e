"""`cxr serve`'s settings, under TF Serving's flag names. Plain Python: the command line takes its
defaults from here without importing TensorFlow."""
import dataclasses
from typing import Optional

from cxr import contract
from cxr.serving.http_server import HttpLimits


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    model_base_path: Optional[str] = None
    model_name: str = contract.MODEL_NAME
    model_config_file: Optional[str] = None
    rest_api_port: int = contract.DEFAULT_REST_PORT  # 0 picks a free port
    host: str = "127.0.0.1"
    file_system_poll_wait_seconds: float = 1.0
    # A request's JSON carries its images in base64 (4/3 of the files): 16 NIH PNGs are ~15 MB.
    max_body_bytes: int = 32 * 1024 * 1024
    enable_model_warmup: bool = True
    read_timeout_seconds: float = 10.0  # a request's headers; an idle connection is closed after it
    body_timeout_seconds: float = 60.0
    workers: int = 4  # requests computed at once (TF Serving: --rest_api_num_threads)
    # Not TF Serving's: once answering, the server writes its URL (http://host:port) to this file, so
    # that whoever started it on port 0 learns the port it got.
    address_file: Optional[str] = None

    def http_limits(self) -> HttpLimits:
        return HttpLimits(max_body_bytes=self.max_body_bytes, header_timeout_s=self.read_timeout_seconds,
                          body_timeout_s=self.body_timeout_seconds, workers=self.workers)
