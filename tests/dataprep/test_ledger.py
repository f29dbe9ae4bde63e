from cxr.dataprep.ledger import (
    Ignored, LedgerCombineFn, MissingNihFile, Outcome, reconciliation)
from cxr.output import reconciliation_table


def _fold(combine, entries):
    accumulator = combine.create_accumulator()
    for entry in entries:
        accumulator = combine.add_input(accumulator, entry)
    return accumulator


def test_partial_summaries_from_several_workers_merge_into_one():
    combine = LedgerCombineFn()
    first = _fold(combine, [Outcome("written", "nih", "a.png", "Pneumothorax", "PNEUMOTHORAX"),
                            Outcome("quarantined", "nih", "b.png", "", None, {"reason": "empty file (0 bytes)"}),
                            Ignored("nih", "*.csv")])
    second = _fold(combine, [Outcome("written", "nih", "c.png", "Pneumothorax", "PNEUMOTHORAX"),
                             Outcome("unmapped", "nih", "d.png", "Infiltration"), MissingNihFile("e.png")])
    summary = combine.extract_output(combine.merge_accumulators([first, second]))
    assert summary["totals"] == {"written": 2, "duplicate": 0, "conflict": 0, "quarantined": 1, "unmapped": 1}
    assert summary["written"] == {"PNEUMOTHORAX": {"nih": 2}}
    assert summary["unmapped"] == {"nih": {"Infiltration": 1}}
    assert summary["quarantined"] == [{"file": "nih:b.png", "class": "", "label": None,
                                       "reason": "empty file (0 bytes)"}]
    assert summary["ignored"] == {"nih": {"*.csv": 1}}
    assert summary["nih_missing_files"] == {"count": 1, "examples": ["e.png"]}


def test_a_file_without_an_outcome_shows_as_not_balanced():
    totals = {"written": 3, "duplicate": 1, "conflict": 0, "quarantined": 0, "unmapped": 0}
    assert reconciliation(4, totals, [], 0)["balanced"]
    table = reconciliation(5, totals, [], 0)
    assert not table["balanced"]
    assert "NOT BALANCED" in reconciliation_table(table)


def test_counts_that_add_up_over_the_wrong_files_are_not_balanced():
    """One file with two outcomes and another with none: the counts agree, the files do not."""
    totals = {"written": 3, "duplicate": 1, "conflict": 0, "quarantined": 0, "unmapped": 0}
    unaccounted = ["nih:a.png (listed 1x, outcomes ['duplicate', 'written'])", "nih:b.png (listed 1x, outcomes [])"]
    table = reconciliation(4, totals, unaccounted, 2)
    assert not table["balanced"]
    assert "files without exactly one outcome: 2, e.g. nih:a.png" in reconciliation_table(table)
