"""Small real images for the tests: phantom X-rays encoded in every format the datasets use."""
import io
import os

import numpy as np
from PIL import Image

from cxr import phantoms

# The ingestion's DirectRunner in one process: real Beam, without spawning workers
# for every small test run (the end-to-end test runs the multi-process default).
IN_PROCESS_BEAM = ("--direct_running_mode=in_memory",)


def phantom_picture(seed: int, size: int = 96, finding: str = "normal", affected_lung=None) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = phantoms.render(rng, phantoms.Anatomy.random(rng), finding, size, affected_lung)
    return Image.fromarray(phantoms.to_uint8(image))


def encode(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def sixteen_bit_png(seed: int) -> bytes:
    pixels = np.asarray(phantom_picture(seed), dtype=np.uint16) * 257
    return encode(Image.fromarray(pixels), "PNG")


def cmyk_jpeg(seed: int) -> bytes:
    return encode(phantom_picture(seed).convert("RGB").convert("CMYK"), "JPEG")


def tiny_pipeline_config(base, *overrides):
    """The demo preset shrunk to run the whole pipeline in a minute or two, on folders under `base`.

    Half the patients train, a quarter each evaluate and test: with 16 phantoms per class folder,
    the default 8/1/1 leaves classes out of the eval split, which the ValidationGate refuses."""
    from cxr.pipeline.config import load_config
    return load_config("demo", overrides=["data.split_buckets=[2, 1, 1]",
        f"data.tfrecords_dir={base / 'tfrecords'}", f"pipeline_root={base / 'root'}",
        f"metadata_path={base / 'metadata.sqlite'}", f"serving_dir={base / 'serving'}",
        "model.image_size=76", "model.filters=[4, 8, 8, 8]", "model.dense_units=[16, 16]",
        "training.epochs=2", "gate.min_accuracy=0.0", "gate.min_class_recall=0.0",
        "gate.max_accuracy_regression=1.0", *overrides])


def latest_artifact_uris(config, node: str, key: str, output: bool = True):
    """URIs of the artifacts the latest execution of `node` read (output=False) or wrote under `key`, from MLMD."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx import v1 as tfx
    from tfx.orchestration import metadata
    direction = metadata_store_pb2.Event.OUTPUT if output else metadata_store_pb2.Event.INPUT
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
    with metadata.Metadata(connection) as handle:
        store = handle.store
        executions = [e for e in store.get_executions()
                      if any(c.name.endswith(f".{node}") for c in store.get_contexts_by_execution(e.id))]
        execution = max(executions, key=lambda e: e.id)
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == direction and e.path.steps[0].key == key]
        return [a.uri for a in store.get_artifacts_by_id([e.artifact_id for e in events])]
