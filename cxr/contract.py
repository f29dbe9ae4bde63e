"""The names the data, the components, the served model and its clients share.

A leaf: plain Python that imports nothing of the project, nor TensorFlow or TFX.
The TFRecord builder writes these features, Transform and the Trainer read them,
the export names its signatures with them, and `cxr serve` / `cxr predict` call
those signatures by the same names, so none of them can drift apart.
"""
from typing import Any, Dict, Optional

# The study's class order: class ids 0..3 are the positions in this tuple, and
# `probabilities` lists the classes in this order.
LABELS = ("BACTERIAL_PNEUMONIA", "COVID", "NORMAL", "PNEUMOTHORAX")
NUM_CLASSES = len(LABELS)

COVID_RADIOGRAPHY = "covid_radiography"
CURATED = "curated"
NIH = "nih"
SOURCES = (COVID_RADIOGRAPHY, CURATED, NIH)  # the datasets ingestion reads
SERVED = "served"  # images the served model received, labelled afterwards (cxr feedback)
DICOM = "dicom"  # a hospital's own DICOM export (cxr build-tfrecords --dicom; --dicom-source names it otherwise)
# Every value the records' source feature takes (pipeline/schema/schema.pbtxt's domain says the same).
RECORD_SOURCES = SOURCES + (SERVED, DICOM)

# Features of the records the builder writes (raw) and of Transform's output (transformed).
IMAGE = "image"  # raw: the original PNG or JPEG bytes; transformed: size x size 8-bit gray pixels in one bytes value
LABEL = "label"  # one of LABELS
SOURCE = "source"  # one of RECORD_SOURCES
CLASS_ID = "class_id"  # transformed: the label's position in LABELS (-1 unknown)
# Raw only: where the image came from and what ingestion found in its header (dataprep/probe.py).
PATIENT_ID = "patient_id"  # ExampleGen splits by it: no patient's images straddle two splits
IMAGE_ID = "image_id"
SHA256 = "sha256"  # of the file's bytes
PHASH = "phash"  # 64-bit perceptual hash, 16 hex digits
FORMAT = "format"  # png or jpeg
FILE = "file"  # the path under its dataset's root
HEIGHT, WIDTH, CHANNELS, BIT_DEPTH = "height", "width", "channels", "bit_depth"
# Raw only: how the image was acquired, as its DICOM header says (cxr/dicom/convert.py) or a public dataset's
# label file (NIH's View Position), else UNKNOWN (0 for BITS_STORED). None of them identifies a patient.
VIEW_POSITION, MODALITY = "view_position", "modality"  # PA, AP, LL...; CR, DX...
PHOTOMETRIC_INTERPRETATION = "photometric_interpretation"  # MONOCHROME1 or MONOCHROME2
BITS_STORED = "bits_stored"  # of the DICOM's pixels (the PNG's depth is BIT_DEPTH)
MANUFACTURER, MANUFACTURER_MODEL = "manufacturer", "manufacturer_model"
UNKNOWN = "unknown"
ACQUISITION_BYTES_FEATURES = (VIEW_POSITION, MODALITY, PHOTOMETRIC_INTERPRETATION, MANUFACTURER, MANUFACTURER_MODEL)
ACQUISITION_INT_FEATURES = (BITS_STORED,)
# Every raw record has each of these features with one value (pipeline/schema/schema.pbtxt says the same).
RAW_BYTES_FEATURES = (IMAGE, LABEL, SOURCE, PATIENT_ID, IMAGE_ID, SHA256, PHASH, FORMAT, FILE) + ACQUISITION_BYTES_FEATURES
RAW_INT_FEATURES = (HEIGHT, WIDTH, CHANNELS, BIT_DEPTH) + ACQUISITION_INT_FEATURES

# ExampleGen's splits, by hash of PATIENT_ID: the Trainer fits on TRAIN, stops early on EVAL; the
# Evaluator, the ServingCheck and the report judge on TEST.
TRAIN, EVAL, TEST = "train", "eval", "test"
SPLITS = (TRAIN, EVAL, TEST)


class Nodes:
    """The pipeline's node ids (create_pipeline gives them), as ML Metadata and Kubeflow name each task."""
    EXAMPLE_GEN = "ImportExampleGen"
    STATISTICS_GEN = "StatisticsGen"
    SCHEMA_GEN = "SchemaGen"
    CURATED_SCHEMA = "curated_schema"
    EXAMPLE_VALIDATOR = "ExampleValidator"
    VALIDATION_GATE = "ValidationGate"
    NO_DRIFT_BASELINE = "no_drift_baseline"
    LATEST_DRIFT_BASELINE = "latest_drift_baseline"
    DRIFT_CHECK = "DriftCheck"
    DRIFT_BASELINE_GEN = "DriftBaselineGen"
    TRANSFORM = "Transform"
    TUNER = "Tuner"
    TRAINER = "Trainer"
    LATEST_BLESSED_MODEL = "latest_blessed_model"
    EVALUATOR = "Evaluator"
    SERVING_CHECK = "ServingCheck"
    PUSHER = "Pusher"

# The span layout: the builder writes span N as <tfrecords_dir>/span-N/*.tfrecord.gz with
# manifest.json written last; ImportExampleGen reads the latest span through SPAN_PATTERN.
SHARD_SUFFIX = ".tfrecord.gz"
SPAN_PATTERN = "span-{SPAN}/*" + SHARD_SUFFIX
MANIFEST = "manifest.json"


def span_dir(tfrecords_dir: str, span: int) -> str:
    return f"{tfrecords_dir.rstrip('/')}/span-{span}"


# Every file the builder sees ends in exactly one of these outcomes; the manifest counts them.
WRITTEN, DUPLICATE, CONFLICT, QUARANTINED, UNMAPPED = "written", "duplicate", "conflict", "quarantined", "unmapped"
OUTCOMES = (WRITTEN, DUPLICATE, CONFLICT, QUARANTINED, UNMAPPED)

# The Evaluator's metrics on the test split as TFMA keys them, which its readers (summary, report,
# Kubeflow's UI) look up in components/artifacts.py's evaluation_metrics: {sub key: {metric: value}}.
OVERALL = ""  # the sub key of the whole split
EXAMPLE_COUNT = "example_count"
ACCURACY = "sparse_categorical_accuracy"
AUC = "auc"
# The gate's per-class recall counts a case as found when its class gets a probability above 0.5.
GATE_RECALL = "gate_recall"


def class_metric_name(metric: str, class_name: str) -> str:
    return f"{metric}/{class_name}"


def metric_sub_key(class_id: int, top_k: Optional[int] = None) -> str:
    """TFMA's sub key of one class: binarized ('classId:2') or of the top-k prediction ('classId:2 topK:1')."""
    return f"classId:{class_id}" + (f" topK:{top_k}" if top_k else "")


def class_probabilities(outputs: Dict[str, Any]) -> Dict[str, float]:
    """{label: probability} from a prediction's outputs."""
    return dict(zip(LABELS, (float(p) for p in outputs[PROBABILITIES])))


# Beside the Trainer's model run: the settings it trained with, which the report reads back.
TRAINER_SETTINGS_FILE = "trainer_settings.json"

# In the Tuner's tuner_results folder, beside TFX's tuner_results.json (the completed trials, best first): every
# trial in the order it ran, with its values, objective, epochs, time and status (components/tuner.py writes it).
TUNER_TRIALS_FILE = "trials.json"
# On the Tuner's tuner_results artifact in ML Metadata: one line on the search and its best trial (run summary).
TUNER_SEARCH = "search"

# The ServingCheck's InfraBlessing: whether the candidate passed (the Pusher reads this property,
# tfx/components/util/model_utils.py is_infra_validated) and why; the run summary reads both.
INFRA_BLESSED = "blessed"
SERVING_CHECK_VERDICT = "verdict"
# In the InfraBlessing's folder, when the candidate passed: the probabilities it answered for each
# test image over REST, which monitoring compares the served model's answers with.
SERVING_CHECK_ANSWERS_FILE = "test_split_answers.json"

# The served model (TF Serving's REST API).
MODEL_NAME = "cxr"  # by default: the pipeline pushes to <serving_dir>/<model_name>, servers and clients use it
DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500

PREDICT_SIGNATURE = "serving_default"
EXPLAIN_SIGNATURE = "explain"
# Grad-CAM for a class the caller names instead of the predicted one.
EXPLAIN_CLASS_SIGNATURE = "explain_class"
# What the softmax layer receives, per image: what monitoring compares between training and serving.
EMBED_SIGNATURE = "embed"
# tf.Examples in, probabilities out: what TFMA evaluates.
EXAMPLES_SIGNATURE = "serving_examples"
# Transform's graph alone: what TFMA preprocesses with.
TRANSFORM_SIGNATURE = "transform_features"
EXAMPLES_INPUT = "examples"  # [-1] tf.string of serialized tf.Examples

IMAGES_INPUT = "images"  # [-1] tf.string of encoded PNG or JPEG files
# Not an input of the model: in a logged request (serving/request_log.py), one JSON object per image with the
# acquisition facts of the DICOM it was converted from ({} for a PNG or JPEG sent as such). Leave it out of
# a record replayed as TF Serving warm-up.
ACQUISITION_LOG_INPUT = "cxr_acquisition"
CLASS_ID_INPUT = "class_id"  # [-1] int64, explain_class only

PROBABILITIES = "probabilities"  # [N, NUM_CLASSES] float32, in the order of LABELS
CLASS_NAME = "class_name"  # [N] string
PROBABILITY = "probability"  # [N] float32, of the explained class
HEATMAP = "heatmap"  # [N, size, size] float32 in [0, 1], Grad-CAM of the explained class
EMBEDDING = "embedding"  # [N, width of the last dense layer] float32, the embed signature's output
# CLASS_ID above is also an output: [N] int64, the predicted (or explained) class.

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# A DICOM Part 10 file: a 128-byte preamble, then these four bytes.
DICOM_PREAMBLE_BYTES = 128
DICOM_PREFIX = b"DICM"

# The largest image anything here decodes, checked from its header before decoding: a decompression bomb
# declares a huge image in a small file. The served model's InputLimits, ingestion and the DICOM
# conversion start from these. The largest radiographs in the three datasets are about 4,000 x 5,000
# 16-bit gray: 40 MB.
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_BYTES = 42 << 20  # width x height x channels x bytes per sample
# Images in one request to the image signatures, checked in the model's graph and at the fronts (cxr
# log-proxy, cxr serve) before anything is decoded or forwarded: every image becomes a full-size tensor,
# so a request of thousands of 1x1 PNGs once took the server from 0.75 to 7 GB, 20,000 crashed it.
MAX_IMAGES_PER_REQUEST = 64
# Examples in one call of the tf.Example signatures: TFMA's batches, which tfx_bsl's BatchElements keeps
# to 1,000 at most (tfx_bsl/coders/batch_util.py, _BATCH_SIZE_CAP).
MAX_EXAMPLES_PER_REQUEST = 1000


def model_path(model: str, version: Optional[int] = None, label: Optional[str] = None) -> str:
    """TF Serving's REST path of a model, one of its versions, or a version label."""
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{label}"
    return path
