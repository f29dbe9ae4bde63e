"""NIH ChestX-ray14's `Data_Entry_2017.csv` (or the `_v2020` revision)."""
import csv
import io
from typing import Iterator, NamedTuple, Optional

from apache_beam.io.filesystems import FileSystems

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")  # preferred first
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
ALL_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
               "OriginalImagePixelSpacing[x", "y]")


class NihCsvError(ValueError):
    """The NIH label file is missing or does not have the columns it should."""


class NihRow(NamedTuple):
    image_index: str
    finding_labels: str
    patient_id: str
    view_position: str


def find_csv(root: str) -> str:
    """The label file at the root or one folder below; the v2020 revision wins."""
    for name in CSV_NAMES:
        for pattern in (f"{root.rstrip('/')}/{name}", f"{root.rstrip('/')}/*/{name}"):
            matches = FileSystems.match([pattern])[0].metadata_list
            if matches:
                return sorted(m.path for m in matches)[0]
    raise NihCsvError(f"no {' or '.join(CSV_NAMES)} in {root} or the folders just below it; "
                      "the NIH download keeps it beside the images_NNN folders")


def read_rows(csv_path: str) -> Iterator[NihRow]:
    with FileSystems.open(csv_path) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        _check_columns(csv_path, reader.fieldnames)
        for line_number, row in enumerate(reader, start=2):
            parsed = _parse_row(row)
            if parsed is None:
                raise NihCsvError(f"{csv_path}, line {line_number}: empty 'Image Index' or "
                                  f"'Patient ID' (got {dict(row)})")
            yield parsed


def _check_columns(csv_path: str, fieldnames) -> None:
    present = [name.strip() for name in fieldnames or []]
    missing = [column for column in REQUIRED_COLUMNS if column not in present]
    if missing:
        raise NihCsvError(f"{csv_path}: missing column(s) {', '.join(map(repr, missing))}; "
                          f"expected the NIH header {', '.join(ALL_COLUMNS)}")


def _parse_row(row) -> Optional[NihRow]:
    row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
    if not row.get("Image Index") or not row.get("Patient ID"):
        return None
    return NihRow(image_index=row["Image Index"], finding_labels=row.get("Finding Labels", ""),
                  patient_id="nih:" + (row["Patient ID"].lstrip("0") or "0"),
                  view_position=row.get("View Position", ""))
