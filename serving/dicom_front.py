"""DICOM files in :predict requests, for the fronts (`cxr log-proxy`, `cxr serve`): each {"b64": ...} value
that is a DICOM file (its 'DICM' prefix) is converted to the PNG the model receives (cxr/dicom/convert.py,
the conversion ingestion and the client use) before the model sees it.

Finding them costs little on a request without any: a DICOM's bytes 129-131 are 'ICM', which base64 writes
as 'SUNN' at characters 172-175 of the value, so the body is only scanned for that, and parsed only when
it is there. A DICOM refused (a lateral view, a CT, Burned In Annotation...) fails the request with TF
Serving's error shape and status (400, INVALID_ARGUMENT), naming the instance and the tag.
"""
import base64
import binascii
import json
from typing import Any, List, Optional, Tuple

from cxr import contract
from cxr.dicom.rules import Acquisition, DicomRefused, DicomRules
from cxr.serving.errors import ServingError
from cxr.serving.rest_json import b64_value_starts

# Characters 172-175 of a DICOM file's base64: bytes 129-131, the 'ICM' of its 'DICM' prefix.
_PREFIX_AT = (contract.DICOM_PREAMBLE_BYTES + 1) // 3 * 4
_ICM_B64 = base64.b64encode(contract.DICOM_PREFIX[1:])


def may_hold_dicom(body: bytes) -> bool:
    """Whether any b64 value of this body starts like a DICOM file (cheap: no JSON parsing)."""
    return any(body[start + _PREFIX_AT:start + _PREFIX_AT + 4] == _ICM_B64 for start in b64_value_starts(body))


def convert_request(document: Any, rules: DicomRules) -> Tuple[Any, List[Optional[Acquisition]]]:
    """The request with each DICOM b64 value replaced by its PNG's, and the acquisitions, one per value
    converted (None for values that were already PNG or JPEG), in the order of the request."""
    from cxr.dicom.convert import convert  # pydicom, only once a request holds a DICOM

    acquisitions: List[Optional[Acquisition]] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"b64"} and isinstance(node["b64"], str):
                return {"b64": converted(node["b64"])}
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    def converted(value: str) -> str:
        index = len(acquisitions)
        head = _decoded(value[:_PREFIX_AT + 4], index)
        if head[contract.DICOM_PREAMBLE_BYTES:contract.DICOM_PREAMBLE_BYTES + 4] != contract.DICOM_PREFIX:
            acquisitions.append(None)
            return value
        try:
            result = convert(_decoded(value, index), rules)
        except DicomRefused as refused:
            raise ServingError("INVALID_ARGUMENT", f"DICOM image {index} of the request refused: {refused} "
                                                   f"(send frontal CR/DX radiographs, or convert the file "
                                                   f"first: cxr convert-dicom)") from None
        acquisitions.append(result.acquisition)
        return base64.b64encode(result.png).decode("ascii")

    return walk(document), acquisitions


def converted_body(body: bytes, rules: DicomRules) -> Tuple[bytes, List[Optional[Acquisition]]]:
    """convert_request on a raw body: the JSON to forward (the body itself when it holds no DICOM)."""
    if not may_hold_dicom(body):
        return body, []
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body, []  # not JSON: the model server answers that in its own words
    document, acquisitions = convert_request(document, rules)
    if not any(acquisitions):
        return body, acquisitions
    return json.dumps(document).encode("utf-8"), acquisitions


def logged_acquisitions(acquisitions: List[Optional[Acquisition]], images: int) -> Optional[List[bytes]]:
    """The request log's contract.ACQUISITION_LOG_INPUT values: one JSON object per image (its DICOM's
    acquisition facts, {} for an image sent as PNG or JPEG); None when no image came as DICOM."""
    if not any(acquisitions) or len(acquisitions) != images:
        return None
    return [json.dumps(a.feature_values() if a else {}, sort_keys=True).encode("utf-8") for a in acquisitions]


def _decoded(value: str, index: int) -> bytes:
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise ServingError("INVALID_ARGUMENT", f"image {index} of the request: its b64 value is not base64") from None
