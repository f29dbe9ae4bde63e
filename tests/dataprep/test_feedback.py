"""cxr feedback on a span the real ingestion built: labelled served images become the next span."""
import csv
import glob
import hashlib
import io
import json
import os
import shutil

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from PIL import Image

from cxr import contract
from cxr.cli import main
from cxr.dataprep.build import build_tfrecords, read_manifest
from cxr.dataprep.config import IngestConfig
from cxr.pipeline.pipeline import CURATED_SCHEMA_DIR
from helpers import IN_PROCESS_BEAM, encode, phantom_picture, write


@pytest.fixture(scope="module")
def built(quirky_trees, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tfrecords"))
    build_tfrecords(IngestConfig(source_roots=quirky_trees["roots"], out_dir=out, span=1, beam_args=IN_PROCESS_BEAM))
    return out


def _records(span_dir):
    shards = sorted(glob.glob(os.path.join(span_dir, "*.tfrecord.gz")))
    return [tf.train.Example.FromString(record.numpy()).features.feature
            for record in tf.data.TFRecordDataset(shards, compression_type="GZIP")]


def _text(feature):
    return feature.bytes_list.value[0].decode()


def _queue(folder, images):
    """As cxr monitor's queue/ holds them: <sha256>.<ext>."""
    for data in images:
        write(os.path.join(folder, f"{hashlib.sha256(data).hexdigest()}.png"), data)


def _labels(path, rows, header=("sha256", "label", "patient_id")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _spanned_image(span_dir):
    """An 8-bit gray PNG of the span and its label: feedback must recognise a copy of it."""
    record = next(r for r in _records(span_dir) if _text(r[contract.FORMAT]) == "png"
                  and r[contract.BIT_DEPTH].int64_list.value[0] == 8 and r[contract.CHANNELS].int64_list.value[0] == 1)
    return record[contract.IMAGE].bytes_list.value[0], _text(record[contract.LABEL])


def test_labelled_images_join_the_latest_span_s_records_as_the_next_span(built, tmp_path, capsys):
    new = [encode(phantom_picture(900 + i, finding="pneumothorax"), "PNG") for i in range(3)]
    copy, its_label = _spanned_image(contract.span_dir(built, 1))
    other_label = next(label for label in contract.LABELS if label != its_label)
    broken = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
    _queue(tmp_path / "queue", new + [copy, broken])
    labels = _labels(tmp_path / "labels.csv", [(_sha(new[0]), "PNEUMOTHORAX", "patient-7"),
                                               (_sha(new[1]), "PNEUMOTHORAX", ""), (_sha(new[2]), "NORMAL", ""),
                                               (_sha(copy), other_label, ""), (_sha(broken), "NORMAL", "")])
    assert main(["feedback", "--labels", labels, "--images", str(tmp_path / "queue"), "--tfrecords-dir", built]) == 0
    assert "span 2: span 1 and 3 of 5 labelled images (0 duplicates, 1 conflicts, 1 quarantined)" in \
        capsys.readouterr().out

    before, after = _records(contract.span_dir(built, 1)), _records(contract.span_dir(built, 2))
    assert len(after) == len(before) + 3
    served = {_text(r[contract.SHA256]): r for r in after if _text(r[contract.SOURCE]) == contract.SERVED}
    assert sorted(served) == sorted(map(_sha, new))
    assert served[_sha(new[0])][contract.IMAGE].bytes_list.value[0] == new[0]
    assert _text(served[_sha(new[0])][contract.PATIENT_ID]) == "patient-7"
    assert _text(served[_sha(new[1])][contract.PATIENT_ID]) == f"served-{_sha(new[1])[:16]}"
    assert _text(served[_sha(new[2])][contract.LABEL]) == "NORMAL"

    manifest = read_manifest(contract.span_dir(built, 2))
    outcomes = {entry["sha256"]: entry["outcome"] for entry in manifest["feedback"]["images"]}
    assert outcomes == {**{_sha(d): "written" for d in new}, _sha(copy): "conflict", _sha(broken): "quarantined"}
    assert manifest["written"]["PNEUMOTHORAX"][contract.SERVED] == 2

    schema = tfdv.load_schema_text(os.path.join(CURATED_SCHEMA_DIR, "schema.pbtxt"))
    statistics = tfdv.generate_statistics_from_tfrecord(os.path.join(contract.span_dir(built, 2), "*.tfrecord.gz"))
    assert not tfdv.validate_statistics(statistics, schema).anomaly_info  # the curated schema knows 'served'


def test_a_copy_with_the_same_label_is_a_duplicate_and_nothing_new_still_makes_a_span(built, tmp_path):
    copy, its_label = _spanned_image(contract.span_dir(built, 1))
    resaved = encode(_decoded(copy), "PNG", compress_level=1)
    assert resaved != copy
    _queue(tmp_path / "queue", [resaved])
    labels = _labels(tmp_path / "labels.csv", [(_sha(resaved), its_label, "")])
    assert main(["feedback", "--labels", labels, "--images", str(tmp_path / "queue"), "--tfrecords-dir", built,
                 "--from-span", "1", "--span", "9"]) == 0
    feedback = read_manifest(contract.span_dir(built, 9))["feedback"]
    assert (feedback["written"], feedback["duplicate"]) == (0, 1)
    assert len(_records(contract.span_dir(built, 9))) == len(_records(contract.span_dir(built, 1)))


def test_images_are_judged_with_the_settings_the_span_was_built_with(built, tmp_path):
    """A span built with near-duplicate search off (-1) keeps a re-saved copy as new; the command line's
    default would have called it a duplicate."""
    tfrecords = tmp_path / "tfrecords"
    shutil.copytree(contract.span_dir(built, 1), contract.span_dir(str(tfrecords), 1))
    manifest_path = os.path.join(contract.span_dir(str(tfrecords), 1), contract.MANIFEST)
    with open(manifest_path) as f:
        manifest = json.load(f)
    assert manifest["near_duplicate_max_distance"] == 4
    manifest["near_duplicate_max_distance"] = -1
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    copy, its_label = _spanned_image(contract.span_dir(built, 1))
    resaved = encode(_decoded(copy), "PNG", compress_level=1)
    _queue(tmp_path / "queue", [resaved])
    labels = _labels(tmp_path / "labels.csv", [(_sha(resaved), its_label, "")])
    assert main(["feedback", "--labels", labels, "--images", str(tmp_path / "queue"),
                 "--tfrecords-dir", str(tfrecords)]) == 0
    assert read_manifest(contract.span_dir(str(tfrecords), 2))["feedback"]["written"] == 1
    assert main(["feedback", "--labels", labels, "--images", str(tmp_path / "queue"), "--tfrecords-dir",
                 str(tfrecords), "--from-span", "1", "--span", "3", "--near-duplicate-distance", "4"]) == 0
    assert read_manifest(contract.span_dir(str(tfrecords), 3))["feedback"]["duplicate"] == 1


def _decoded(data):
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return picture.copy()


@pytest.mark.parametrize("rows, header, message", [
    ([("ab" * 32, "PNEUMONIA", "")], ("sha256", "label", "patient_id"), "line 2: label 'PNEUMONIA' is not one of"),
    ([("xyz", "NORMAL", "")], ("sha256", "label", "patient_id"), "line 2: sha256 'xyz' is not 64 hex digits"),
    ([("ab" * 32, "NORMAL")], ("hash", "label"), "no column sha256"),
    ([("ab" * 32, "NORMAL", "")], ("sha256", "label", "patient_id"), "1 labelled images are not in"),
])
def test_bad_labels_are_refused_by_line_and_field_and_nothing_is_written(built, tmp_path, capsys, rows, header,
                                                                         message):
    _queue(tmp_path / "queue", [encode(phantom_picture(5), "PNG")])
    labels = _labels(tmp_path / "labels.csv", rows, header)
    spans = sorted(os.listdir(built))
    assert main(["feedback", "--labels", labels, "--images", str(tmp_path / "queue"), "--tfrecords-dir", built]) == 2
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(built)) == spans


def test_an_existing_span_is_not_replaced(built, tmp_path, capsys):
    image = encode(phantom_picture(77), "PNG")
    _queue(tmp_path / "queue", [image])
    labels = _labels(tmp_path / "labels.csv", [(_sha(image), "NORMAL", "")])
    assert main(["feedback", "--labels", labels, "--images", str(tmp_path / "queue"), "--tfrecords-dir", built,
                 "--span", "1"]) == 2
    assert "span-1 already exists: give a new --span" in capsys.readouterr().err
