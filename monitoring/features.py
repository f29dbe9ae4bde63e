"""What the monitor compares, per image: the facts ingestion records, pixel statistics, the model's
answer and its embedding. The same functions describe logged requests and the training split, so
no difference between the two comes from how they were described.
"""
import dataclasses
import hashlib
import io
import json
import math
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from cxr import contract
from cxr.dataprep.probe import ImageFacts, probe

# Logged requests are images the model answered, so they fit its input limits; this only keeps a
# malformed record from decoding without bound.
MAX_PIXELS = 1 << 26
PIXEL_SAMPLE = 128  # pixel statistics read about this many rows and columns of each image
EMBED_BATCH = 32

# The features the monitor describes each image by (its TFDV statistics and the page use these names).
PIXEL_MEAN, PIXEL_STD, PIXEL_P05, PIXEL_P95 = "pixel_mean", "pixel_std", "pixel_p05", "pixel_p95"
PREDICTED_CLASS, TOP_PROBABILITY, ENTROPY = "predicted_class", "top_probability", "entropy"
ANSWER = (PREDICTED_CLASS, TOP_PROBABILITY, ENTROPY)  # what the model said, as answer() describes it
# How each image was acquired, as its DICOM header said (the request log's contract.ACQUISITION_LOG_INPUT;
# the records' acquisition features): a new scanner or a flood of AP films shows here.
ACQUISITION = (contract.VIEW_POSITION, contract.MODALITY, contract.MANUFACTURER, contract.MANUFACTURER_MODEL)
CATEGORICAL = (contract.FORMAT, PREDICTED_CLASS) + ACQUISITION
NUMERIC = (contract.HEIGHT, contract.WIDTH, contract.CHANNELS, contract.BIT_DEPTH, contract.BITS_STORED,
           PIXEL_MEAN, PIXEL_STD, PIXEL_P05, PIXEL_P95, TOP_PROBABILITY, ENTROPY)
_NOT_STATED = {**{name: contract.UNKNOWN for name in contract.ACQUISITION_BYTES_FEATURES}, contract.BITS_STORED: 0}


@dataclasses.dataclass(frozen=True)
class Received:
    """One image as the served model received it (or, for the training split, would have)."""
    image: bytes
    time: float = 0.0
    version: int = 0
    probabilities: Optional[Sequence[float]] = None  # what was answered; None: ask the model
    label: Optional[str] = None  # the training split's only
    acquisition: Optional[Dict[str, object]] = None  # {acquisition feature: value}; None: nothing stated


@dataclasses.dataclass
class Described:
    """Images as rows of features, their embeddings, and the images no feature could be read from."""
    received: List[Received]
    table: pd.DataFrame
    embeddings: np.ndarray
    unreadable: List[str]  # why, one line per image left out

    def __len__(self) -> int:
        return len(self.received)

    def subset(self, indices: Sequence[int]) -> "Described":
        indices = list(indices)
        return Described([self.received[i] for i in indices], self.table.iloc[indices].reset_index(drop=True),
                         self.embeddings[indices], [])


def received_from_logs(logs: Iterable) -> List[Received]:
    return list(iter_received(logs))


def iter_received(logs: Iterable) -> Iterator[Received]:
    """Each image of each logged :predict that sent images and got probabilities back, one per row."""
    for record in logs:
        request, response = record.predict_log.request, record.predict_log.response
        if contract.IMAGES_INPUT not in request.inputs or contract.PROBABILITIES not in response.outputs:
            continue
        images = tf.make_ndarray(request.inputs[contract.IMAGES_INPUT]).reshape(-1)
        probabilities = tf.make_ndarray(response.outputs[contract.PROBABILITIES]).reshape(len(images), -1)
        version = record.log_metadata.model_spec.version.value
        acquisitions = [None] * len(images)
        if contract.ACQUISITION_LOG_INPUT in request.inputs:
            logged = tf.make_ndarray(request.inputs[contract.ACQUISITION_LOG_INPUT]).reshape(-1)
            if len(logged) == len(images):
                acquisitions = [json.loads(value) or None for value in logged]
        for image, row, acquired in zip(images, probabilities, acquisitions):
            yield Received(bytes(image), float(record.log_metadata.timestamp_secs), version, tuple(row),
                           acquisition=acquired)


def describe(received: Sequence[Received], embed) -> Described:
    """`embed(images)` -> the model's embed signature's outputs (embedding, probabilities) for a batch."""
    kept, rows, unreadable = [], [], []
    for item in received:
        facts = probe(item.image, MAX_PIXELS)
        if isinstance(facts, str):
            unreadable.append(f"{contract.SHA256} {hashlib.sha256(item.image).hexdigest()}: {facts}")
            continue
        kept.append(item)
        rows.append({**_facts(facts), **_NOT_STATED, **(item.acquisition or {}),
                     **pixel_statistics(item.image, facts.bit_depth)})
    embeddings, probabilities = _embedded(kept, embed)
    for row, item, computed in zip(rows, kept, probabilities):
        row.update(answer(item.probabilities if item.probabilities is not None else computed))
    table = pd.DataFrame(rows, columns=list(CATEGORICAL + NUMERIC))
    return Described(kept, table, embeddings, unreadable)


def _facts(facts: ImageFacts) -> Dict[str, object]:
    return {contract.FORMAT: facts.format, contract.HEIGHT: facts.height, contract.WIDTH: facts.width,
            contract.CHANNELS: facts.channels, contract.BIT_DEPTH: facts.bit_depth}


def pixel_statistics(image: bytes, bit_depth: int) -> Dict[str, float]:
    """Mean, spread and 5th / 95th percentiles of the gray level, as a share of the bit depth's range:
    an inverted or rescaled image moves them even where Transform's min-max scaling hides it from the model."""
    with Image.open(io.BytesIO(image)) as opened:
        pixels = np.asarray(opened, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1) if pixels.shape[-1] >= 3 else pixels[..., 0]
    step = max(1, min(pixels.shape) // PIXEL_SAMPLE)
    gray = pixels[::step, ::step] / float((1 << bit_depth) - 1)
    p05, p95 = np.percentile(gray, [5, 95])
    return {PIXEL_MEAN: float(gray.mean()), PIXEL_STD: float(gray.std()), PIXEL_P05: float(p05),
            PIXEL_P95: float(p95)}


def answer(probabilities: Sequence[float]) -> Dict[str, object]:
    p = np.asarray(probabilities, dtype=np.float64)
    entropy = -sum(v * math.log(v) for v in p if v > 0)
    return {PREDICTED_CLASS: contract.LABELS[int(p.argmax())], TOP_PROBABILITY: float(p.max()),
            ENTROPY: float(entropy)}


def read_test_answers(path: str) -> np.ndarray:
    """The ServingCheck's answers on the test split: [images, classes] probabilities."""
    with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f)
    probabilities = np.asarray(recorded.get(contract.PROBABILITIES, []), np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(contract.LABELS) or not len(probabilities):
        raise ValueError(f"{path}: expected {{{contract.PROBABILITIES!r}: [[{len(contract.LABELS)} probabilities "
                         f"per test image], ...]}}, got an array of shape {probabilities.shape}")
    return probabilities


def answers_table(probabilities: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame([answer(row) for row in probabilities], columns=list(ANSWER))


def _embedded(received: Sequence[Received], embed):
    if not received:
        return np.zeros((0, 0), np.float32), []
    embeddings, probabilities = [], []
    for start in range(0, len(received), EMBED_BATCH):
        outputs = embed([item.image for item in received[start:start + EMBED_BATCH]])
        embeddings.append(np.asarray(outputs[contract.EMBEDDING], np.float32))
        probabilities += list(np.asarray(outputs[contract.PROBABILITIES]))
    return np.concatenate(embeddings), probabilities


def saved_model_embedder(model):
    """The embed signature of one exported model version (a loaded SavedModel, or its folder), as describe()
    calls it."""
    model = tf.saved_model.load(model) if isinstance(model, str) else model
    signature = model.signatures[contract.EMBED_SIGNATURE]

    def embed(images: List[bytes]) -> Dict[str, np.ndarray]:
        outputs = signature(**{contract.IMAGES_INPUT: tf.constant(images, tf.string)})
        return {name: value.numpy() for name, value in outputs.items()}
    return embed


def received_from_examples(paths: Sequence[str], limit: Optional[int] = None, seed: int = 0) -> List[Received]:
    """The training split's images (raw tf.Examples, as ExampleGen writes them) with their labels; with a
    limit, a uniform sample of that many (reservoir sampling: the split is read once, never held whole)."""
    spec = {contract.IMAGE: tf.io.FixedLenFeature([], tf.string),
            contract.LABEL: tf.io.FixedLenFeature([], tf.string),
            **{name: tf.io.FixedLenFeature([], tf.string, default_value=contract.UNKNOWN)
               for name in contract.ACQUISITION_BYTES_FEATURES},
            contract.BITS_STORED: tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    rng = np.random.default_rng(seed)
    found: List[bytes] = []
    for seen, record in enumerate(tf.data.TFRecordDataset(list(paths), compression_type=_compression(paths))):
        if limit is None or seen < limit:
            found.append(record.numpy())
        else:
            kept = rng.integers(seen + 1)
            if kept < limit:
                found[kept] = record.numpy()
    return [_received(tf.io.parse_single_example(record, spec)) for record in found]


def _received(example) -> Received:
    acquisition = {name: example[name].numpy().decode() for name in contract.ACQUISITION_BYTES_FEATURES}
    acquisition[contract.BITS_STORED] = int(example[contract.BITS_STORED].numpy())
    return Received(example[contract.IMAGE].numpy(), label=example[contract.LABEL].numpy().decode(),
                    acquisition=acquisition)


def _compression(paths: Sequence[str]) -> str:
    gzipped = {path.endswith(".gz") for path in paths}
    if len(gzipped) > 1:
        raise ValueError(f"training files mix gzipped and plain TFRecords: {list(paths)[:4]}")
    return "GZIP" if gzipped == {True} else ""

