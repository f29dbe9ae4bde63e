"""A DICOM radiograph -> the grayscale PNG the model receives: the one conversion, wherever a DICOM enters.

Ingestion (`cxr build-tfrecords --dicom`), `cxr convert-dicom`, the client (`cxr predict FILE.dcm`) and
the serving fronts (`cxr serve`, `cxr log-proxy`) all call `convert`, so one file gives the same bytes
everywhere. The pixel steps follow the standard's order (PS3.3 C.11, PS3.4 N.2):

1. Stored values, as many bits as Bits Stored says (not Bits Allocated): bits above it are masked off,
   signed values sign-extended from it.
2. Modality LUT: the Modality LUT Sequence, else Rescale Slope / Intercept.
3. VOI: the VOI LUT Sequence, else the first Window Center / Width with VOI LUT Function LINEAR
   (the default), LINEAR_EXACT or SIGMOID, else the whole range the stored bits can hold, through step 2.
4. MONOCHROME1 (white = low signal, as CR plates often store it) inverted, so bone is always bright.
5. The result in [0, 1] written as a grayscale PNG: 16-bit where Bits Stored is over 8, so that
   Transform's min-max scaling keeps the depth, else 8-bit.

What is refused, before any pixel is decoded, each with the tag and what was expected: not DICOM; no
Pixel Data; a Modality or View Position outside the rules; a Photometric Interpretation other than
MONOCHROME1/2; more than one frame or sample per pixel; Rows x Columns or their decoded bytes over the
limits (the DICOM form of a decompression bomb); Burned In Annotation YES (it may carry patient text).
Messages hold the tag and, at most, a coded value of it (CT, LL, RGB): never a name, an id or a UID.
"""
import io
import math
import os
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from cxr.dicom.rules import UNKNOWN, Acquisition, DicomRefused, DicomRules, is_dicom

__all__ = ["Acquisition", "Converted", "DicomRefused", "DicomRules", "FileResult", "convert", "convert_files",
           "is_dicom"]

PHOTOMETRIC_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
VOI_LUT_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
PNG_COMPRESS_LEVEL = 0  # stored, not deflated: 4x faster to write, 3.6x to decode, 27 % larger on RG1 (bench/RESULTS.md);
# the records are gzipped anyway, and the fronts pass the PNG to TF Serving inside the pod.
_TEXT_FACT_CHARS = 64


class Converted(NamedTuple):
    png: bytes
    height: int
    width: int
    bit_depth: int  # of the PNG: 8 or 16
    acquisition: Acquisition
    # Identifiers, for the caller to look up a label or make pseudonyms of (dataprep/dicom_source.py);
    # never written in clear, never in a message.
    sop_instance_uid: str
    patient_id: str

    def __repr__(self) -> str:  # what a log or a traceback may print: no identifier
        return (f"Converted({self.width} x {self.height}, {self.bit_depth}-bit PNG of {len(self.png):,} bytes, "
                f"{self.acquisition})")


def convert(data: bytes, rules: DicomRules = DicomRules(), name: str = "") -> Converted:
    """The PNG the model receives for this DICOM file; raises DicomRefused (named `name`) if it is refused."""
    try:
        dataset = read_header(data, rules)
        pixels = _decoded(dataset)
        unit = _unit_range(dataset, pixels)
    except DicomRefused as refused:
        raise refused.named(name) if name else refused
    bit_depth = 16 if int(dataset.BitsStored) > 8 else 8
    png = to_png(unit, bit_depth)
    return Converted(png=png, height=unit.shape[0], width=unit.shape[1], bit_depth=bit_depth,
                     acquisition=acquisition(dataset), sop_instance_uid=str(dataset.get("SOPInstanceUID", "")).strip(),
                     patient_id=str(dataset.get("PatientID", "")).strip())


def read_header(data: bytes, rules: DicomRules) -> pydicom.Dataset:
    """The dataset once its header passes every rule (pixels not yet decoded); raises DicomRefused."""
    if not is_dicom(data):
        raise DicomRefused("file", "not a DICOM file: no 'DICM' prefix after the 128-byte preamble "
                                   "(a DICOM Part 10 file was expected)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as error:
        raise DicomRefused("file", f"unreadable DICOM header ({type(error).__name__})") from None
    if "PixelData" not in dataset:
        raise DicomRefused("(7FE0,0010) Pixel Data", "missing: the file holds no image")
    modality = _text(dataset, "Modality")
    if modality not in rules.modalities:
        raise DicomRefused("(0008,0060) Modality", f"{modality or 'missing'}; expected one of "
                                                   f"{', '.join(rules.modalities)}")
    view = _text(dataset, "ViewPosition")
    if not (view in rules.view_positions or (not view and rules.allow_missing_view_position)):
        raise DicomRefused("(0018,5101) View Position", f"{view or 'missing'}; expected one of "
                                                        f"{', '.join(rules.view_positions)} (frontal views)")
    photometric = _text(dataset, "PhotometricInterpretation")
    if photometric not in PHOTOMETRIC_INTERPRETATIONS:
        raise DicomRefused("(0028,0004) Photometric Interpretation",
                           f"{photometric or 'missing'}; expected MONOCHROME1 or MONOCHROME2 (grayscale)")
    _check_one(dataset, "NumberOfFrames", "(0028,0008) Number of Frames", "one frame")
    _check_one(dataset, "SamplesPerPixel", "(0028,0002) Samples per Pixel", "one sample per pixel")
    allocated, stored = _int(dataset, "BitsAllocated", "(0028,0100) Bits Allocated"), \
        _int(dataset, "BitsStored", "(0028,0101) Bits Stored")
    if allocated not in (8, 16):
        raise DicomRefused("(0028,0100) Bits Allocated", f"{allocated}; expected 8 or 16")
    if not 1 <= stored <= allocated:
        raise DicomRefused("(0028,0101) Bits Stored", f"{stored}; expected 1 to Bits Allocated ({allocated})")
    rows, columns = _int(dataset, "Rows", "(0028,0010) Rows"), _int(dataset, "Columns", "(0028,0011) Columns")
    if rows < 1 or columns < 1:
        raise DicomRefused("(0028,0010) Rows, (0028,0011) Columns", f"{rows} x {columns}; expected at least 1 x 1")
    if rows * columns > rules.max_pixels:
        raise DicomRefused("(0028,0010) Rows, (0028,0011) Columns",
                           f"{rows} x {columns} = {rows * columns:,} pixels, over the limit of {rules.max_pixels:,}")
    decoded_bytes = rows * columns * allocated // 8
    if decoded_bytes > rules.max_decoded_bytes:
        raise DicomRefused("(0028,0010) Rows x (0028,0011) Columns x (0028,0100) Bits Allocated",
                           f"{decoded_bytes:,} decoded bytes, over the limit of {rules.max_decoded_bytes:,}")
    if _text(dataset, "BurnedInAnnotation") == "YES":
        raise DicomRefused("(0028,0301) Burned In Annotation", "YES: the pixels may show patient text; "
                                                               "expected NO")
    return dataset


def acquisition(dataset: pydicom.Dataset) -> Acquisition:
    return Acquisition(
        modality=_text(dataset, "Modality") or UNKNOWN,
        view_position=_text(dataset, "ViewPosition") or UNKNOWN,
        photometric_interpretation=_text(dataset, "PhotometricInterpretation"),
        bits_stored=int(dataset.BitsStored),
        manufacturer=_fact(dataset, "Manufacturer"),
        manufacturer_model=_fact(dataset, "ManufacturerModelName"),
        transfer_syntax=str(getattr(dataset, "file_meta", {}).get("TransferSyntaxUID", "")))


def _decoded(dataset: pydicom.Dataset) -> np.ndarray:
    """The stored values, exactly Bits Stored wide (step 1)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as error:
        syntax = getattr(dataset.file_meta.get("TransferSyntaxUID"), "name", "unknown")
        raise DicomRefused("(0002,0010) Transfer Syntax UID", f"{syntax}: no decoder here can read it "
                                                              f"({_first_line(error)})") from None
    except (ValueError, TypeError, AttributeError, OSError, EOFError, KeyError) as error:
        raise DicomRefused("(7FE0,0010) Pixel Data", f"cannot be decoded: {_first_line(error)}") from None
    if stored.ndim != 2:
        raise DicomRefused("(7FE0,0010) Pixel Data", f"decodes to shape {stored.shape}; expected rows x columns")
    bits = int(dataset.BitsStored)
    values = stored.astype(np.int64) & ((1 << bits) - 1)
    if int(dataset.get("PixelRepresentation", 0)) == 1:  # two's complement in `bits` bits
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def _unit_range(dataset: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Steps 2-4: the displayed values in [0, 1], 1 the brightest."""
    modality_values, modality_range = _modality(dataset, stored)
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        unit = _voi_lut(dataset, modality_values)
    elif _has_window(dataset):
        unit = _window(dataset, modality_values)
    else:
        low, high = modality_range
        unit = (modality_values - low) / (high - low) if high > low else np.zeros_like(modality_values, np.float64)
    unit = np.clip(unit, 0.0, 1.0)
    if _text(dataset, "PhotometricInterpretation") == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _modality(dataset: pydicom.Dataset, stored: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float]]:
    """The modality LUT's output and the range of outputs the stored bits can reach through it."""
    bits = int(dataset.BitsStored)
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if "ModalityLUTSequence" in dataset and len(dataset.ModalityLUTSequence):
        try:
            values = apply_modality_lut(stored, dataset).astype(np.float64)
            # The table's every entry, through the same lookup: the outputs the stored bits can reach.
            entries = int(dataset.ModalityLUTSequence[0].LUTDescriptor[0]) or 1 << 16
            first = int(dataset.ModalityLUTSequence[0].LUTDescriptor[1])
            reachable = apply_modality_lut(np.arange(first, first + entries), dataset)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
            raise DicomRefused("(0028,3000) Modality LUT Sequence", f"unusable: {_first_line(error)}") from None
        return values, (float(reachable.min()), float(reachable.max()))
    slope = _number(dataset, "RescaleSlope", "(0028,1053) Rescale Slope", 1.0)
    intercept = _number(dataset, "RescaleIntercept", "(0028,1052) Rescale Intercept", 0.0)
    if slope == 0:
        raise DicomRefused("(0028,1053) Rescale Slope", "0; expected a non-zero number")
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return stored * slope + intercept, (ends[0], ends[1])


def _voi_lut(dataset: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    try:
        # apply_voi reads the first item's LUT Descriptor and Data and clamps to the table's ends.
        looked_up = apply_voi(np.rint(values).astype(np.int64), dataset, index=0).astype(np.float64)
        entry_bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise DicomRefused("(0028,3010) VOI LUT Sequence", f"unusable: {_first_line(error)}") from None
    top = float((1 << entry_bits) - 1)
    if looked_up.size and looked_up.max() > top:  # a descriptor that understates its entries' width
        top = float((1 << int(math.ceil(math.log2(looked_up.max() + 1)))) - 1)
    return looked_up / top


def _has_window(dataset: pydicom.Dataset) -> bool:
    return "WindowCenter" in dataset and "WindowWidth" in dataset and \
        dataset.WindowCenter not in (None, "") and dataset.WindowWidth not in (None, "")


def _window(dataset: pydicom.Dataset, x: np.ndarray) -> np.ndarray:
    """The first window, in [0, 1] (PS3.3 C.11.2.1.2)."""
    center = _first_number(dataset.WindowCenter, "(0028,1050) Window Center")
    width = _first_number(dataset.WindowWidth, "(0028,1051) Window Width")
    function = _text(dataset, "VOILUTFunction") or "LINEAR"
    if function not in VOI_LUT_FUNCTIONS:
        raise DicomRefused("(0028,1056) VOI LUT Function", f"{function}; expected one of {', '.join(VOI_LUT_FUNCTIONS)}")
    if function == "LINEAR":
        if width < 1:
            raise DicomRefused("(0028,1051) Window Width", f"{width:g}; expected at least 1 for LINEAR")
        return np.where(x <= center - 0.5 - (width - 1) / 2, 0.0,
                        np.where(x > center - 0.5 + (width - 1) / 2, 1.0,
                                 (x - (center - 0.5)) / (width - 1) + 0.5)) if width > 1 else \
            (x > center - 0.5).astype(np.float64)
    if width <= 0:
        raise DicomRefused("(0028,1051) Window Width", f"{width:g}; expected more than 0 for {function}")
    if function == "LINEAR_EXACT":
        return np.where(x <= center - width / 2, 0.0, np.where(x > center + width / 2, 1.0, (x - center) / width + 0.5))
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))


def to_png(unit: np.ndarray, bit_depth: int) -> bytes:
    """[0, 1] gray -> PNG bytes of that bit depth; the same values always give the same bytes."""
    top = (1 << bit_depth) - 1
    levels = np.rint(np.clip(unit, 0.0, 1.0) * top)
    image = Image.fromarray(levels.astype(np.uint16 if bit_depth == 16 else np.uint8),
                            mode="I;16" if bit_depth == 16 else "L")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else ""
    return str(value).strip().upper()


def _fact(dataset: pydicom.Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    text = " ".join(str(value).split())[:_TEXT_FACT_CHARS] if value not in (None, "") else ""
    return text or UNKNOWN


def _int(dataset: pydicom.Dataset, keyword: str, tag: str) -> int:
    value = dataset.get(keyword)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DicomRefused(tag, f"{'missing' if value is None else 'not a whole number'}; a whole number "
                                f"was expected") from None


def _check_one(dataset: pydicom.Dataset, keyword: str, tag: str, expected: str) -> None:
    value = dataset.get(keyword)
    if value in (None, ""):
        return
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise DicomRefused(tag, f"not a whole number; expected {expected}") from None
    if count != 1:
        raise DicomRefused(tag, f"{count}; expected {expected}")


def _number(dataset: pydicom.Dataset, keyword: str, tag: str, default: float) -> float:
    value = dataset.get(keyword)
    if value in (None, ""):
        return default
    return _first_number(value, tag)


def _first_number(value, tag: str) -> float:
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DicomRefused(tag, "not a number; a number was expected") from None
    if not math.isfinite(number):
        raise DicomRefused(tag, "not a finite number")
    return number


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


class FileResult(NamedTuple):
    """`cxr convert-dicom`'s answer for one file: where its PNG went and what it is, or why it was refused."""
    path: str
    png_path: str = ""
    converted: Optional[Converted] = None
    error: str = ""


def convert_files(paths: Sequence[str], out_dir: str, rules: DicomRules = DicomRules()) -> List[FileResult]:
    """Each file's PNG in out_dir (owner-only: they are patient images), named after the file; a file
    refused or unreadable gets its reason and nothing written."""
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    taken: set = set()
    results = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as error:
            results.append(FileResult(path, error=f"cannot read it ({error.strerror})"))
            continue
        try:
            converted = convert(data, rules)
        except DicomRefused as refused:
            results.append(FileResult(path, error=f"refused: {refused}"))
            continue
        png_path = _unique_path(out_dir, os.path.splitext(os.path.basename(path))[0] or "image", taken)
        descriptor = os.open(png_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(converted.png)
        os.chmod(png_path, 0o600)  # an existing file keeps its mode through O_TRUNC
        results.append(FileResult(path, png_path, converted))
    return results


def _unique_path(out_dir: str, stem: str, taken: set) -> str:
    name, count = f"{stem}.png", 1
    while name in taken:
        count += 1
        name = f"{stem}-{count}.png"
    taken.add(name)
    return os.path.join(out_dir, name)
