"""Collapses exact and near duplicates within and across sources.

Candidates are grouped by bands of their perceptual hash (see probe.hash_bands),
so only images that share a band are compared: no all-pairs comparison and no
index of all images in memory. Pairs found become groups (union-find over the
duplicate pairs only, which are few); a group whose copies carry one label keeps
its largest copy, a group whose copies disagree is excluded whole as a conflict.
"""
from typing import Dict, Iterable, Iterator, List, NamedTuple, Tuple

import apache_beam as beam
import numpy as np

from cxr.dataprep.layouts import SeenFile
from cxr.dataprep.ledger import CONFLICT, DUPLICATE, Outcome
from cxr.dataprep.probe import ImageFacts, hamming, hash_bands


class Candidate(NamedTuple):
    """A labelled, readable image, described without its bytes."""
    seen: SeenFile
    label: str
    facts: ImageFacts

    @property
    def key(self) -> str:
        return f"{self.seen.source}:{self.seen.relpath}"

    @property
    def pixels(self) -> int:
        return self.facts.height * self.facts.width


class Fingerprint(NamedTuple):
    """What duplicate search needs of a candidate, and what an outcome names.

    It crosses the hash-band shuffle (five copies a candidate) as a plain tuple of str, int and bytes, which
    Beam's default coder encodes in C; a NamedTuple (a Candidate, with its path and acquisition) it pickles,
    and the DirectRunner's driver decodes and encodes again every element it groups."""
    key: str
    source: str
    relpath: str
    raw_class: str
    label: str
    pixels: int
    sha256: str
    phash: int
    phash256: int


def fingerprint(candidate: Candidate) -> Fingerprint:
    seen, facts = candidate.seen, candidate.facts
    return Fingerprint(key=candidate.key, source=seen.source, relpath=seen.relpath, raw_class=seen.raw_class,
                       label=candidate.label, pixels=candidate.pixels, sha256=facts.sha256, phash=facts.phash,
                       phash256=facts.phash256)


def bucket_keys(member: Fingerprint, max_distance: int) -> List[Tuple]:
    if max_distance < 0:
        return [("sha256", member.sha256)]
    return [("phash", band, value)
            for band, value in enumerate(hash_bands(member.phash, max_distance + 1))]


def distance(a, b) -> int:
    """Hamming distance of the 64-bit perceptual hashes (of two Fingerprints or ImageFacts)."""
    return hamming(a.phash, b.phash)


def is_duplicate(a, b, max_distance: int) -> bool:
    """Whether two images' hashes (Fingerprints or ImageFacts) make them copies."""
    if a.sha256 == b.sha256:
        return True
    # The 256-bit hash has four times the bits, so the same share of them may differ.
    return (distance(a, b) <= max_distance
            and hamming(a.phash256, b.phash256) <= 4 * max_distance)


def duplicate_pairs(bucket: Iterable[Fingerprint], max_distance: int) -> Iterator[Tuple[Fingerprint, Fingerprint]]:
    """The pairs of copies among the images sharing a hash band, in the order of their keys.

    Chest X-rays share one layout, so a band's bucket can hold thousands of images: each is compared with
    those after it by one vector XOR and bit count of the 64-bit hashes (memory linear in the bucket), and
    only the few within `max_distance` are checked further."""
    members = sorted(bucket, key=lambda m: m.key)
    if len(members) < 2:
        return
    if max_distance < 0:  # one bucket per sha256
        for i, first in enumerate(members):
            yield from ((first, second) for second in members[i + 1:] if first.sha256 == second.sha256)
        return
    hashes = np.array([m.phash for m in members], dtype=np.uint64)
    for i, first in enumerate(members[:-1]):
        for j in np.flatnonzero(_bit_counts(hashes[i + 1:] ^ hashes[i]) <= max_distance):
            second = members[i + 1 + int(j)]
            if is_duplicate(first, second, max_distance):
                yield first, second


_BITS_IN_BYTE = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def _bit_counts(values: np.ndarray) -> np.ndarray:
    """The number of bits set in each uint64."""
    return _BITS_IN_BYTE[values.view(np.uint8)].reshape(-1, 8).sum(axis=1)


def resolve_groups(pairs: Iterable[Tuple[Fingerprint, Fingerprint]]) -> Iterator[Outcome]:
    """One outcome for every member of a duplicate group except the one kept."""
    for group in _groups(pairs):
        labels = sorted({member.label for member in group})
        if len(labels) > 1:
            copies = [{"file": m.key, "label": m.label} for m in group]
            for member in group:
                yield _outcome(member, CONFLICT, {"copies": copies})
            continue
        kept = min(group, key=lambda m: (-m.pixels, m.key))
        for member in group:
            if member is not kept:
                kind = "exact" if member.sha256 == kept.sha256 else "near"
                yield _outcome(member, DUPLICATE, {"duplicate_of": kept.key, "kind": kind,
                                                   "distance": distance(member, kept)})


def _groups(pairs) -> List[List[Fingerprint]]:
    parent: Dict[str, str] = {}
    members: Dict[str, Fingerprint] = {}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for first, second in pairs:
        for member in (first, second):
            members.setdefault(member.key, member)
            parent.setdefault(member.key, member.key)
        parent[root(first.key)] = root(second.key)
    groups: Dict[str, List[Candidate]] = {}
    for key in sorted(members):
        groups.setdefault(root(key), []).append(members[key])
    return list(groups.values())


def _outcome(member: Fingerprint, status: str, detail: dict) -> Outcome:
    return Outcome(status=status, source=member.source, relpath=member.relpath, raw_class=member.raw_class,
                   label=member.label, detail=detail)


class FindDuplicates(beam.PTransform):
    """Candidates in; an Outcome for each one that must not be written."""

    def __init__(self, max_distance: int):
        super().__init__()
        self._max_distance = max_distance

    def expand(self, candidates):
        max_distance = self._max_distance
        return (
            candidates
            | "KeyByHashBand" >> beam.FlatMap(_keyed_by_band, max_distance)
            | "GroupByHashBand" >> beam.GroupByKey()
            | "ComparePairsInBand" >> beam.FlatMap(
                lambda keyed: duplicate_pairs(map(_from_plain, keyed[1]), max_distance))
            # The pairs are few (duplicates only), so one list of them is small.
            | "GatherPairs" >> beam.combiners.ToList()
            | "ResolveGroups" >> beam.FlatMap(resolve_groups)
        )


def _keyed_by_band(candidate: Candidate, max_distance: int):  # no return hint: Beam would check it
    member = fingerprint(candidate)
    plain = (*member[:-2], member.phash.to_bytes(8, "big"), member.phash256.to_bytes(32, "big"))
    return [(key, plain) for key in bucket_keys(member, max_distance)]


def _from_plain(values: tuple) -> Fingerprint:
    """The Fingerprint `_keyed_by_band` sent as a plain tuple, its hashes as bytes (Beam's coder takes ints
    of 64 bits signed only, and pickles the others)."""
    return Fingerprint(*values[:-2], int.from_bytes(values[-2], "big"), int.from_bytes(values[-1], "big"))
