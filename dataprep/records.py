"""The tf.train.Example each written image becomes: the original bytes, untouched, plus facts; and the
shards they are written to.

The messages are declared here from tf.train.Example's public wire format
(tensorflow/core/example/{example,feature}.proto) instead of imported from
TensorFlow: importing TensorFlow costs about 10 s in the driver and again in
every Beam worker, more than the work itself on a laptop-sized run. The bytes
are the same; the tests parse them with TensorFlow's own tf.train.Example.

The shards are gzip files (contract.SHARD_SUFFIX, which every reader opens as GZIP) whose deflate blocks
are stored rather than compressed: the records are PNG and JPEG bytes, compressed already. At Beam's
default level (6), deflate took half of a worker's time (a profile of `cxr build-tfrecords`) to save 0.03 %
of the bytes; stored, the same 123 KiB images take 0.13 ms each instead of 2.6 (bench/RESULTS.md,
"Ingestion: where a worker's time goes").
"""
import gzip
import struct

import google_crc32c
from apache_beam import coders
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from cxr import contract
from cxr.dataprep.dedup import Candidate
from cxr.dicom.rules import Acquisition

_NOTHING_STATED = Acquisition.stated()


_REPEATED, _OPTIONAL = "LABEL_REPEATED", "LABEL_OPTIONAL"


def _example_message_class():
    proto = descriptor_pb2.FileDescriptorProto(name="cxr_example.proto", package="cxr.wire", syntax="proto3")
    _message(proto, "BytesList", [("value", 1, "TYPE_BYTES", _REPEATED, None)])
    _message(proto, "Int64List", [("value", 1, "TYPE_INT64", _REPEATED, None)])
    feature = _message(proto, "Feature", [
        ("bytes_list", 1, "TYPE_MESSAGE", _OPTIONAL, ".cxr.wire.BytesList"),
        ("int64_list", 3, "TYPE_MESSAGE", _OPTIONAL, ".cxr.wire.Int64List")])
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = _message(proto, "Features", [
        ("feature", 1, "TYPE_MESSAGE", _REPEATED, ".cxr.wire.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    _add_fields(entry, [("key", 1, "TYPE_STRING", _OPTIONAL, None),
                        ("value", 2, "TYPE_MESSAGE", _OPTIONAL, ".cxr.wire.Feature")])
    _message(proto, "Example", [("features", 1, "TYPE_MESSAGE", _OPTIONAL, ".cxr.wire.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    # protobuf 3.20 (pinned by TFX 1.16) spells GetMessageClass this way.
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName("cxr.wire.Example"))


def _message(proto, name, fields):
    message = proto.message_type.add(name=name)
    _add_fields(message, fields)
    return message


def _add_fields(message, fields):
    kinds = descriptor_pb2.FieldDescriptorProto
    for name, number, kind, label, type_name in fields:
        field = message.field.add(name=name, number=number, type=getattr(kinds, kind), label=getattr(kinds, label))
        if type_name:
            field.type_name = type_name


Example = _example_message_class()


def feature_values(candidate: Candidate, image_bytes: bytes) -> dict:
    """{feature: value} for every feature of contract.RAW_BYTES_FEATURES and RAW_INT_FEATURES."""
    seen, facts = candidate.seen, candidate.facts
    return {
        contract.IMAGE: image_bytes, contract.LABEL: candidate.label, contract.SOURCE: seen.source,
        contract.PATIENT_ID: seen.patient_id, contract.IMAGE_ID: seen.image_id, contract.SHA256: facts.sha256,
        contract.PHASH: f"{facts.phash:016x}", contract.FORMAT: facts.format, contract.FILE: seen.relpath,
        contract.HEIGHT: facts.height, contract.WIDTH: facts.width, contract.CHANNELS: facts.channels,
        contract.BIT_DEPTH: facts.bit_depth,
        **(seen.acquisition or _NOTHING_STATED).feature_values(),
    }


def to_example(candidate: Candidate, image_bytes: bytes):
    values = feature_values(candidate, image_bytes)
    example = Example()
    features = example.features.feature
    for name in contract.RAW_BYTES_FEATURES:
        value = values[name]
        features[name].bytes_list.value.append(value if isinstance(value, bytes) else value.encode("utf-8"))
    for name in contract.RAW_INT_FEATURES:
        features[name].int64_list.value.append(values[name])
    return example


SHARD_COMPRESSION_LEVEL = 0  # zlib's level: 0 stores the blocks (see the module's docstring)


class ShardSink(FileBasedSink):
    """Beam's TFRecord sink (apache_beam/io/tfrecordio.py `_TFRecordSink`) with the gzip level chosen (Beam's
    CompressedFile always deflates at level 6) and the records framed by `write_record`."""

    def __init__(self, file_path_prefix: str):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=contract.SHARD_SUFFIX,
                         num_shards=0, shard_name_template=None, mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)

    def open(self, temp_path):
        return _GzipWriter(super().open(temp_path))

    def write_encoded_record(self, file_handle, encoded_value):
        write_record(file_handle, encoded_value)


def write_record(handle, value: bytes) -> None:
    """One TFRecord: its length (uint64, little-endian), the length's masked CRC-32C, the bytes, their masked
    CRC-32C (tensorflow/core/lib/io/record_writer.cc). The CRCs by google-crc32c (hardware instructions,
    5 us for 125 kB here; Beam's crcmod took 0.3 ms; a dependency of google-cloud-storage in both locks)."""
    length = struct.pack("<Q", len(value))
    handle.write(b"".join((length, struct.pack("<I", _masked_crc32c(length)), value,
                           struct.pack("<I", _masked_crc32c(value)))))


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _GzipWriter:
    """A gzip stream over one of Beam's file writers (local, gs://): no name or time in its header."""

    def __init__(self, raw):
        self._raw = raw
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=SHARD_COMPRESSION_LEVEL,
                                   mtime=0)

    def write(self, data: bytes) -> None:
        self._gzip.write(data)

    def close(self) -> None:
        self._gzip.close()  # writes the trailer; leaves `raw` open
        self._raw.close()
