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
SOURCES = (COVID_RADIOGRAPHY, CURATED, NIH)

# Features of the records the builder writes (raw) and of Transform's output (transformed).
IMAGE = "image"  # raw: the original PNG or JPEG bytes; transformed: size x size 8-bit gray pixels in one bytes value
LABEL = "label"  # one of LABELS
SOURCE = "source"  # one of SOURCES
CLASS_ID = "class_id"  # transformed: the label's position in LABELS (-1 unknown)

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

# The Evaluator's metric names that its readers (summary, report, Kubeflow's UI) look up.
# The gate's per-class recall counts a case as found when its class gets a probability above 0.5.
GATE_RECALL = "gate_recall"


def class_metric_name(metric: str, class_name: str) -> str:
    return f"{metric}/{class_name}"


def class_probabilities(outputs: Dict[str, Any]) -> Dict[str, float]:
    """{label: probability} from a prediction's outputs."""
    return dict(zip(LABELS, (float(p) for p in outputs[PROBABILITIES])))


# The served model (TF Serving's REST API).
DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500

PREDICT_SIGNATURE = "serving_default"
EXPLAIN_SIGNATURE = "explain"
# Grad-CAM for a class the caller names instead of the predicted one.
EXPLAIN_CLASS_SIGNATURE = "explain_class"
# tf.Examples in, probabilities out: what TFMA evaluates.
EXAMPLES_SIGNATURE = "serving_examples"
# Transform's graph alone: what TFMA preprocesses with.
TRANSFORM_SIGNATURE = "transform_features"
EXAMPLES_INPUT = "examples"  # [-1] tf.string of serialized tf.Examples

IMAGES_INPUT = "images"  # [-1] tf.string of encoded PNG or JPEG files
CLASS_ID_INPUT = "class_id"  # [-1] int64, explain_class only

PROBABILITIES = "probabilities"  # [N, NUM_CLASSES] float32, in the order of LABELS
CLASS_NAME = "class_name"  # [N] string
PROBABILITY = "probability"  # [N] float32, of the explained class
HEATMAP = "heatmap"  # [N, size, size] float32 in [0, 1], Grad-CAM of the explained class
# CLASS_ID above is also an output: [N] int64, the predicted (or explained) class.

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


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
