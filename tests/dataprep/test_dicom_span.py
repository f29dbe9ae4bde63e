"""A hospital's DICOM export as a span (cxr build-tfrecords --dicom): the records hold the converted PNG
and keyed pseudonyms; no identifier the files carry, their names included, reaches anything written."""
import glob
import gzip
import json
import os
import stat

import pytest
import tensorflow as tf
from pydicom.uid import JPEG2000Lossless, RLELossless

import dicom_files as F
from cxr import contract
from cxr.cli import main
from cxr.dataprep.build import build_tfrecords
from cxr.dataprep.config import IngestConfig
from cxr.dataprep.dicom_source import DicomSource, LabelsError, read_labels
from cxr.dicom.convert import convert
from cxr.dicom.pseudonyms import KEY_ENVIRONMENT_VARIABLE, PseudonymKeyError, load_key
from helpers import IN_PROCESS_BEAM, encode, phantom_picture, write

KEY = "9f" * 32
# The export names folders and files by MRN and accession number, as PACS exports often do.
MRN_A, MRN_B, MRN_C = "MRN90817263", "MRN55500011", "MRN44400022"
FINDINGS = {"BACTERIAL_PNEUMONIA": "pneumonia", "COVID": "covid", "NORMAL": "normal", "PNEUMOTHORAX": "pneumothorax"}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A DICOM export: 3 patients, two images of patient A, every label, files labelled by path and by
    UID, one unlabelled, refusals, a DICOMDIR and a stray text file."""
    root = tmp_path_factory.mktemp("export")
    files, expected, rows = {}, {}, ["file,sop_instance_uid,label"]

    def add(relpath, data, outcome, label=None, by="file"):
        write(str(root / relpath), data)
        files[relpath] = data
        expected[relpath] = outcome
        if label:
            uid = convert(data).sop_instance_uid if by == "uid" else ""
            rows.append(f"{relpath if by == 'file' else ''},{uid},{label}")

    for seed, (label, finding) in enumerate(FINDINGS.items()):
        patient = (MRN_A, MRN_B, MRN_C, MRN_A)[seed]
        add(f"{patient}/ACC5551234{seed}_1.dcm",
            F.dicom_file(seed=seed, size=96, bits_stored=12, finding=finding, patient_id=patient,
                         syntax=(JPEG2000Lossless, RLELossless)[seed % 2], photometric=("MONOCHROME1", "MONOCHROME2")[seed % 2]),
            "written", label, by=("file", "uid")[seed % 2])
    add(f"{MRN_B}/ACC55512399_2.dcm", F.dicom_file(seed=20, size=96, patient_id=MRN_B), "unmapped")
    add(f"{MRN_C}/zzlat.dcm", F.dicom_file(seed=21, size=96, patient_id=MRN_C, ViewPosition="LL"), "quarantined",
        "NORMAL")
    add(f"{MRN_C}/zzburn.dcm", F.dicom_file(seed=22, size=96, patient_id=MRN_C, BurnedInAnnotation="YES"),
        "quarantined", "COVID")
    add(f"{MRN_A}/{MRN_A}.png", encode(phantom_picture(23), "PNG"), "quarantined", "NORMAL")  # not DICOM
    add("anonymous/zzanon.dcm", F.dicom_file(seed=25, size=96, patient_id=""), "quarantined", "NORMAL")
    write(str(root / "DICOMDIR"), F.dicom_file(seed=24, size=16))
    write(str(root / "export-notes.txt"), f"exported for {MRN_A}\n".encode())
    labels = write(str(tmp_path_factory.mktemp("labels") / "labels.csv"), ("\n".join(rows) + "\n").encode())
    return {"root": str(root), "files": files, "expected": expected, "labels": labels}


def _key_file(folder, secret=KEY, mode=0o600):
    path = write(str(folder / "pseudonym.key"), secret.encode())
    os.chmod(path, mode)
    return path


def _build(export, out, span=1, key=KEY, **roots):
    dicom = DicomSource(root=export["root"], labels_file=export["labels"],
                        key=load_key(None) if key is None else _key(key)).with_labels()
    config = IngestConfig(source_roots=roots, out_dir=str(out), span=span, beam_args=IN_PROCESS_BEAM, dicom=dicom)
    return config, build_tfrecords(config)


def _key(secret):
    from cxr.dicom.pseudonyms import PseudonymKey
    return PseudonymKey(secret.encode(), "test")


def _records(span_dir):
    shards = sorted(glob.glob(os.path.join(span_dir, "data-*.tfrecord.gz")))
    return [tf.train.Example.FromString(r.numpy()).features.feature
            for r in tf.data.TFRecordDataset(shards, compression_type="GZIP")]


def _text(feature):
    return feature.bytes_list.value[0].decode("utf-8")


@pytest.fixture(scope="module")
def span(export, tmp_path_factory, quirky_trees):
    config, manifest = _build(export, tmp_path_factory.mktemp("tfrecords"),
                              curated=quirky_trees["roots"]["curated"])
    return {"config": config, "manifest": manifest, "records": _records(config.span_dir)}


def test_each_dicom_ends_in_its_outcome_and_the_records_hold_the_converted_png(span, export):
    table = span["manifest"]["reconciliation"]
    assert table["balanced"]
    dicom_records = [r for r in span["records"] if _text(r[contract.SOURCE]) == "dicom"]
    written = [p for p, outcome in export["expected"].items() if outcome == "written"]
    pngs = {convert(export["files"][p]).png: p for p in written}
    assert sorted(r[contract.IMAGE].bytes_list.value[0] for r in dicom_records) == sorted(pngs)
    by_label = {_text(r[contract.LABEL]): pngs[r[contract.IMAGE].bytes_list.value[0]] for r in dicom_records}
    assert sorted(by_label) == sorted(contract.LABELS)  # by path and by SOP Instance UID alike
    for record in dicom_records:
        assert _text(record[contract.FORMAT]) == "png"
    assert span["manifest"]["written"][contract.LABELS[0]]["dicom"] == 1
    assert sum(span["manifest"]["unmapped"]["dicom"].values()) == 1
    reasons = sorted(entry["reason"] for entry in span["manifest"]["quarantined"] if entry["file"].startswith("dicom:"))
    assert len(reasons) == 4
    assert any("(0010,0020) Patient ID: missing" in r for r in reasons)
    assert any("(0018,5101) View Position: LL" in r for r in reasons)
    assert any("(0028,0301) Burned In Annotation: YES" in r for r in reasons)
    assert any("not a DICOM file" in r for r in reasons)
    assert span["manifest"]["ignored"]["dicom"] == {"DICOMDIR": 1, "*.txt": 1}


def test_the_acquisition_facts_are_features_and_the_public_images_state_unknown(span):
    facts = {(_text(r[contract.SOURCE]), _text(r[contract.VIEW_POSITION]), _text(r[contract.MODALITY]),
              _text(r[contract.PHOTOMETRIC_INTERPRETATION]), r[contract.BITS_STORED].int64_list.value[0],
              _text(r[contract.MANUFACTURER]), _text(r[contract.MANUFACTURER_MODEL])) for r in span["records"]}
    assert {f for f in facts if f[0] == "dicom"} == {
        ("dicom", "PA", "DX", "MONOCHROME1", 12, "Phantom Imaging", "PX-100"),
        ("dicom", "PA", "DX", "MONOCHROME2", 12, "Phantom Imaging", "PX-100")}
    assert {f for f in facts if f[0] == "curated"} == {("curated",) + ("unknown",) * 3 + (0,) + ("unknown",) * 2}


def test_one_patient_one_pseudonym_and_no_identifier_in_the_records(span, export):
    dicom_records = [r for r in span["records"] if _text(r[contract.SOURCE]) == "dicom"]
    patients = [_text(r[contract.PATIENT_ID]) for r in dicom_records]
    assert len(set(patients)) == 3  # patient A's two images share theirs
    assert all(p.startswith("dicom:") and len(p) == len("dicom:") + 32 for p in patients)


def test_nothing_written_holds_an_identifier_or_the_key(span, export):
    identifiers = F.identifiers_in([d for d in export["files"].values() if d.startswith(b"\0" * 128 + b"DICM")])
    identifiers |= {MRN_A, MRN_B, MRN_C, "ACC5551234", "zzlat", "zzburn", "zzanon", export["labels"], KEY}
    written = [p for p in glob.glob(os.path.join(span["config"].out_dir, "**"), recursive=True) if os.path.isfile(p)]
    assert written
    for path in written:
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        for identifier in identifiers - {export["labels"]} if path.endswith(contract.MANIFEST) else identifiers:
            assert identifier.encode() not in data, (os.path.basename(path), identifier)


def test_the_same_key_gives_the_same_pseudonyms_in_a_later_span_and_another_key_others(span, export, tmp_path):
    _, _ = _build(export, tmp_path / "same", span=2)
    _, _ = _build(export, tmp_path / "other", span=2, key="ab" * 32)
    ids = {name: sorted(_text(r[contract.PATIENT_ID]) for r in _records(str(tmp_path / name / "span-2")))
           for name in ("same", "other")}
    first = sorted(_text(r[contract.PATIENT_ID]) for r in span["records"] if _text(r[contract.SOURCE]) == "dicom")
    assert ids["same"] == first
    assert not set(ids["other"]) & set(first)


def test_a_dicom_span_is_built_where_the_key_is_not_by_a_remote_runner(export):
    dicom = DicomSource(root=export["root"], labels_file=export["labels"], key=_key(KEY))
    with pytest.raises(ValueError, match="DirectRunner, on the machine that holds the pseudonym key"):
        IngestConfig(source_roots={}, out_dir="gs://bucket/tfrecords", dicom=dicom,
                     beam_args=("--runner=DataflowRunner", "--project=p"))


def test_the_key_is_refused_beside_the_data_readable_by_all_or_short(export, tmp_path, monkeypatch):
    with pytest.raises(PseudonymKeyError, match="lies inside"):
        load_key(_key_file(tmp_path), data_folders=[str(tmp_path)])
    with pytest.raises(PseudonymKeyError, match="readable by every user"):
        load_key(_key_file(tmp_path / "k", mode=0o644))
    with pytest.raises(PseudonymKeyError, match="at least 32"):
        load_key(_key_file(tmp_path / "s", secret="short"))
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(PseudonymKeyError, match="CXR_PSEUDONYM_KEY"):
        load_key(None)
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, KEY)
    assert load_key(None).pseudonym("patient", MRN_A) == _key(KEY).pseudonym("patient", MRN_A)
    assert KEY not in repr(load_key(None))


@pytest.mark.parametrize("text,message", [
    ("file,label\na.dcm,PNEUMONIA\n", "row 2: label 'PNEUMONIA' is not one of"),
    ("name,label\na.dcm,COVID\n", "expected a header with the columns label and file or sop_instance_uid"),
    ("file,sop_instance_uid,label\na.dcm,1.2.3,COVID\n", "row 2: give a file or a sop_instance_uid"),
    ("file,label\na.dcm,COVID\na.dcm,NORMAL\n", "row 3: the same file has another label"),
])
def test_a_bad_labels_file_is_refused_naming_the_row_not_the_file(tmp_path, text, message):
    path = write(str(tmp_path / "labels.csv"), text.encode())
    with pytest.raises(LabelsError, match=message) as refused:
        read_labels(path)
    assert "a.dcm" not in str(refused.value)


def test_cxr_build_tfrecords_takes_a_dicom_folder_alone(export, tmp_path, capsys):
    key = _key_file(tmp_path / "keys")
    assert main(["build-tfrecords", "--dicom", export["root"], "--dicom-labels", export["labels"],
                 "--pseudonym-key-file", key, "--out", str(tmp_path / "out"),
                 "--beam-arg=--direct_running_mode=in_memory"]) == 0
    out = capsys.readouterr().out
    assert "span 1 written" in out and MRN_A not in out
    assert len(_records(str(tmp_path / "out" / "span-1"))) == 4
    assert main(["build-tfrecords", "--dicom", export["root"], "--out", str(tmp_path / "out2"),
                 "--pseudonym-key-file", key]) == 2
    assert "--dicom needs --dicom-labels" in capsys.readouterr().err
    os.chmod(key, 0o644)
    assert main(["build-tfrecords", "--dicom", export["root"], "--dicom-labels", export["labels"],
                 "--pseudonym-key-file", key, "--out", str(tmp_path / "out3")]) == 2
    assert "readable by every user" in capsys.readouterr().err
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o644
