"""DICOM files for the tests, written with pydicom from the phantoms: every transfer syntax the conversion
reads, both photometric interpretations, 8 to 16 bits, Modality and VOI LUT variants, and what it refuses.

Each file carries identifiers a hospital's export would (PLANTED): the tests that ingest and serve these
files look for every one of them in everything that was written. The real radiographs are NEMA's (RG1 and
RG3, from pydicom-data: `real_file`).
"""
import io
import warnings
from typing import Optional, Sequence

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
    JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, JPEGLSNearLossless, RLELossless)

from cxr.dataprep import phantoms

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
LOSSLESS = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
LOSSY = (JPEGLSNearLossless, JPEG2000, JPEGBaseline8Bit)

# What an export carries that must never leave the file (tests/test_no_identifiers.py and the DICOM span
# tests scan for each). UIDs are made per file: see `uids`.
PLANTED = {
    "PatientName": "ZZPLANTED^JANE^Q", "PatientID": "MRN90817263", "PatientBirthDate": "19470312",
    "AccessionNumber": "ACC55512345", "InstitutionName": "St Planted General Hospital",
    "ReferringPhysicianName": "ZZDOCTOR^WHO", "StationName": "PLANTEDSTATION7", "OtherPatientIDs": "OTHERID4455",
}
_UID_ROOT = "1.2.826.0.1.3680043.10.1137."  # a root under pydicom's, for test files only


def phantom(seed: int = 0, size: int = 64, finding: str = "normal") -> np.ndarray:
    """A phantom radiograph in [0, 1], 1 = bright (bone)."""
    rng = np.random.default_rng(seed)
    return np.clip(phantoms.render(rng, phantoms.Anatomy.random(rng), finding, size), 0.0, 1.0)


def stored_values(unit: np.ndarray, bits_stored: int, signed: bool = False, monochrome1: bool = False) -> np.ndarray:
    """[0, 1] -> the whole range `bits_stored` can hold (MONOCHROME1: inverted), as stored."""
    top = (1 << bits_stored) - 1
    levels = np.rint((1.0 - unit if monochrome1 else unit) * top).astype(np.int64)
    return levels - (1 << (bits_stored - 1)) if signed else levels


def dataset(stored: np.ndarray, bits_stored: int = 12, bits_allocated: Optional[int] = None,
            photometric: str = "MONOCHROME2", signed: bool = False, modality: str = "DX", view: Optional[str] = "PA",
            patient_id: str = PLANTED["PatientID"], sop_uid: Optional[str] = None, **tags) -> Dataset:
    """A DX (or CR) image dataset of these stored values, carrying the planted identifiers."""
    bits_allocated = bits_allocated or (8 if bits_stored <= 8 else 16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # PixelData below: native, little endian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE if modality == "CR" else DX_FOR_PRESENTATION
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid or pydicom.uid.generate_uid(_UID_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = pydicom.uid.generate_uid(_UID_ROOT)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(_UID_ROOT)
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.PatientID = patient_id
    ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    ds.Manufacturer, ds.ManufacturerModelName = "Phantom Imaging", "PX-100"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.BurnedInAnnotation = "NO"
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (bits_allocated, signed)]
    ds.PixelData = stored.astype(dtype).tobytes()
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword) if keyword in ds else None
        else:
            setattr(ds, keyword, value)
    return ds


def encoded(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    """The dataset as a Part 10 file in this transfer syntax (pydicom's encoders; Pillow's for JPEG baseline)."""
    ds = ds.copy()
    ds.file_meta = ds.file_meta.copy()
    if syntax in (ExplicitVRBigEndian,) and ds.BitsAllocated == 16:
        dtype = ">i2" if ds.PixelRepresentation else ">u2"
        ds.PixelData = ds.pixel_array.astype(dtype).tobytes()  # pydicom writes OW values as they are
    if syntax in UNCOMPRESSED:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == JPEGBaseline8Bit:
        if ds.BitsAllocated != 8:
            raise ValueError("JPEG baseline holds 8-bit samples")
        jpeg = io.BytesIO()
        Image.fromarray(ds.pixel_array.astype(np.uint8), "L").save(jpeg, "JPEG", quality=95)
        ds.PixelData = encapsulate([jpeg.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        ds.LossyImageCompression = "01"
    else:
        options = {}
        if syntax == JPEG2000:
            options["j2k_cr"] = [5]  # 5:1, a typical lossy archive setting
        if syntax == JPEGLSNearLossless:
            options["jls_error"] = 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.compress(syntax, generate_instance_uid=False, **options)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dicom_file(seed: int = 0, size: int = 64, bits_stored: int = 12, syntax=ExplicitVRLittleEndian,
               photometric: str = "MONOCHROME2", finding: str = "normal", **tags) -> bytes:
    stored = stored_values(phantom(seed, size, finding), bits_stored, monochrome1=photometric == "MONOCHROME1")
    return encoded(dataset(stored, bits_stored=bits_stored, photometric=photometric, **tags), syntax)


def real_file(name: str) -> bytes:
    """One of NEMA's WG04 radiographs in pydicom-data (RG1_UNCR.dcm, RG1_J2KR.dcm, RG1_J2KI.dcm...), no network."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom-data warns that it cannot download what it lacks
        path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not in pydicom-data (requirements.lock installs it)")
    with open(path, "rb") as f:
        return f.read()


def identifiers_in(ds_bytes: Sequence[bytes]) -> set:
    """Every identifying value the given files carry: the planted ones and their UIDs, as text."""
    found = set(PLANTED.values())
    for data in ds_bytes:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        found |= {str(ds.get(k)) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID")
                  if ds.get(k)}
    return found


def real_downsampled(name: str, step: int, syntax=ExplicitVRLittleEndian) -> bytes:
    """A real radiograph's pixels, every `step`-th row and column, under its own header (window,
    MONOCHROME1, Bits Stored), plus the planted identifiers: small enough for the tests' model limits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(real_file(name)))
        pixels = np.ascontiguousarray(ds.pixel_array[::step, ::step])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    return encoded(ds, syntax)


def write_dicom_export(root: str, labels_csv: str, per_class: int = 4, size: int = 64, seed: int = 0) -> dict:
    """A hospital's export of phantoms in DICOM, as PACS exports name them (folders by MRN, files by
    accession number), two images per patient, half labelled by path and half by SOP Instance UID in
    `labels_csv`. Returns {relpath: DICOM bytes}."""
    import os
    written, rows = {}, ["file,sop_instance_uid,label"]
    findings = {"BACTERIAL_PNEUMONIA": "pneumonia", "COVID": "covid", "NORMAL": "normal", "PNEUMOTHORAX": "pneumothorax"}
    syntaxes = (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, JPEGLSLossless)
    for class_index, (label, finding) in enumerate(findings.items()):
        for n in range(per_class):
            number = seed * 10_000 + class_index * 1_000 + n
            mrn, accession = f"MRN{7_000_000 + number // 2}", f"ACC{number:08d}"
            uid = pydicom.uid.generate_uid(_UID_ROOT)
            data = dicom_file(seed=seed * 7919 + number, size=size, bits_stored=(10, 12, 16)[n % 3], finding=finding,
                              syntax=syntaxes[n % len(syntaxes)], photometric=("MONOCHROME1", "MONOCHROME2")[n % 2],
                              patient_id=mrn, sop_uid=uid, modality=("CR", "DX")[n % 2],
                              view=("PA", "AP")[(n // 2) % 2])
            relpath = f"{mrn}/{accession}.dcm"
            path = os.path.join(root, relpath)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            written[relpath] = data
            rows.append(f"{relpath},,{label}" if n % 2 else f",{uid},{label}")
    os.makedirs(os.path.dirname(labels_csv), exist_ok=True)
    with open(labels_csv, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return written
