"""The serving contract: the signatures the exported model offers and the REST paths that reach them.

The Trainer's export (components/export.py), the REST client and the development
server all read these names from here, so they cannot drift apart. Plain Python:
importing it needs neither TensorFlow nor TFX.
"""
from typing import Optional

from cxr.components.vocabulary import LABELS as CLASS_NAMES  # noqa: F401 - the order of `probabilities`

DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500

PREDICT_SIGNATURE = "serving_default"
EXPLAIN_SIGNATURE = "explain"
# Grad-CAM for a class the caller names instead of the predicted one.
EXPLAIN_CLASS_SIGNATURE = "explain_class"

IMAGES_INPUT = "images"  # [-1] tf.string of encoded PNG or JPEG files
CLASS_ID_INPUT = "class_id"  # [-1] int64, explain_class only

PROBABILITIES = "probabilities"  # [N, 4] float32, in the order of CLASS_NAMES (serving_default and explain)
CLASS_ID = "class_id"  # [N] int64
CLASS_NAME = "class_name"  # [N] string
PROBABILITY = "probability"  # [N] float32, of the explained class
HEATMAP = "heatmap"  # [N, size, size] float32 in [0, 1], Grad-CAM of the explained class

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
