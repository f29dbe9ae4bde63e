"""Collapses exact and near duplicates within and across sources.

Candidates are grouped by bands of their perceptual hash (see probe.hash_bands),
so only images that share a band are compared: no all-pairs comparison and no
index of all images in memory. Pairs found become groups (union-find over the
duplicate pairs only, which are few); a group whose copies carry one label keeps
its largest copy, a group whose copies disagree is excluded whole as a conflict.
"""
from typing import Dict, Iterable, Iterator, List, NamedTuple, Tuple

import apache_beam as beam

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


def bucket_keys(candidate: Candidate, max_distance: int) -> List[Tuple]:
    if max_distance < 0:
        return [("sha256", candidate.facts.sha256)]
    return [("phash", band, value)
            for band, value in enumerate(hash_bands(candidate.facts.phash, max_distance + 1))]


def distance(a: Candidate, b: Candidate) -> int:
    """Hamming distance of the 64-bit perceptual hashes."""
    return hamming(a.facts.phash, b.facts.phash)


def is_duplicate(a: Candidate, b: Candidate, max_distance: int) -> bool:
    if a.facts.sha256 == b.facts.sha256:
        return True
    # The 256-bit hash has four times the bits, so the same share of them may differ.
    return (distance(a, b) <= max_distance
            and hamming(a.facts.phash256, b.facts.phash256) <= 4 * max_distance)


def duplicate_pairs(bucket: Iterable[Candidate], max_distance: int) -> Iterator[Tuple[Candidate, Candidate]]:
    members = sorted(bucket, key=lambda c: c.key)
    for i, first in enumerate(members):
        for second in members[i + 1:]:
            if is_duplicate(first, second, max_distance):
                yield first, second


def resolve_groups(pairs: Iterable[Tuple[Candidate, Candidate]]) -> Iterator[Outcome]:
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
                kind = "exact" if member.facts.sha256 == kept.facts.sha256 else "near"
                yield _outcome(member, DUPLICATE, {"duplicate_of": kept.key, "kind": kind,
                                                   "distance": distance(member, kept)})


def _groups(pairs) -> List[List[Candidate]]:
    parent: Dict[str, str] = {}
    members: Dict[str, Candidate] = {}

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


def _outcome(member: Candidate, status: str, detail: dict) -> Outcome:
    return Outcome(status=status, source=member.seen.source, relpath=member.seen.relpath,
                   raw_class=member.seen.raw_class, label=member.label, detail=detail)


class FindDuplicates(beam.PTransform):
    """Candidates in; an Outcome for each one that must not be written."""

    def __init__(self, max_distance: int):
        super().__init__()
        self._max_distance = max_distance

    def expand(self, candidates):
        max_distance = self._max_distance
        return (
            candidates
            | "KeyByHashBand" >> beam.FlatMap(
                lambda c: [(key, c) for key in bucket_keys(c, max_distance)])
            | "GroupByHashBand" >> beam.GroupByKey()
            | "ComparePairsInBand" >> beam.FlatMap(
                lambda keyed: duplicate_pairs(keyed[1], max_distance))
            # The pairs are few (duplicates only), so one list of them is small.
            | "GatherPairs" >> beam.combiners.ToList()
            | "ResolveGroups" >> beam.FlatMap(resolve_groups)
        )
