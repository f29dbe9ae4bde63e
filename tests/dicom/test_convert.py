"""The one DICOM conversion (cxr/dicom/convert.py): on NEMA's real chest CRs, on phantoms in every transfer
syntax, against pydicom's own LUT and window functions, and each refusal."""
import io
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_voi, apply_windowing
from pydicom.uid import JPEGBaseline8Bit

import dicom_files as F
from cxr.dicom.convert import DicomRefused, DicomRules, convert, is_dicom

PYDICOM_TEST_FILE_RULES = DicomRules(modalities=("NM", "MR", "OT", "CT"), allow_missing_view_position=True)


def unit_pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    top = 65535.0 if image.mode.startswith("I") else 255.0
    return np.asarray(image, dtype=np.float64) / top


# --- NEMA's real radiographs ------------------------------------------------------------------------------

def test_rg1_lossless_jpeg_2000_converts_to_the_bytes_of_the_uncompressed_file():
    uncompressed, lossless = convert(F.real_file("RG1_UNCR.dcm")), convert(F.real_file("RG1_J2KR.dcm"))
    assert lossless.png == uncompressed.png
    assert (uncompressed.height, uncompressed.width, uncompressed.bit_depth) == (1955, 1841, 16)
    assert uncompressed.acquisition.photometric_interpretation == "MONOCHROME1"
    assert uncompressed.acquisition.bits_stored == 15


def test_rg1_lossy_jpeg_2000_converts_close_to_the_uncompressed_file():
    reference = unit_pixels(convert(F.real_file("RG1_UNCR.dcm")).png)
    lossy = unit_pixels(convert(F.real_file("RG1_J2KI.dcm")).png)
    assert np.abs(lossy - reference).mean() < 0.005
    assert np.abs(lossy - reference).max() < 0.05


def test_rg1_is_shown_with_dark_lungs_and_bright_bone_although_stored_monochrome1():
    pixels = unit_pixels(convert(F.real_file("RG1_UNCR.dcm")).png)
    h, w = pixels.shape
    lungs = np.concatenate([pixels[h // 3:h // 2, w // 5:w // 3].ravel(), pixels[h // 3:h // 2, 2 * w // 3:4 * w // 5].ravel()])
    mediastinum = pixels[h // 3:h // 2, 9 * w // 20:11 * w // 20]
    assert lungs.mean() < mediastinum.mean() - 0.2
    # The stored values run the other way: read naively, the lungs would be the bright part.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array.astype(float)
    assert stored[h // 3:h // 2, w // 5:w // 3].mean() > stored[h // 3:h // 2, 9 * w // 20:11 * w // 20].mean()


def test_rg1_applies_its_window_not_the_stored_range():
    # RG1 says Window Center 15000, Width 30000 (LINEAR): stored 0 -> black end, 30000 -> white end, inverted.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array.astype(float)
    pixels = unit_pixels(convert(F.real_file("RG1_UNCR.dcm")).png)
    expected = 1.0 - np.clip((stored - 14999.5) / 29999 + 0.5, 0, 1)
    assert np.abs(pixels - expected).max() <= 1 / 65535


def test_rg3_a_ten_bit_ap_cr_converts_to_sixteen_bits():
    converted = convert(F.real_file("RG3_UNCR.dcm"))
    assert converted.acquisition.view_position == "AP" and converted.acquisition.bits_stored == 10
    assert converted.bit_depth == 16
    assert convert(F.real_file("RG3_J2KR.dcm")).png == converted.png
    assert len(np.unique(unit_pixels(converted.png))) > 256  # more levels than 8 bits could keep


# --- every transfer syntax, both photometric interpretations, 8 to 16 bits ------------------------------

CASES = [(syntax, bits) for syntax in F.UNCOMPRESSED + F.LOSSLESS + F.LOSSY for bits in (8, 10, 12, 16)
         if syntax != JPEGBaseline8Bit or bits == 8]


@pytest.mark.parametrize("syntax,bits", CASES, ids=[f"{s.name}-{b}bit" for s, b in CASES])
def test_each_transfer_syntax_gives_the_picture_stored_in_both_photometric_interpretations(syntax, bits):
    picture = F.phantom(seed=5, size=96)
    results = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        data = F.dicom_file(seed=5, size=96, bits_stored=bits, syntax=syntax, photometric=photometric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
        converted = convert(data)
        assert converted.bit_depth == (16 if bits > 8 else 8)
        results[photometric] = unit_pixels(converted.png)
    for pixels in results.values():
        error = np.abs(pixels - picture)
        if syntax in F.LOSSY:
            assert error.mean() < 0.03
        else:
            assert error.max() <= 0.5 / ((1 << bits) - 1) + 0.5 / ((1 << (16 if bits > 8 else 8)) - 1)
    if syntax not in F.LOSSY:
        assert np.array_equal(results["MONOCHROME1"], results["MONOCHROME2"])


@pytest.mark.parametrize("name,syntax_name", [
    ("JPEG-LL.dcm", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"),
    ("JPGExtended.dcm", "JPEG Extended (Process 2 and 4)"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression"),
    ("MR_small_RLE.dcm", "RLE Lossless"), ("MR_small_bigendian.dcm", "Explicit VR Big Endian"),
    ("image_dfl.dcm", "Deflated Explicit VR Little Endian"), ("MR_small_implicit.dcm", "Implicit VR Little Endian"),
])
def test_files_other_encoders_wrote_decode_to_what_pydicom_reads(name, syntax_name):
    # pydicom's test files, written by other toolkits (JPEG lossless and 12-bit extended have no encoder here).
    data = F.real_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        stored = ds.pixel_array.astype(np.float64)
    assert ds.file_meta.TransferSyntaxUID.name == syntax_name
    pixels = unit_pixels(convert(data, PYDICOM_TEST_FILE_RULES).png)
    assert pixels.shape == stored.shape
    # Same order of values as what pydicom decoded (the window, if any, is monotonic).
    assert np.corrcoef(pixels.ravel(), stored.ravel())[0, 1] > 0.9


def test_the_same_file_always_gives_the_same_bytes():
    data = F.dicom_file(seed=2, bits_stored=12)
    assert convert(data).png == convert(data).png


# --- the standard's order: Bits Stored, Modality LUT, VOI, MONOCHROME1 ----------------------------------

def test_bits_above_bits_stored_are_masked_off():
    stored = F.stored_values(F.phantom(3), 12)
    clean = F.encoded(F.dataset(stored, bits_stored=12))
    overlay = F.encoded(F.dataset(stored | (1 << 15), bits_stored=12))  # an overlay plane in bit 15
    assert convert(overlay).png == convert(clean).png


def test_signed_stored_values_are_sign_extended_from_bits_stored():
    stored = F.stored_values(F.phantom(3), 12, signed=True)
    signed = convert(F.encoded(F.dataset(stored, bits_stored=12, signed=True)))
    unsigned = convert(F.encoded(F.dataset(stored + 2048, bits_stored=12)))
    assert signed.png == unsigned.png


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("slope,intercept", [(1.0, 0.0), (2.0, -1024.0)])
def test_the_window_after_rescale_agrees_with_pydicom(function, slope, intercept):
    stored = F.stored_values(F.phantom(4), 12)
    center, width = 1500.0 * slope + intercept, 2000.0 * slope
    ds = F.dataset(stored, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept,
                   WindowCenter=center, WindowWidth=width, VOILUTFunction=function)
    ours = unit_pixels(convert(F.encoded(ds)).png)
    rescaled = stored * slope + intercept
    y_min, y_max = 0 * slope + intercept, 4095 * slope + intercept  # pydicom's output range for this data
    theirs = (apply_windowing(rescaled.astype(np.float64), ds) - y_min) / (y_max - y_min)
    assert np.abs(ours - theirs).max() <= 1 / 65535 + 1e-9
    assert ours.min() < 0.05 and ours.max() > 0.95  # the window, not the stored range


def test_without_a_window_the_range_bits_stored_can_hold_is_shown():
    stored = np.array([[0, 1023], [2047, 4095]])
    pixels = unit_pixels(convert(F.encoded(F.dataset(stored, bits_stored=12))).png)
    assert np.allclose(pixels, stored / 4095, atol=1 / 65535)


def test_a_voi_lut_sequence_wins_over_a_window_and_agrees_with_pydicom():
    data = F.real_file("vlut_04.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        looked_up = apply_voi(ds.pixel_array, ds).astype(np.float64)
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    ours = unit_pixels(convert(data, PYDICOM_TEST_FILE_RULES).png)
    assert np.abs(ours - looked_up / ((1 << bits) - 1)).max() <= 0.5 / 255 + 1e-9


def test_a_modality_lut_sequence_is_applied_before_the_window():
    stored = np.array([[0, 1], [2, 3]], dtype=np.int64)
    table = pydicom.Dataset()
    table.LUTDescriptor = [4, 0, 16]  # 4 entries from stored value 0, 16-bit entries (PS3.3 C.11.1.1)
    table.LUTData = [4095, 3000, 1000, 0]  # reverses the stored order; entries reach 0..4095
    ds = F.dataset(stored, bits_stored=12)
    ds.ModalityLUTSequence = pydicom.Sequence([table])
    ds["ModalityLUTSequence"][0]["LUTData"].VR = "US"
    pixels = unit_pixels(convert(F.encoded(ds)).png)
    assert np.allclose(pixels, np.array([[4095, 3000], [1000, 0]]) / 4095, atol=1 / 65535)


# --- refusals: the tag, what was expected, nothing identifying -------------------------------------------

def _refusal(data, rules=DicomRules()):
    with pytest.raises(DicomRefused) as refused:
        convert(data, rules, name="file 7")
    message = str(refused.value)
    assert message.startswith("file 7: ")
    for planted in F.PLANTED.values():
        assert planted not in message
    return message


PHANTOM = F.stored_values(F.phantom(6), 12)


@pytest.mark.parametrize("tags,expected", [
    ({"Modality": "CT"}, "(0008,0060) Modality: CT; expected one of CR, DX"),
    ({"ViewPosition": "LL"}, "(0018,5101) View Position: LL; expected one of PA, AP"),
    ({"ViewPosition": None}, "(0018,5101) View Position: missing"),
    ({"PhotometricInterpretation": "RGB"}, "(0028,0004) Photometric Interpretation: RGB; expected MONOCHROME1 or"),
    ({"NumberOfFrames": 2}, "(0028,0008) Number of Frames: 2; expected one frame"),
    ({"BurnedInAnnotation": "YES"}, "(0028,0301) Burned In Annotation: YES"),
    ({"BitsStored": 20}, "(0028,0101) Bits Stored: 20; expected 1 to Bits Allocated (16)"),
    ({"VOILUTFunction": "LOG", "WindowCenter": 100, "WindowWidth": 50}, "(0028,1056) VOI LUT Function: LOG"),
    ({"WindowCenter": 100, "WindowWidth": 0}, "(0028,1051) Window Width: 0; expected at least 1 for LINEAR"),
    ({"RescaleSlope": 0}, "(0028,1053) Rescale Slope: 0"),
])
def test_each_refusal_names_its_tag_and_what_was_expected(tags, expected):
    assert expected in _refusal(F.encoded(F.dataset(PHANTOM, bits_stored=12, **tags)))


def test_modalities_and_views_are_configurable():
    lateral = F.encoded(F.dataset(PHANTOM, bits_stored=12, ViewPosition="LL", Modality="CR"))
    assert convert(lateral, DicomRules(view_positions=("PA", "AP", "LL"))).height == PHANTOM.shape[0]
    no_view = F.encoded(F.dataset(PHANTOM, bits_stored=12, view=None))
    assert convert(no_view, DicomRules(allow_missing_view_position=True)).acquisition.view_position == "unknown"
    with pytest.raises(ValueError, match="dicom.modalities"):
        DicomRules(modalities="CR")


def test_not_dicom_and_no_pixel_data_are_refused():
    png = F.encoded(F.dataset(PHANTOM, bits_stored=12))  # a real DICOM, then the same without pixels
    assert "no 'DICM' prefix" in _refusal(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert not is_dicom(b"\x89PNG\r\n\x1a\n") and is_dicom(png)
    ds = F.dataset(PHANTOM, bits_stored=12)
    del ds.PixelData
    assert "(7FE0,0010) Pixel Data: missing" in _refusal(F.encoded(ds))


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding():
    # The header declares 30,000 x 30,000 16-bit pixels; the pixel data is 8 KB: decoding would fail
    # differently (and allocate 1.8 GB), so the message proves the header was read first.
    ds = F.dataset(PHANTOM, bits_stored=12, Rows=30_000, Columns=30_000)
    message = _refusal(F.encoded(ds))
    assert "30000 x 30000 = 900,000,000 pixels, over the limit of 50,000,000" in message
    ds = F.dataset(PHANTOM, bits_stored=12, Rows=6_000, Columns=6_000)
    assert "decoded bytes, over the limit of" in _refusal(F.encoded(ds))


def test_truncated_pixel_data_is_refused_naming_the_pixel_data():
    data = F.encoded(F.dataset(PHANTOM, bits_stored=12))
    assert "(7FE0,0010) Pixel Data: cannot be decoded" in _refusal(data[:-1000])


def test_the_conversion_runs_without_tensorflow():
    code = ("import sys; import cxr.dicom.convert, cxr.dicom.pseudonyms; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]

