"""Where the three datasets keep their images, as users download them.

COVID-19 Radiography Database: `<Class>/images/*.png` (current) or `<Class>/*.png`
(older releases), with `masks/` and `*.metadata.xlsx` beside. Curated (Mendeley):
`<Class>/<Class> (N).jpg`. For both the class is the nearest folder that is not
`images`. NIH ChestX-ray14: `images_NNN/images/*.png`, labelled by
`Data_Entry_2017.csv` (see nih.py).

Paths are always relative to the root the user named, with '/' separators.
"""
import posixpath
from typing import NamedTuple, Optional

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
