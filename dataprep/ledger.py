"""Every file the ingestion sees ends in exactly one outcome; the ledger adds them up.

The manifest written beside the TFRecords is the ledger's summary: counts by
class x source, every duplicate, conflict and quarantined file with its reason,
unmapped counts, ignored non-image files, and NIH rows whose file is missing.
"""
import collections
from typing import Dict, List, NamedTuple, Optional

import apache_beam as beam

from cxr.contract import CONFLICT, DUPLICATE, OUTCOMES, QUARANTINED, UNMAPPED, WRITTEN
_LISTED = (DUPLICATE, CONFLICT, QUARANTINED)
MISSING_EXAMPLES = 50


class Outcome(NamedTuple):
    status: str
    source: str
    relpath: str
    raw_class: str
    label: Optional[str] = None
    detail: Optional[dict] = None

    @property
    def file(self) -> str:
        return f"{self.source}:{self.relpath}"


class Ignored(NamedTuple):
    """A file that is no image of the dataset (masks, spreadsheets, .DS_Store...)."""
    source: str
    reason: str


class MissingNihFile(NamedTuple):
    image_index: str


class LedgerCombineFn(beam.CombineFn):
    """Folds outcomes, ignored files and missing NIH rows into one summary."""

    def create_accumulator(self):
        return {"counts": collections.Counter(), "lists": collections.defaultdict(list),
                "missing": []}

    def add_input(self, accumulator, entry):
        counts = accumulator["counts"]
        if isinstance(entry, Ignored):
            counts[("ignored", entry.source, entry.reason)] += 1
        elif isinstance(entry, MissingNihFile):
            counts[("nih_missing",)] += 1
            _keep_smallest(accumulator["missing"], entry.image_index)
        else:
            counts[(entry.status,)] += 1
            if entry.status == WRITTEN:
                counts[(WRITTEN, entry.label, entry.source)] += 1
            elif entry.status == UNMAPPED:
                counts[(UNMAPPED, entry.source, entry.raw_class)] += 1
            else:
                accumulator["lists"][entry.status].append(_listed(entry))
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            merged["counts"].update(accumulator["counts"])
            for status, entries in accumulator["lists"].items():
                merged["lists"][status].extend(entries)
            for name in accumulator["missing"]:
                _keep_smallest(merged["missing"], name)
        return merged

    def extract_output(self, accumulator):
        return summarise(accumulator)


def summarise(accumulator) -> dict:
    counts = accumulator["counts"]
    summary = {
        "totals": {status: counts[(status,)] for status in OUTCOMES},
        "written": _nested(counts, WRITTEN),
        "unmapped": _nested(counts, UNMAPPED),
        "ignored": _nested(counts, "ignored"),
        "nih_missing_files": {"count": counts[("nih_missing",)],
                              "examples": sorted(accumulator["missing"])},
    }
    for status in _LISTED:
        summary[f"{status}s" if status != QUARANTINED else status] = sorted(
            accumulator["lists"].get(status, []), key=lambda entry: entry["file"])
    return summary


def reconciliation(files_seen: int, totals: Dict[str, int], unaccounted: List[str], unaccounted_count: int) -> dict:
    """The counts, and the files themselves: every file seen must have exactly one outcome."""
    accounted = sum(totals[status] for status in OUTCOMES)
    return {"seen": files_seen, **{status: totals[status] for status in OUTCOMES},
            "files_without_exactly_one_outcome": unaccounted_count, "examples": sorted(unaccounted),
            "balanced": accounted == files_seen and unaccounted_count == 0}


def _listed(outcome: Outcome) -> dict:
    return {"file": outcome.file, "class": outcome.raw_class, "label": outcome.label,
            **(outcome.detail or {})}


def _nested(counts, head) -> Dict[str, Dict[str, int]]:
    table: Dict[str, Dict[str, int]] = collections.defaultdict(dict)
    for key, count in sorted(counts.items()):
        if key[0] == head and len(key) == 3:
            table[key[1]][key[2]] = count
    return dict(table)


def _keep_smallest(names: List[str], name: str) -> None:
    names.append(name)
    if len(names) > MISSING_EXAMPLES:
        names.sort()
        del names[MISSING_EXAMPLES:]
