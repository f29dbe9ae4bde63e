"""Listing a dataset folder so that no file escapes the ledger.

Beam's local listing (fileio.MatchFiles over `root/**`) leaves out symlinked folders and broken
links without a word. Local folders are walked here instead, following symlinked folders (each
real folder once, so a link loop ends), and an entry that cannot be read, a broken link or a folder
that cannot be listed, is listed with its problem, to be quarantined with that reason. Remote roots
(gs://, s3://) have no links and go through Beam's FileSystems.
"""
import os
from typing import Iterator, NamedTuple, Optional

from apache_beam.io.filesystems import FileSystems


class ListedFile(NamedTuple):
    path: str
    size: int
    problem: Optional[str] = None  # why it cannot be read, known from listing alone


def is_local(path: str) -> bool:
    return "://" not in path


def list_files(root: str) -> Iterator[ListedFile]:
    if not is_local(root):
        for metadata in FileSystems.match([f"{root.rstrip('/')}/**"])[0].metadata_list:
            yield ListedFile(metadata.path, metadata.size_in_bytes)
        return
    yield from _walk(root.rstrip("/"))


def _walk(root: str) -> Iterator[ListedFile]:
    unlistable = []
    visited = set()
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=unlistable.append):
        real = os.path.realpath(folder)
        if real in visited:  # a link back to a folder already walked
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders.sort()
        for name in sorted(files):
            yield _listed(os.path.join(folder, name))
    for error in unlistable:
        yield ListedFile(error.filename, 0, f"folder cannot be listed: {error.strerror}")


def _listed(path: str) -> ListedFile:
    try:
        return ListedFile(path, os.stat(path).st_size)
    except OSError as error:
        if os.path.islink(path):
            return ListedFile(path, 0, f"broken symbolic link to {os.readlink(path)}")
        return ListedFile(path, 0, f"cannot read file: {error.strerror}")
