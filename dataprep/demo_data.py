"""`cxr demo-data`: phantom X-rays written into the three datasets' real on-disk layouts.

Synthetic, not medical data: it exists so the pipeline can run end to end
without the real downloads. The trees reproduce what users download, quirks
included (masks/ beside images/, names with spaces and parentheses, JPEGs of
mixed sizes, an NIH label file with several images per patient and multi-label
findings), and a few copies across and within datasets, as the real ones have:
near duplicates (a re-encoded JPEG of a Radiography PNG), one exact duplicate,
and one copy that carries a different label (a conflict).
"""
import csv
import dataclasses
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from cxr.dataprep import phantoms

RADIOGRAPHY_DIR = "covid19-radiography-database"
CURATED_DIR = "curated-cxr"
NIH_DIR = "nih-chest-xrays"
NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
               "OriginalImagePixelSpacing[x", "y]", ""]


@dataclasses.dataclass(frozen=True)
class DemoDataSpec:
    out_dir: str
    per_class: int = 60
    size: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.per_class < 4:
            raise ValueError(f"--per-class must be at least 4, got {self.per_class}")
        if not 32 <= self.size <= 2048:
            raise ValueError(f"--size must lie in 32..2048 pixels, got {self.size}")


def write_demo_data(spec: DemoDataSpec) -> Dict[str, str]:
    """Writes the three trees under spec.out_dir; returns each dataset's root folder."""
    writer = _Writer(spec)
    radiography = writer.radiography()
    writer.curated(copies_of=radiography)
    writer.nih()
    return {"covid_radiography": writer.root(RADIOGRAPHY_DIR), "curated": writer.root(CURATED_DIR),
            "nih": writer.root(NIH_DIR)}


class _Writer:
    def __init__(self, spec: DemoDataSpec):
        self.spec = spec
        self._seeds = np.random.SeedSequence(spec.seed)

    def root(self, name: str) -> str:
        return os.path.join(self.spec.out_dir, name)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self._seeds.spawn(1)[0])

    def phantom(self, finding: str, anatomy=None, size=None) -> np.ndarray:
        rng = self.rng()
        anatomy = anatomy or phantoms.Anatomy.random(rng)
        return phantoms.render(rng, anatomy, finding, size or self.spec.size)

    def radiography(self) -> Dict[str, Dict[int, np.ndarray]]:
        n = self.spec.per_class
        base = os.path.join(self.root(RADIOGRAPHY_DIR), "COVID-19_Radiography_Dataset")
        folders = {"COVID": ("covid", n), "Normal": ("normal", n),
                   "Lung_Opacity": ("opacity", n // 4), "Viral Pneumonia": ("viral", n // 4)}
        near_copies = self._near_copies()
        # Only the pictures copied later are kept (an image at 512 px is 2 MiB in float64).
        kept = {"COVID": set(range(near_copies)) | {folders["COVID"][1] - 1}, "Normal": set(range(1 + near_copies))}
        written = {}
        for folder, (finding, count) in folders.items():
            written[folder] = {}
            for i in range(count):
                image = self.phantom(finding)
                name = f"{folder}-{i + 1}.png"
                _save(os.path.join(base, folder, "images", name), phantoms.to_uint8(image), "PNG")
                _save(os.path.join(base, folder, "masks", name), _lung_mask_picture(image), "PNG")
                if i in kept.get(folder, ()):
                    written[folder][i] = image
        # One exact copy under a new name, as the real releases contain.
        exact = os.path.join(base, "Normal", "images", f"Normal-{n + 1}.png")
        _save(exact, phantoms.to_uint8(written["Normal"][0]), "PNG")
        _write_text(os.path.join(base, "README.md.txt"),
                    "Synthetic phantom X-rays written by `cxr demo-data`; not medical data.\n")
        return written

    def _near_copies(self) -> int:
        return max(2, self.spec.per_class // 20)

    def curated(self, copies_of: Dict[str, Dict[int, np.ndarray]]) -> None:
        """`copies_of`: {radiography folder: {0-based index: picture}} of the pictures copied here."""
        n = self.spec.per_class
        base = os.path.join(self.root(CURATED_DIR), "Curated X-Ray Dataset")
        folders = {"Pneumonia-Bacterial": ("bacterial_pneumonia", n), "COVID-19": ("covid", n // 2),
                   "Normal": ("normal", n // 2), "Pneumonia-Viral": ("viral", n // 4)}
        near_copies = self._near_copies()
        covid = copies_of["COVID"]
        copied = {"COVID-19": [covid[i] for i in range(near_copies)],
                  "Normal": [copies_of["Normal"][i] for i in range(1, 1 + near_copies)] + [covid[max(covid)]]}
        for folder, (finding, count) in folders.items():
            images = copied.get(folder, [])
            images = images + [self.phantom(finding, size=self._curated_size()) for _ in range(count - len(images))]
            for i, image in enumerate(images, start=1):
                self._save_curated_jpeg(os.path.join(base, folder, f"{folder} ({i}).jpg"), image)

    def _curated_size(self) -> int:
        return int(self.spec.size * self.rng().uniform(0.8, 1.4))

    def _save_curated_jpeg(self, path: str, image: np.ndarray) -> None:
        # The curated set re-encodes every source as RGB JPEG of its own size.
        size = self._curated_size()
        picture = Image.fromarray(phantoms.to_uint8(image)).resize((size, size), Image.BILINEAR).convert("RGB")
        _save(path, picture, "JPEG", quality=int(self.rng().integers(85, 96)))

    def nih(self) -> None:
        n = self.spec.per_class
        base = self.root(NIH_DIR)
        plan = (["Pneumothorax"] * n + ["No Finding"] * (n // 2) + ["Effusion|Pneumothorax"] * (n // 4)
                + ["Infiltration"] * (n // 8) + ["Atelectasis|Effusion"] * (n // 8))
        rows = []
        for number, (patient, followup, findings) in enumerate(self._nih_patients(plan)):
            name = f"{patient:08d}_{followup:03d}.png"
            folder = f"images_{1 + number * 2 // len(plan):03d}"
            image = self.phantom(_nih_finding(findings), anatomy=self._anatomy_of(patient))
            picture = phantoms.to_uint8(image)
            picture[2:6, -8:-3] = 255  # a laterality marker, as NIH films carry
            _save(os.path.join(base, folder, "images", name), picture, "PNG")
            rows.append([name, findings, followup, patient, 30 + patient % 50, "MF"[patient % 2],
                         "PA" if number % 3 else "AP", 1024, 1024, 0.143, 0.143, ""])
        with open(os.path.join(base, "Data_Entry_2017.csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(NIH_COLUMNS)
            writer.writerows(rows)

    def _nih_patients(self, plan: List[str]) -> List[Tuple[int, int, str]]:
        """(patient, follow-up #, findings): one to four images per patient."""
        rng = self.rng()
        order = rng.permutation(len(plan))
        images, patient = [], 0
        while len(images) < len(plan):
            patient += 1
            for followup in range(int(rng.integers(1, 5))):
                if len(images) < len(plan):
                    images.append((patient, followup, plan[order[len(images)]]))
        return images

    def _anatomy_of(self, patient: int) -> phantoms.Anatomy:
        return phantoms.Anatomy.random(np.random.default_rng([self.spec.seed, patient]))


def _nih_finding(findings: str) -> str:
    if "Pneumothorax" in findings:
        return "pneumothorax"
    return "normal" if findings == "No Finding" else "opacity"


def _lung_mask_picture(image: np.ndarray) -> np.ndarray:
    return np.where(image < np.quantile(image, 0.3), 255, 0).astype(np.uint8)


def _save(path: str, picture, fmt: str, **options) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    picture.save(path, fmt, **options)


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
