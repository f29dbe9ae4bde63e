"""The Beam ingestion run for real on small trees with every quirk of the downloads."""
import glob
import gzip
import io
import json
import os
import shutil

import apache_beam as beam
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from cxr.dataprep.build import IngestError, build_tfrecords
from cxr.dataprep.config import IngestConfig
from cxr.dataprep.mapping import ClassMapping
from helpers import IN_PROCESS_BEAM, encode, phantom_picture, write


@pytest.fixture(scope="module")
def span(quirky_trees, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tfrecords"))
    config = IngestConfig(source_roots=quirky_trees["roots"], out_dir=out, span=3,
                          beam_args=IN_PROCESS_BEAM)
    manifest = build_tfrecords(config)
    return {"config": config, "manifest": manifest, "records": _read_records(config.span_dir)}


def _read_records(span_dir):
    shards = sorted(glob.glob(os.path.join(span_dir, "data-*.tfrecord.gz")))
    records = {}
    for serialized in tf.data.TFRecordDataset(shards, compression_type="GZIP"):
        example = tf.train.Example.FromString(serialized.numpy())
        feature = example.features.feature
        records[f"{_text(feature['source'])}:{_text(feature['file'])}"] = feature
    return records


def _text(feature):
    return feature.bytes_list.value[0].decode("utf-8")


def _outcomes(manifest):
    outcomes = {}
    for status in ("duplicates", "conflicts", "quarantined"):
        for entry in manifest[status]:
            outcomes[entry["file"]] = status.rstrip("s") if status != "quarantined" else status
    return outcomes


def test_nih_records_carry_the_view_position_its_label_file_states_the_others_unknown(span):
    views = {file: _text(feature["view_position"]) for file, feature in span["records"].items()}
    assert views["nih:images_001/images/00000001_000.png"] == "PA"
    assert views["nih:images_001/images/00000001_001.png"] == "AP"
    assert {view for file, view in views.items() if not file.startswith("nih:")} == {"unknown"}
    assert {_text(feature["modality"]) for feature in span["records"].values()} == {"unknown"}


def test_every_quirky_file_ends_in_the_expected_outcome(span, quirky_trees):
    expected = quirky_trees["expected"]
    listed = _outcomes(span["manifest"])
    written = set(span["records"])
    for file, outcome in expected.items():
        if outcome == "written":
            assert file in written, file
        elif outcome == "unmapped":
            assert file not in written and file not in listed, file
        else:
            assert listed.get(file) == outcome, (file, listed.get(file))
    assert written == {f for f, outcome in expected.items() if outcome == "written"}


def test_reconciliation_counts_every_seen_file_once(span, quirky_trees):
    table = span["manifest"]["reconciliation"]
    expected = list(quirky_trees["expected"].values())
    assert table["seen"] == len(expected)
    for status in ("written", "duplicate", "conflict", "quarantined", "unmapped"):
        assert table[status] == expected.count(status), status
    assert table["balanced"]


def test_ignored_files_are_tallied_not_seen(span):
    ignored = span["manifest"]["ignored"]
    assert ignored["covid_radiography"] == {
        "masks/": 1, "*.xlsx": 1, "*.txt": 1, ".DS_Store": 1, "Thumbs.db": 1, "__MACOSX/": 1}
    assert ignored["nih"] == {"*.csv": 2}


def test_quarantine_reasons_name_the_problem(span):
    reasons = {e["file"].rsplit("/", 1)[-1]: e["reason"] for e in span["manifest"]["quarantined"]}
    assert reasons["Normal-3.png"] == "empty file (0 bytes)"
    assert reasons["Normal-4.png"].startswith("truncated or corrupt PNG")
    assert reasons["COVID-3.png"].startswith("not a readable image")
    assert reasons["COVID-4.png"] == "unsupported format GIF (expected PNG or JPEG)"
    assert reasons["00000099_000.png"] == "not listed in Data_Entry_2017.csv"


def test_duplicates_keep_the_largest_copy_and_conflicts_drop_all(span):
    manifest = span["manifest"]
    by_file = {e["file"].rsplit("/", 1)[-1]: e for e in manifest["duplicates"]}
    exact = by_file["Pneumonia-Bacterial (4).jpg"]
    assert (exact["kind"], exact["distance"]) == ("exact", 0)
    assert exact["duplicate_of"].endswith("Pneumonia-Bacterial (1).jpg")
    near = by_file["COVID-19 (1).jpg"]  # an 80 px JPEG of the 96 px PNG
    assert near["kind"] == "near" and near["duplicate_of"].endswith("COVID/images/COVID-1.png")
    conflict_files = {e["file"].rsplit("/", 1)[-1]: e for e in manifest["conflicts"]}
    assert set(conflict_files) == {"Normal-2.png", "COVID-19 (2).jpg"}
    assert {c["label"] for c in conflict_files["Normal-2.png"]["copies"]} == {"NORMAL", "COVID"}


def test_nih_rows_follow_the_label_file(span):
    records = span["records"]
    first = records["nih:images_001/images/00000001_000.png"]
    follow_up = records["nih:images_001/images/00000001_001.png"]
    assert _text(first["label"]) == "PNEUMOTHORAX" and _text(follow_up["label"]) == "NORMAL"
    assert _text(first["patient_id"]) == _text(follow_up["patient_id"]) == "nih:1"
    assert span["manifest"]["nih_missing_files"] == {"count": 1, "examples": ["00000004_000.png"]}
    unmapped = span["manifest"]["unmapped"]["nih"]
    assert unmapped == {"Effusion|Pneumothorax": 1, "Infiltration": 1}


def test_records_round_trip_and_every_image_decodes(span):
    records = span["records"]
    assert records
    for file, feature in records.items():
        image_bytes = feature["image"].bytes_list.value[0]
        source_path = os.path.join(span["config"].root(file.split(":")[0]), file.split(":", 1)[1])
        with open(source_path, "rb") as f:
            assert image_bytes == f.read(), f"{file}: bytes were altered"
        decoded = tf.io.decode_image(image_bytes, expand_animations=False)
        height, width, channels = (feature[k].int64_list.value[0] for k in ("height", "width", "channels"))
        assert tuple(decoded.shape) == (height, width, channels), file
        assert _text(feature["label"]) in {"BACTERIAL_PNEUMONIA", "COVID", "NORMAL", "PNEUMOTHORAX"}
        assert len(_text(feature["sha256"])) == 64 and len(_text(feature["phash"])) == 16


def test_every_record_has_the_contract_s_features_as_the_curated_schema_types_them(span):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from cxr import contract
    from cxr.pipeline.pipeline import CURATED_SCHEMA_DIR
    schema = tfdv.load_schema_text(os.path.join(CURATED_SCHEMA_DIR, "schema.pbtxt"))
    typed = {feature.name: schema_pb2.FeatureType.Name(feature.type) for feature in schema.feature}
    assert typed == {**{name: "BYTES" for name in contract.RAW_BYTES_FEATURES},
                     **{name: "INT" for name in contract.RAW_INT_FEATURES}}
    for file, feature in span["records"].items():
        kinds = {name: value.WhichOneof("kind") for name, value in feature.items()}
        assert kinds == {name: "bytes_list" if kind == "BYTES" else "int64_list" for name, kind in typed.items()}, file
        assert all(len(getattr(value, kinds[name]).value) == 1 for name, value in feature.items()), file
    assert _text(feature[contract.LABEL]) in contract.LABELS and _text(feature[contract.SOURCE]) in contract.SOURCES


def test_sixteen_bit_and_cmyk_images_keep_their_depth_and_channels(span):
    records = span["records"]
    sixteen = records["covid_radiography:COVID-19_Radiography_Dataset/COVID/images/COVID-2.PNG"]
    assert sixteen["bit_depth"].int64_list.value[0] == 16 and _text(sixteen["format"]) == "png"
    cmyk = records["curated:Curated X-Ray Dataset/Pneumonia-Bacterial/Pneumonia-Bacterial (2).JPG"]
    assert cmyk["channels"].int64_list.value[0] == 3 and _text(cmyk["format"]) == "jpeg"


def test_span_is_written_as_gzip_shards_beside_its_manifest(span):
    span_dir = span["config"].span_dir
    names = sorted(os.listdir(span_dir))
    assert "manifest.json" in names
    assert all(n == "manifest.json" or (n.startswith("data-") and n.endswith(".tfrecord.gz")) for n in names)
    assert not glob.glob(os.path.join(span["config"].out_dir, ".span-*"))
    with open(os.path.join(span_dir, "manifest.json")) as f:
        assert json.load(f)["span"] == 3


def test_shards_are_gzip_any_reader_opens_with_the_image_bytes_stored_not_deflated_again(span):
    shards = sorted(glob.glob(os.path.join(span["config"].span_dir, "data-*.tfrecord.gz")))
    images = sum(len(feature["image"].bytes_list.value[0]) for feature in span["records"].values())
    stored = sum(len(gzip.open(shard).read()) for shard in shards)  # Python's gzip, as TensorFlow's read above
    on_disk = sum(os.path.getsize(shard) for shard in shards)
    # PNG and JPEG bytes do not deflate further: the files hold them with the framing, a few bytes a block.
    assert images < stored and on_disk >= stored
    with beam.Pipeline(options=PipelineOptions(list(IN_PROCESS_BEAM))) as pipeline:  # and Beam's, as ExampleGen
        read = pipeline | beam.io.ReadFromTFRecord(os.path.join(span["config"].span_dir, "data-*.tfrecord.gz"))
        assert_that(read | beam.combiners.Count.Globally(), equal_to([len(span["records"])]))


def test_a_record_is_framed_byte_for_byte_as_beams_tfrecord_writer_frames_it():
    from apache_beam.io.tfrecordio import _TFRecordUtil
    from cxr.dataprep import records
    for value in (b"", b"x", bytes(range(256)) * 500):
        ours, beams = io.BytesIO(), io.BytesIO()
        records.write_record(ours, value)
        _TFRecordUtil.write_record(beams, value)
        assert ours.getvalue() == beams.getvalue()


def test_existing_span_is_not_overwritten_without_asking(span):
    with pytest.raises(IngestError, match="already exists; pass --overwrite"):
        build_tfrecords(span["config"])


def test_missing_dataset_folder_is_named(tmp_path):
    config = IngestConfig(source_roots={"curated": str(tmp_path / "nowhere")}, out_dir=str(tmp_path))
    with pytest.raises(IngestError, match=r"--curated: folder .*nowhere does not exist"):
        build_tfrecords(config)


def test_older_radiography_layout_with_the_study_mapping(tmp_path):
    """Class folders without images/ (older releases), upper-case names, study mapping."""
    download = tmp_path / "radiography-download"
    root = download / "COVID-19 Radiography Database"
    write(str(root / "COVID-19" / "COVID (1).png"), encode(phantom_picture(71, finding="covid"), "PNG"))
    write(str(root / "NORMAL" / "NORMAL (1).png"), encode(phantom_picture(72), "PNG"))
    write(str(root / "Viral Pneumonia" / "Viral Pneumonia (1).png"), encode(phantom_picture(73), "PNG"))
    curated = tmp_path / "curated"
    write(str(curated / "Normal" / "Normal (1).jpg"), encode(phantom_picture(74), "JPEG"))
    config = IngestConfig(source_roots={"covid_radiography": str(download), "curated": str(curated)},
                          out_dir=str(tmp_path / "out"), mapping=ClassMapping.study(),
                          beam_args=IN_PROCESS_BEAM)
    manifest = build_tfrecords(config)
    assert manifest["written"] == {"COVID": {"covid_radiography": 1}, "NORMAL": {"covid_radiography": 1}}
    assert manifest["unmapped"] == {"covid_radiography": {"Viral Pneumonia": 1}, "curated": {"Normal": 1}}
    assert manifest["mapping"]["name"] == "study"
    shutil.rmtree(config.span_dir)
