"""What a DICOM must be to be converted (DicomRules), what a refusal says (DicomRefused), the acquisition
facts kept of it, and how a DICOM file is recognised: plain Python, so that the command line and the
settings read them without importing pydicom (convert.py does the work)."""
import dataclasses
from typing import NamedTuple, Tuple

from cxr import contract

DEFAULT_MODALITIES = ("CR", "DX")
DEFAULT_VIEW_POSITIONS = ("PA", "AP")
UNKNOWN = contract.UNKNOWN  # an acquisition fact the file does not state


@dataclasses.dataclass(frozen=True)
class DicomRules:
    """What a DICOM must be to be converted; ingestion, the client and the fronts each take these."""
    modalities: Tuple[str, ...] = DEFAULT_MODALITIES
    view_positions: Tuple[str, ...] = DEFAULT_VIEW_POSITIONS  # laterals (LL, RL...) refused by default
    allow_missing_view_position: bool = False
    max_pixels: int = contract.MAX_IMAGE_PIXELS
    max_decoded_bytes: int = contract.MAX_IMAGE_BYTES  # Rows x Columns x Bits Allocated / 8

    def __post_init__(self):
        for name in ("modalities", "view_positions"):
            values = getattr(self, name)
            if isinstance(values, str) or not values or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"dicom.{name} must be a non-empty list of codes, got {values!r}")
            object.__setattr__(self, name, tuple(v.strip().upper() for v in values))
        for name in ("max_pixels", "max_decoded_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"dicom.{name} must be a positive number, got {getattr(self, name)!r}")


class Acquisition(NamedTuple):
    """The non-identifying facts of an acquisition that become features (and monitoring's)."""
    modality: str
    view_position: str
    photometric_interpretation: str
    bits_stored: int
    manufacturer: str
    manufacturer_model: str
    transfer_syntax: str

    @classmethod
    def stated(cls, view_position: str = "") -> "Acquisition":
        """What a public dataset states (NIH's label file: the View Position), the rest unknown."""
        return cls(modality=UNKNOWN, view_position=view_position.strip().upper() or UNKNOWN,
                   photometric_interpretation=UNKNOWN, bits_stored=0, manufacturer=UNKNOWN,
                   manufacturer_model=UNKNOWN, transfer_syntax="")

    def feature_values(self) -> dict:
        """{record feature: value} (cxr/contract.py's acquisition features)."""
        return {contract.VIEW_POSITION: self.view_position, contract.MODALITY: self.modality,
                contract.PHOTOMETRIC_INTERPRETATION: self.photometric_interpretation,
                contract.BITS_STORED: self.bits_stored, contract.MANUFACTURER: self.manufacturer,
                contract.MANUFACTURER_MODEL: self.manufacturer_model}


class DicomRefused(ValueError):
    """Why a DICOM is not converted: the tag and what was expected (never a value that could identify)."""

    def __init__(self, tag: str, problem: str, name: str = ""):
        self.tag, self.problem, self.name = tag, problem, name
        super().__init__(f"{name}: {tag}: {problem}" if name else f"{tag}: {problem}")

    def named(self, name: str) -> "DicomRefused":
        return DicomRefused(self.tag, self.problem, name)


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    end = contract.DICOM_PREAMBLE_BYTES
    return data[end:end + len(contract.DICOM_PREFIX)] == contract.DICOM_PREFIX
