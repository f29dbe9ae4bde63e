"""The typed settings of one `cxr build-tfrecords` run."""
import dataclasses
from typing import Dict, Optional, Tuple

from cxr.contract import MAX_IMAGE_PIXELS, SOURCES, span_dir
from cxr.dataprep.dicom_source import DicomSource
from cxr.dataprep.mapping import ClassMapping

# Beam's DirectRunner in multi-process mode, one worker per core, unless the
# user's --beam-arg flags say otherwise (later flags win in Beam's parser).
DEFAULT_BEAM_ARGS = (
    "--runner=DirectRunner",
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",
)


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    source_roots: Dict[str, str]
    out_dir: str
    span: int = 1
    mapping: ClassMapping = dataclasses.field(default_factory=ClassMapping.multi_source)
    # Near duplicates: 64-bit perceptual hashes within this Hamming distance
    # (and the 256-bit hashes within four times it).
    # -1 turns near-duplicate search off and keeps only exact (sha256) matches.
    near_duplicate_max_distance: int = 4
    # Decompression-bomb guard, checked from the header before decoding.
    max_pixels: int = MAX_IMAGE_PIXELS
    overwrite: bool = False
    beam_args: Tuple[str, ...] = ()
    dicom: Optional[DicomSource] = None  # a hospital's DICOM export (dataprep/dicom_source.py)

    def __post_init__(self):
        unknown = set(self.source_roots) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown sources {sorted(unknown)}; expected some of {SOURCES}")
        if not self.source_roots and self.dicom is None:
            raise ValueError("give at least one dataset folder (--covid-radiography, --curated, --nih or --dicom)")
        if self.dicom is not None and not all(arg.startswith("--direct") or arg == "--runner=DirectRunner"
                                              for arg in self.pipeline_args()):
            # The DoFns carry the pseudonym key: a remote runner would stage it with the pipeline.
            raise ValueError("a DICOM span is built with Beam's DirectRunner, on the machine that holds the "
                             "pseudonym key; drop the --beam-arg runner flags")
        if self.span < 0:
            raise ValueError(f"--span must be 0 or more, got {self.span}")
        if self.near_duplicate_max_distance < -1 or self.near_duplicate_max_distance > 16:
            raise ValueError("near_duplicate_max_distance must lie in -1..16, "
                             f"got {self.near_duplicate_max_distance}")

    @property
    def span_dir(self) -> str:
        return span_dir(self.out_dir, self.span)

    def pipeline_args(self) -> Tuple[str, ...]:
        return DEFAULT_BEAM_ARGS + tuple(self.beam_args)

    def root(self, source: str) -> Optional[str]:
        return self.source_roots.get(source)
