"""The development server's model versions: found on disk, loaded, warmed up, swapped in, retired.

Follows TF Serving's file-system source: integer-named version folders under
the model base path, a version policy (latest N by default 1, all, specific),
version labels from a model config file, and a poll that loads a newly pushed
version while the old one keeps serving, retiring the old one only once the new
one is AVAILABLE. A version counts once its saved_model.pb is there: TFX's Pusher
copies the model in place and saved_model.pb last, so a slow push is waited for,
not counted as failed loads. Needs TensorFlow (imported here only).
"""
import dataclasses
import logging
import os
import re
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from cxr import contract
from cxr.serving.errors import ServingError

MAX_LOAD_ATTEMPTS = 5
SAVED_MODEL = "saved_model.pb"
log = logging.getLogger("cxr.serve")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What TF Serving reads from --model_name/--model_base_path or one entry of --model_config_file."""
    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1  # for latest
    versions: Tuple[int, ...] = ()  # for specific
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config_file(cls, path: str) -> "ModelSource":
        config = model_server_config_pb2.ModelServerConfig()
        try:
            with tf.io.gfile.GFile(path) as f:  # TF Serving reads the file through TensorFlow's file systems too
                text_format.Parse(f.read(), config)
        except (OSError, tf.errors.OpError, text_format.ParseError) as error:
            raise ValueError(f"{path}: not a readable ModelServerConfig text proto: {error}") from error
        models = config.model_config_list.config
        if len(models) != 1:
            raise ValueError(f"{path}: the development server serves one model, the file lists {len(models)}")
        model = models[0]
        policy = model.model_version_policy.WhichOneof("policy_choice") or "latest"
        return cls(name=model.name, base_path=model.base_path, policy=policy,
                   num_versions=max(model.model_version_policy.latest.num_versions, 1),
                   versions=tuple(model.model_version_policy.specific.versions),
                   labels=dict(model.version_labels))

    def wanted(self, on_disk: List[int]) -> List[int]:
        if self.policy == "all":
            return sorted(on_disk)
        if self.policy == "specific":
            return sorted(set(self.versions) & set(on_disk))
        return sorted(on_disk)[-self.num_versions:]


@dataclasses.dataclass
class LoadedVersion:
    version: int
    signatures: Mapping[str, object]  # name -> concrete function
    signature_defs: Dict[str, dict]  # name -> SignatureDef as TF Serving prints it
    model: object  # keeps the loaded object, and so the functions' variables, alive


@dataclasses.dataclass
class VersionStatus:
    version: int
    state: str  # TF Serving's names: LOADING, AVAILABLE, END
    error_code: str = "OK"
    error_message: str = ""
    attempts: int = 0


class ModelStore:
    def __init__(self, source: ModelSource, warm_up: bool = True):
        self.source = source
        self.warm_up = warm_up
        self._lock = threading.Lock()
        self._loaded: Dict[int, LoadedVersion] = {}
        self._status: Dict[int, VersionStatus] = {}
        self._stop = threading.Event()

    def refresh(self) -> None:
        """One poll: load wanted versions not yet loaded, then retire the unwanted ones."""
        wanted = self.source.wanted(self._versions_on_disk())
        for version in wanted:
            if version not in self._loaded and self._should_try(version):
                self._load(version)
        if any(version in self._loaded for version in wanted):
            self._retire([version for version in self._loaded if version not in wanted])

    def require_a_version(self) -> None:
        """Refuses a base path with no version to serve, saying what it found and what was expected."""
        with self._lock:
            if self._loaded:
                return
        base = self.source.base_path
        found = "it does not exist" if not tf.io.gfile.isdir(base) else (
            "; ".join(status.error_message for status in self._status.values())
            or f"it holds {sorted(tf.io.gfile.listdir(base))[:10] or 'nothing'}")
        raise ValueError(f"no version of {self.source.name} to serve under {base}: {found}. Expected "
                         f"{base}/<version number>/{SAVED_MODEL}, as TFX's Pusher writes it "
                         f"(<serving_dir>/<model_name>/<version>)")

    def poll_forever(self, interval_s: float) -> threading.Thread:
        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # a bad poll is logged; the versions loaded keep serving
                    log.exception("looking for versions of %s under %s failed", self.source.name,
                                  self.source.base_path)
        thread = threading.Thread(target=loop, name="model-store-poll", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def get(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> LoadedVersion:
        self._check_name(model)
        if label is not None:
            if label not in self.source.labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = self.source.labels[label]
        with self._lock:
            if version is None and self._loaded:
                return self._loaded[max(self._loaded)]
            if version in self._loaded:
                return self._loaded[version]
        request = f"Latest({model})" if version is None else f"Specific({model}, {version})"
        raise ServingError("NOT_FOUND", f"Servable not found for request: {request}")

    def statuses(self, model: str, version: Optional[int] = None) -> List[VersionStatus]:
        self._check_name(model)
        with self._lock:
            statuses = sorted(self._status.values(), key=lambda status: -status.version)
        if version is not None:
            statuses = [status for status in statuses if status.version == version]
            if not statuses:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {model}")
        elif not statuses:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {model}")
        return statuses

    def _check_name(self, model: str) -> None:
        if model != self.source.name:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({model})")

    def _versions_on_disk(self) -> List[int]:
        """Versions whose saved_model.pb is there: the ones pushed completely."""
        base = self.source.base_path
        if not tf.io.gfile.isdir(base):
            return []
        names = [name.rstrip("/") for name in tf.io.gfile.listdir(base)]
        return [int(name) for name in names  # ASCII digits only: str.isdigit() also takes "²"
                if re.fullmatch(r"[0-9]+", name) and tf.io.gfile.exists(os.path.join(base, name, SAVED_MODEL))]

    def _should_try(self, version: int) -> bool:
        status = self._status.get(version)
        return status is None or status.attempts < MAX_LOAD_ATTEMPTS

    def _load(self, version: int) -> None:
        status = self._status.setdefault(version, VersionStatus(version, "LOADING"))
        status.attempts += 1
        path = os.path.join(self.source.base_path, str(version))
        started = time.monotonic()
        try:
            loaded = load_version(path, version, self.warm_up)
        except Exception as error:  # any failure of one version leaves the others serving
            status.state, status.error_code = "END", "UNKNOWN"
            status.error_message = f"version {version} failed to load: {_first_line(error)}"
            log.warning("%s (attempt %d of %d)", status.error_message, status.attempts, MAX_LOAD_ATTEMPTS)
            return
        with self._lock:
            self._loaded[version] = loaded
            self._status[version] = VersionStatus(version, "AVAILABLE", attempts=status.attempts)
        log.info("version %d of %s AVAILABLE, loaded from %s in %.1f s", version, self.source.name, path,
                 time.monotonic() - started)

    def _retire(self, versions: List[int]) -> None:
        with self._lock:
            for version in versions:
                del self._loaded[version]
                self._status[version] = VersionStatus(version, "END")
        for version in versions:
            log.info("version %d of %s retired", version, self.source.name)


def load_version(path: str, version: int, warm_up: bool) -> LoadedVersion:
    if not tf.io.gfile.exists(os.path.join(path, SAVED_MODEL)):
        raise OSError(f"no {SAVED_MODEL} in {path}")
    model = tf.saved_model.load(path)
    loaded = LoadedVersion(version, dict(model.signatures), read_signature_defs(path), model)
    if warm_up:
        replay_warmup_requests(path, loaded)
    return loaded


def read_signature_defs(path: str) -> Dict[str, dict]:
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature_defs = saved_model.meta_graphs[0].signature_def
    return {name: json_format.MessageToDict(signature_def, preserving_proto_field_name=True,
                                            including_default_value_fields=True)
            for name, signature_def in signature_defs.items() if not name.startswith("__")}


def replay_warmup_requests(path: str, loaded: LoadedVersion) -> int:
    """Runs each PredictLog of assets.extra/tf_serving_warmup_requests, as TF Serving does on load."""
    warmup_file = os.path.join(path, contract.WARMUP_FILE)
    if not tf.io.gfile.exists(warmup_file):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(warmup_file):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {name: tf.constant(tf.make_ndarray(tensor)) for name, tensor in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name or contract.PREDICT_SIGNATURE](**inputs)
        count += 1
    return count


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
