"""Where the three datasets keep their images, as users download them.

COVID-19 Radiography Database: `<Class>/images/*.png` (current) or `<Class>/*.png`
(older releases), with `masks/` and `*.metadata.xlsx` beside. Curated (Mendeley):
`<Class>/<Class> (N).jpg`. For both the class is the nearest folder that is not
`images`. NIH ChestX-ray14: `images_NNN/images/*.png`, labelled by
`Data_Entry_2017.csv` (see nih.py).

Paths are always relative to the root the user named, with '/' separators.
"""
import posixpath
from typing import Dict, List, NamedTuple, Optional

from cxr.dicom.rules import Acquisition

IGNORED_FOLDERS = frozenset({"masks", "__macosx"})
IGNORED_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
DOCUMENT_SUFFIXES = frozenset({".xlsx", ".xls", ".csv", ".txt", ".md", ".pdf", ".json", ".html"})
NO_CLASS_FOLDER = "(no class folder)"


class SeenFile(NamedTuple):
    """A file that counts as an image of a dataset; every one ends in one outcome.

    Named tuples, not dataclasses, travel through Beam's shuffles: a pickled
    dataclass carries its field names in every element, and the DirectRunner
    holds shuffled elements in the driver's memory.
    """
    source: str
    path: str
    relpath: str
    size: int
    raw_class: str
    image_id: str
    patient_id: str
    problem: Optional[str] = None  # known at discovery to be unusable
    acquisition: Optional[Acquisition] = None  # what the file or the dataset's label file states; None: nothing

    def plain(self) -> tuple:
        """The file as a tuple of str, int and None (`from_plain` reverses it), for Beam's shuffles: the
        DirectRunner's driver decodes and encodes again every element it groups, and Beam's default coder
        encodes such tuples in C where it pickles a NamedTuple."""
        acquisition = self.acquisition
        return (*self[:-1], None if acquisition is None else tuple(acquisition))

    @classmethod
    def from_plain(cls, values: tuple) -> "SeenFile":
        acquisition = values[-1]
        return cls(*values[:-1], None if acquisition is None else Acquisition(*acquisition))


def relative_path(root: str, path: str) -> str:
    root = root.rstrip("/\\") + "/"
    path = path.replace("\\", "/")
    root = root.replace("\\", "/")
    if not path.startswith(root):
        raise ValueError(f"{path} is not under {root}")
    return path[len(root):]


def ignore_reason(relpath: str) -> Optional[str]:
    """Why a file is not an image of the dataset at all, or None if it is one."""
    *folders, name = relpath.split("/")
    for folder in folders:
        if folder.casefold() in IGNORED_FOLDERS:
            return f"{folder}/"
        if folder.startswith("."):
            return "hidden folder"
    if name.casefold() in IGNORED_FILES or name.startswith("."):
        return name if name.casefold() in IGNORED_FILES else "hidden file"
    suffix = posixpath.splitext(name)[1].casefold()
    if suffix in DOCUMENT_SUFFIXES:
        return f"*{suffix}"
    return None


def image_id_of(relpath: str) -> str:
    return posixpath.splitext(posixpath.basename(relpath))[0]


def folder_class_of(relpath: str) -> str:
    folders = relpath.split("/")[:-1]
    if folders and folders[-1].casefold() == "images":
        folders = folders[:-1]
    return folders[-1] if folders else NO_CLASS_FOLDER


def is_nih_image_path(relpath: str) -> bool:
    folders = relpath.split("/")[:-1]
    return bool(folders) and folders[-1].casefold() == "images"


def folder_labelled_file(source: str, path: str, relpath: str, size: int) -> SeenFile:
    image_id = image_id_of(relpath)
    return SeenFile(source=source, path=path, relpath=relpath, size=size,
                    raw_class=folder_class_of(relpath), image_id=image_id,
                    patient_id=f"{source}:{image_id}")


# What each download looks like from its first two folder levels: names no other of the three has.
_MARKS = {
    "covid_radiography": ("covid-19_radiography_dataset", "lung_opacity", "viral pneumonia"),
    "curated": ("curated x-ray dataset", "pneumonia-bacterial", "pneumonia-viral"),
    "nih": ("data_entry_2017.csv", "data_entry_2017_v2020.csv", "images_001", "images_002"),
}
DATASET_NAMES = {"covid_radiography": "the COVID-19 Radiography Database (--covid-radiography)",
                 "curated": "the curated COVID-19 PA set (--curated)", "nih": "NIH ChestX-ray14 (--nih)"}


def recognise(names) -> Dict[str, List[str]]:
    """{source: the names that mark it} among the file and folder names near a dataset's root."""
    folded = {name.casefold() for name in names}
    return {source: [mark for mark in marks if mark in folded] for source, marks in _MARKS.items()
            if any(mark in folded for mark in marks)}


def expected_layout(source: str, class_folders) -> str:
    """The layout a source's folder should have, for messages."""
    if source == "nih":
        return "images_NNN/images/*.png, listed in Data_Entry_2017.csv"
    classes = ", ".join(sorted(class_folders))
    if source == "covid_radiography":
        return f"<class>/images/*.png or <class>/*.png, for the classes {classes}"
    return f"<class>/*.jpg, for the classes {classes}"
