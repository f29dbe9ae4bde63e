"""The tf.train.Example each written image becomes: the original bytes, untouched, plus facts."""
from tensorflow.core.example import example_pb2, feature_pb2

from cxr.components.ingest.dedup import Candidate

STRING_FEATURES = ("label", "source", "patient_id", "image_id", "sha256", "phash", "format", "file")
INT_FEATURES = ("height", "width", "channels", "bit_depth")


def feature_values(candidate: Candidate) -> dict:
    seen, facts = candidate.seen, candidate.facts
    return {
        "label": candidate.label, "source": seen.source, "patient_id": seen.patient_id,
        "image_id": seen.image_id, "sha256": facts.sha256, "phash": f"{facts.phash:016x}",
        "format": facts.format, "file": seen.relpath, "height": facts.height,
        "width": facts.width, "channels": facts.channels, "bit_depth": facts.bit_depth,
    }


def to_example(candidate: Candidate, image_bytes: bytes) -> example_pb2.Example:
    values = feature_values(candidate)
    feature = {"image": _bytes_feature(image_bytes)}
    feature.update({name: _bytes_feature(values[name].encode("utf-8")) for name in STRING_FEATURES})
    feature.update({name: feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[values[name]]))
                    for name in INT_FEATURES})
    return example_pb2.Example(features=feature_pb2.Features(feature=feature))


def _bytes_feature(value: bytes) -> feature_pb2.Feature:
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value]))
