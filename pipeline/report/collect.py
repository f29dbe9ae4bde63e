"""What the report shows, gathered from one run: ML Metadata's record of it, its artifacts, and
the trained model run over the test split."""
import dataclasses
import json
import os
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Set

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tfx.utils import path_utils

from cxr import contract
from cxr.components import artifacts
from cxr.components.evaluation import gate_of
from cxr.components.settings import GateSettings, from_json
from cxr.contract import LABELS, Nodes
from cxr.pipeline.metadata_reader import RunSummary, execution_properties, read_run

GALLERY_PER_KIND = 3  # correct and wrong images kept per class for the Grad-CAM gallery
_METADATA = (contract.LABEL, contract.SOURCE, contract.PATIENT_ID, contract.FILE)  # counting needs no pixels
_ACQUISITION = (contract.VIEW_POSITION, contract.MODALITY)


@dataclasses.dataclass
class GalleryImage:
    image: bytes  # the encoded test image
    heatmap: np.ndarray  # Grad-CAM of the predicted class, from the model's `explain` signature
    predicted: str
    probability: float


@dataclasses.dataclass
class TestPredictions:
    files: List[str]
    labels: np.ndarray  # class ids
    sources: List[str]
    acquisitions: List[str]  # "view position, modality" of each image (contract.VIEW_POSITION, MODALITY)
    probabilities: np.ndarray  # [N, 4]
    gallery: Dict[str, GalleryImage]  # file -> a few correct and wrong per class


@dataclasses.dataclass
class RunReportData:
    summary: RunSummary
    span: int
    counts: Dict[str, Counter]  # split -> Counter[(label, source)]
    patients: Dict[str, Set[str]]  # split -> patient ids
    manifest: Optional[dict]
    statistics: Optional[object]  # the training split's DatasetFeatureStatisticsList
    settings: Optional[dict]
    curves: Dict[str, Dict[str, List[float]]]  # "train" / "validation" -> metric -> per epoch
    tuner_trials: List[dict]  # the Tuner's trials, in the order they ran
    tuner_search: Optional[str]  # the search in one line (components/tuner.py summary_line)
    predictions: TestPredictions
    gate: Dict[str, float]  # the configured thresholds


def collect(metadata_connection, run: str = "latest", gallery_all_sources: bool = False) -> RunReportData:
    """Everything from what the run recorded: its inputs, its components' settings, its artifacts. The
    gallery shows the public datasets' images only, unless gallery_all_sources."""
    summary, outputs = read_run(metadata_connection, run)
    if Nodes.TRAINER not in outputs or "model" not in outputs[Nodes.TRAINER]:
        raise ValueError(f"run {summary.run_id or run} has no trained model to report on "
                         f"(components: {summary.statuses or 'none'})")
    examples = outputs[Nodes.EXAMPLE_GEN]["examples"]
    span = examples.custom_properties["span"].int_value
    counts, patients = _split_counts(examples.uri)
    model_dir = path_utils.serving_model_path(outputs[Nodes.TRAINER]["model"].uri)
    model_run = outputs[Nodes.TRAINER]["model_run"].uri
    given = execution_properties(metadata_connection, summary.run_id)
    tfrecords_dir = given[Nodes.EXAMPLE_GEN]["input_base"]
    statistics = _uri(outputs, Nodes.STATISTICS_GEN, "statistics")
    return RunReportData(
        summary=summary, span=span, counts=counts, patients=patients,
        manifest=_read_json(os.path.join(contract.span_dir(tfrecords_dir, span), contract.MANIFEST)),
        statistics=artifacts.load_statistics(statistics, contract.TRAIN) if statistics else None,
        settings=_read_json(os.path.join(model_run, contract.TRAINER_SETTINGS_FILE)),
        curves=learning_curves(model_run),
        tuner_trials=_tuner_trials(outputs.get(Nodes.TUNER, {})), tuner_search=summary.tuner_search,
        predictions=predict_test_split(model_dir, examples.uri, gallery_all_sources, _serving_check_answers(outputs)),
        gate=_recorded_gate(given))


def _serving_check_answers(outputs) -> Optional[str]:
    """The file of the ServingCheck's answers on the test split, where the run's ServingCheck wrote one: the
    served model's own answers, so that the report predicts nothing again (None: the check did not answer)."""
    blessing = _uri(outputs, Nodes.SERVING_CHECK, "blessing")
    path = blessing and os.path.join(blessing, contract.SERVING_CHECK_ANSWERS_FILE)
    return path if path and tf.io.gfile.exists(path) else None


def _recorded_gate(given: Dict[str, dict]) -> Dict[str, float]:
    """The thresholds the run's Evaluator and ServingCheck were given."""
    gate = {}
    if Nodes.EVALUATOR in given:
        gate.update(gate_of(json_format.Parse(given[Nodes.EVALUATOR]["eval_config"], tfma.EvalConfig())))
    if Nodes.SERVING_CHECK in given:  # the gate section whole; the Evaluator's own config comes first
        serving_check = from_json(GateSettings, given[Nodes.SERVING_CHECK]["settings"], "ServingCheck's settings")
        gate.update({name: value for name, value in dataclasses.asdict(serving_check).items() if name not in gate})
    return gate


def _uri(outputs, node: str, key: str) -> Optional[str]:
    artifact = outputs.get(node, {}).get(key)
    return artifact.uri if artifact is not None else None


def _split_counts(examples_uri: str):
    counts, patients = {}, defaultdict(set)
    for split in contract.SPLITS:
        counts[split] = Counter()
        for batch in artifacts.read_split(examples_uri, split, _METADATA):
            for label, source, patient in zip(batch[contract.LABEL], batch[contract.SOURCE],
                                              batch[contract.PATIENT_ID]):
                counts[split][(label.decode(), source.decode())] += 1
                patients[split].add(f"{source.decode()}:{patient.decode()}")
    return counts, dict(patients)


def predict_test_split(model_dir: str, examples_uri: str, gallery_all_sources: bool = False,
                       answers_file: Optional[str] = None) -> TestPredictions:
    """The model's probabilities on the test split, and the gallery's images explained by the same model. With
    answers_file (the ServingCheck's answers, in the split's order), the probabilities are read from it."""
    signatures = tf.saved_model.load(model_dir).signatures
    recorded = _recorded_probabilities(answers_file) if answers_file else None
    files, labels, sources, acquisitions, probabilities, kept_images = [], [], [], [], [], {}
    kept = Counter()
    for batch in artifacts.read_split(examples_uri, contract.TEST, _METADATA + _ACQUISITION + (contract.IMAGE,)):
        if recorded is not None:
            batch_probabilities = recorded[len(files):len(files) + len(batch[contract.IMAGE])]
            if len(batch_probabilities) < len(batch[contract.IMAGE]):
                raise ValueError(f"{answers_file} holds {len(recorded)} answers, fewer than the test split at "
                                 f"{examples_uri}: not the answers of this run's test split")
        else:
            batch_probabilities = signatures[contract.PREDICT_SIGNATURE](images=tf.constant(batch[contract.IMAGE]))[
                contract.PROBABILITIES].numpy()
        batch_labels = [LABELS.index(label.decode()) for label in batch[contract.LABEL]]
        batch_files = [name.decode() for name in batch[contract.FILE]]
        batch_sources = [source.decode() for source in batch[contract.SOURCE]]
        for index, (name, class_id) in enumerate(zip(batch_files, batch_labels)):
            correct = int(batch_probabilities[index].argmax()) == class_id
            # The gallery shows the public datasets' images only: a site's (DICOM) or served images are
            # patients' (docs/patient-data.md), unless the report is asked to show them.
            public = batch_sources[index] in contract.SOURCES
            if (public or gallery_all_sources) and kept[(class_id, correct)] < GALLERY_PER_KIND:
                kept[(class_id, correct)] += 1
                kept_images[name] = batch[contract.IMAGE][index]
        files += batch_files
        labels += batch_labels
        sources += batch_sources
        acquisitions += [f"{view.decode()}, {modality.decode()}"
                         for view, modality in zip(batch[contract.VIEW_POSITION], batch[contract.MODALITY])]
        probabilities.append(batch_probabilities)
    if recorded is not None and len(recorded) != len(files):
        raise ValueError(f"{answers_file} holds {len(recorded)} answers, but the test split at {examples_uri} holds "
                         f"{len(files)} images: not the answers of this run's test split")
    return TestPredictions(files, np.array(labels, dtype=int), sources, acquisitions,
                           np.concatenate(probabilities) if probabilities else np.zeros((0, len(LABELS))),
                           _explain(signatures[contract.EXPLAIN_SIGNATURE], kept_images))


def _recorded_probabilities(path: str) -> np.ndarray:
    with tf.io.gfile.GFile(path) as f:
        return np.array(json.load(f)[contract.PROBABILITIES], dtype=float)


def _explain(explain, images: Dict[str, bytes]) -> Dict[str, GalleryImage]:
    if not images:
        return {}
    names = sorted(images)
    outputs = {key: value.numpy() for key, value in explain(images=tf.constant([images[n] for n in names])).items()}
    return {name: GalleryImage(images[name], outputs[contract.HEATMAP][i], outputs[contract.CLASS_NAME][i].decode(),
                               float(outputs[contract.PROBABILITY][i]))
            for i, name in enumerate(names)}


def learning_curves(model_run_dir: str) -> Dict[str, Dict[str, List[float]]]:
    """Per-epoch loss and accuracy from the TensorBoard logs the Trainer wrote."""
    curves = {}
    for phase in ("train", "validation"):
        values = defaultdict(dict)
        for path in tf.io.gfile.glob(os.path.join(model_run_dir, phase, "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag in ("epoch_loss", "epoch_accuracy"):
                        values[value.tag[len("epoch_"):]][event.step] = float(tf.make_ndarray(value.tensor))
        curves[phase] = {metric: [by_step[step] for step in sorted(by_step)] for metric, by_step in values.items()}
    return curves


def _tuner_trials(tuner_outputs) -> List[dict]:
    """Every trial of the Tuner's search in the order it ran (components/tuner.py, TrialRecord), the best marked."""
    results = tuner_outputs.get("tuner_results")
    if results is None:
        return []
    return _read_json(os.path.join(results.uri, contract.TUNER_TRIALS_FILE)) or []


def _read_json(path: str) -> Optional[dict]:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
