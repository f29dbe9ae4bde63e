"""A hospital's own DICOM export as a source of a span (`cxr build-tfrecords --dicom DIR --dicom-labels CSV`).

Each file is converted as everywhere else (cxr/dicom/convert.py) and the record holds that PNG, never
the DICOM: the DICOM's header holds the patient. Nothing identifying leaves the file: the records'
patient_id is a keyed pseudonym of Patient ID (cxr/dicom/pseudonyms.py), image_id one of the SOP
Instance UID, and the file, in the records, the manifest and every message, one of its path under DIR
(export tools often name files by MRN or accession number). The labels CSV is read here and never
copied.

The labels CSV has a `label` column (one of the four labels) and, per row, either `file` (the path under
DIR) or `sop_instance_uid`. A file that neither names is counted as unmapped, as the public datasets'
unlabelled classes are.
"""
import csv
import dataclasses
import io
import re
from typing import Dict, Mapping, Optional, Tuple

from cxr import contract
from cxr.dicom.pseudonyms import PseudonymKey
from cxr.dicom.rules import DicomRules

DEFAULT_SOURCE = contract.DICOM
FILE_COLUMN, UID_COLUMN, LABEL_COLUMN = "file", "sop_instance_uid", "label"
_SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Names a DICOM export writes beside the images that are not images of a patient.
IGNORED_NAMES = frozenset({"dicomdir"})


class LabelsError(ValueError):
    """The labels CSV cannot be used; the message names the row, never a file name or UID it holds."""


@dataclasses.dataclass(frozen=True)
class DicomSource:
    root: str
    labels_file: str
    key: PseudonymKey
    source: str = DEFAULT_SOURCE
    rules: DicomRules = DicomRules()
    # Read from labels_file by `with_labels` (the driver reads it once; the workers get the tables).
    labels_by_file: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels_by_uid: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not _SOURCE_NAME.fullmatch(self.source) or self.source in contract.SOURCES + (contract.SERVED,):
            raise ValueError(f"--dicom-source {self.source!r}: expected a lower-case name of letters, digits and _ "
                             f"(up to 32), other than {', '.join(contract.SOURCES + (contract.SERVED,))}")

    def with_labels(self) -> "DicomSource":
        by_file, by_uid = read_labels(self.labels_file)
        return dataclasses.replace(self, labels_by_file=by_file, labels_by_uid=by_uid)

    def file_pseudonym(self, relpath: str) -> str:
        return f"file-{self.key.pseudonym('file', relpath)}"

    def patient_pseudonym(self, patient_id: str) -> str:
        return f"{self.source}:{self.key.pseudonym('patient', patient_id)}"

    def image_pseudonym(self, sop_instance_uid: str) -> str:
        return self.key.pseudonym("image", sop_instance_uid)

    def label_of(self, relpath: str, sop_instance_uid: str) -> Optional[str]:
        return self.labels_by_file.get(relpath) or self.labels_by_uid.get(sop_instance_uid)

    def describe(self) -> dict:
        """For the manifest: where the files and labels were and what was taken; nothing of a patient."""
        return {"source": self.source, "root": self.root, "labels_file": self.labels_file,
                "labelled_files": len(self.labels_by_file), "labelled_sop_instance_uids": len(self.labels_by_uid),
                "modalities": list(self.rules.modalities), "view_positions": list(self.rules.view_positions),
                "allow_missing_view_position": self.rules.allow_missing_view_position,
                "pseudonym_key": self.key.origin}


def read_labels(path: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """({path under DIR: label}, {SOP Instance UID: label}) from the labels CSV (a local or gs:// path)."""
    from apache_beam.io.filesystems import FileSystems  # not at import: the command line parses without Beam
    try:
        with FileSystems.open(path) as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise LabelsError(f"--dicom-labels {path}: cannot read it as UTF-8 text ({type(error).__name__})") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [name.strip().lower() for name in (reader.fieldnames or [])]
    if LABEL_COLUMN not in columns or not ({FILE_COLUMN, UID_COLUMN} & set(columns)):
        raise LabelsError(f"--dicom-labels {path}: expected a header with the columns {LABEL_COLUMN} and "
                          f"{FILE_COLUMN} or {UID_COLUMN}, got {', '.join(columns) or 'none'}")
    by_file: Dict[str, str] = {}
    by_uid: Dict[str, str] = {}
    for row_number, row in enumerate(reader, start=2):
        row = {(name or "").strip().lower(): (value or "").strip() for name, value in row.items()}
        label = row.get(LABEL_COLUMN, "").upper()
        if label not in contract.LABELS:
            raise LabelsError(f"--dicom-labels {path} row {row_number}: label {label!r} is not one of "
                              f"{', '.join(contract.LABELS)}")
        file, uid = row.get(FILE_COLUMN, "").replace("\\", "/").lstrip("/"), row.get(UID_COLUMN, "")
        if bool(file) == bool(uid):
            raise LabelsError(f"--dicom-labels {path} row {row_number}: give a {FILE_COLUMN} or a {UID_COLUMN}, "
                              f"one of the two")
        table, key = (by_file, file) if file else (by_uid, uid)
        if table.get(key, label) != label:
            raise LabelsError(f"--dicom-labels {path} row {row_number}: the same {FILE_COLUMN if file else UID_COLUMN} "
                              f"has another label on an earlier row")
        table[key] = label
    return by_file, by_uid
