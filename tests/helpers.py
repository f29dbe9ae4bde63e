"""Small real images for the tests: phantom X-rays encoded in every format the datasets use."""
import io
import os

import numpy as np
from PIL import Image

from cxr.dataprep import phantoms

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


# Phantoms per class folder that the tiny configuration below learns from (about 190 training
# images): it reached 0.81 to 0.90 test accuracy and class recalls (probability > 0.5) of 0.69 or
# more over three seeds, well within the demo preset's gate (0.6, 0.3). With 32 per class some
# seeds left a class at 0.08: too close to the gate for a test.
TINY_PER_CLASS = 64

# For tests of orchestration (tuning, Kubeflow, Ctrl-C, retraining on drifted data), on fewer
# phantoms than the model learns from: two epochs, and every model passes the gate.
# The end-to-end tests (tests/pipeline/test_pipeline_e2e.py) keep the demo preset's gate.
ORCHESTRATION_ONLY = ("training.epochs=2", "gate.min_accuracy=0.0", "gate.min_class_recall=0.0",
                      "gate.max_accuracy_regression=1.0")


def write_tiny_data(out_dir, per_class: int = TINY_PER_CLASS, seed: int = 3):
    """Phantom downloads of the three datasets at 64 px: {dataset: root folder}."""
    from cxr.dataprep.demo_data import DemoDataSpec, write_demo_data
    return write_demo_data(DemoDataSpec(out_dir=str(out_dir), per_class=per_class, size=64, seed=seed))


def tiny_pipeline_config(base, *overrides):
    """The demo preset shrunk to run the whole pipeline in about four minutes, on folders under `base`.

    The gate is the demo preset's. Three convolution blocks at 64 px, no dropout, a higher
    learning rate and no rotation or zoom learn the phantoms in 40 epochs of a second each, the rate
    falling along a cosine and no early stop, so the last weights are the settled ones: a constant
    rate stopped early left one class under the gate's recall for one seed in four, and in a CI run
    as Beam ordered its records there (bench/RESULTS.md, "Test suite").
    Half the patients train, a quarter each evaluate and test: with few phantoms per class
    folder, the default 8/1/1 leaves classes out of the eval split, which the ValidationGate refuses.
    float32, not the preset's auto: the accuracies above were measured in float32, and auto would train
    in bfloat16 on some CI machines and not on others. bfloat16 through the Trainer and its export:
    tests/components/test_trainer.py; the demo preset in it, five times: bench/RESULTS.md."""
    from cxr.pipeline.config import load_config
    return load_config("demo", overrides=["data.split_buckets=[2, 1, 1]",
        f"data.tfrecords_dir={base / 'tfrecords'}", f"pipeline_root={base / 'root'}",
        f"metadata_path={base / 'metadata.sqlite'}", f"serving_dir={base / 'serving'}",
        "model.image_size=64", "model.filters=[16, 32, 32]", "model.dense_units=[32]", "model.dropout=0.0",
        "training.learning_rate=1e-3", "training.batch_size=8", "training.epochs=40",
        "training.learning_rate_schedule=cosine", "training.early_stopping_patience=40",
        "training.augmentation.rotation=0.0", "training.augmentation.zoom=0.0", "training.precision=float32",
        *overrides])


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


def serve_and_log(model_base_path: str, log_root: str, requests: int) -> None:
    """`requests` single-image requests of 64 px phantoms, four findings in turn, to cxr serve on the newest
    version under model_base_path, every one logged under log_root."""
    from cxr.serving.client import ServingClient
    from cxr.serving.dev_server import ServerSettings, start
    running = start(ServerSettings(model_base_path=model_base_path, rest_api_port=0, request_log_root=log_root,
                                   request_log_sample_rate=1.0))
    try:
        client = ServingClient(running.url)
        for i in range(requests):
            finding = ("normal", "pneumothorax", "covid", "bacterial_pneumonia")[i % 4]
            client.predict([encode(phantom_picture(6000 + i, size=64, finding=finding), "PNG")])
    finally:
        running.stop()
