import random

from cxr.dataprep.dedup import Candidate, bucket_keys, duplicate_pairs, fingerprint, is_duplicate, resolve_groups
from cxr.dataprep.layouts import SeenFile
from cxr.dataprep.probe import ImageFacts


def _candidate(name, label, sha="a", phash=0, phash256=0, side=100, source="curated"):
    """The fingerprint of a candidate (what duplicate search sees of it)."""
    seen = SeenFile(source=source, path=f"/d/{name}", relpath=name, size=1, raw_class="x",
                    image_id=name, patient_id=name)
    facts = ImageFacts(format="png", height=side, width=side, channels=1, bit_depth=8,
                       sha256=sha, phash=phash, phash256=phash256)
    return fingerprint(Candidate(seen=seen, label=label, facts=facts))


def test_a_fingerprint_names_its_file_and_carries_its_hashes():
    member = _candidate("a.png", "COVID", sha="1", phash=(1 << 64) - 1, phash256=1 << 255, side=12)
    assert (member.key, member.source, member.relpath, member.raw_class, member.label, member.pixels) == (
        "curated:a.png", "curated", "a.png", "x", "COVID", 144)
    assert (member.sha256, member.phash, member.phash256) == ("1", (1 << 64) - 1, 1 << 255)


def test_the_pairs_in_a_large_bucket_are_those_of_comparing_every_pair():
    """The vector comparison finds what is_duplicate over all pairs finds, in the same order, hashes over
    2**63 included; the bucket holds near copies, exact copies and lookalikes."""
    rng = random.Random(7)
    members = []
    for index in range(300):
        name = f"{index:03d}.png"
        if index % 50 == 1:  # an exact copy of the one before: the same bytes, so the same hashes
            before = members[-1]
            members.append(_candidate(name, "COVID", sha=before.sha256, phash=before.phash,
                                      phash256=before.phash256))
            continue
        base = rng.getrandbits(64) if index % 3 else members[-1].phash if members else 0
        phash = base ^ sum(1 << rng.randrange(64) for _ in range(rng.randrange(6)))
        phash256 = rng.getrandbits(8) if index % 5 else rng.getrandbits(256)
        members.append(_candidate(name, "COVID", sha=str(index), phash=phash, phash256=phash256))
    ordered = sorted(members, key=lambda m: m.key)
    expected = [(a.key, b.key) for i, a in enumerate(ordered) for b in ordered[i + 1:] if is_duplicate(a, b, 4)]
    found = [(a.key, b.key) for a, b in duplicate_pairs(reversed(members), max_distance=4)]
    assert found == expected
    assert 20 < len(found) < 2000  # near copies, exact copies and lookalikes the 256-bit hash tells apart
    assert any(a.phash >= 1 << 63 for a, _ in duplicate_pairs(members, max_distance=4))


def test_exact_and_near_copies_pair_up_and_others_do_not():
    a = _candidate("a.png", "COVID", sha="1", phash=0b1111, phash256=0b1111)
    exact = _candidate("b.png", "COVID", sha="1", phash=0b1111, phash256=0b1111)
    near = _candidate("c.jpg", "COVID", sha="2", phash=0b0111, phash256=0b0011)
    different = _candidate("d.png", "COVID", sha="3", phash=(1 << 64) - 1, phash256=(1 << 256) - 1)
    pairs = {(x.key, y.key) for x, y in duplicate_pairs([a, exact, near, different], max_distance=4)}
    assert pairs == {("curated:a.png", "curated:b.png"), ("curated:a.png", "curated:c.jpg"),
                     ("curated:b.png", "curated:c.jpg")}


def test_near_copies_must_agree_on_the_256_bit_hash_too():
    a = _candidate("a.png", "COVID", sha="1", phash=0, phash256=0)
    lookalike = _candidate("b.png", "COVID", sha="2", phash=0b11, phash256=(1 << 40) - 1)
    assert list(duplicate_pairs([a, lookalike], max_distance=4)) == []


def test_exact_only_mode_groups_by_sha256():
    a = _candidate("a.png", "COVID", sha="1")
    near = _candidate("b.png", "COVID", sha="2")
    exact = _candidate("c.png", "COVID", sha="1")
    assert bucket_keys(a, -1) == [("sha256", "1")]
    assert list(duplicate_pairs([a, near], max_distance=-1)) == []
    assert [(x.key, y.key) for x, y in duplicate_pairs([exact, near, a], max_distance=-1)] == [
        ("curated:a.png", "curated:c.png")]


def test_a_group_with_one_label_keeps_its_largest_copy():
    small = _candidate("small.jpg", "NORMAL", sha="1", side=80)
    large = _candidate("large.png", "NORMAL", sha="2", side=299)
    chained = _candidate("chained.jpg", "NORMAL", sha="3", phash=0b1, side=120)
    outcomes = {o.relpath: o for o in resolve_groups([(small, large), (large, chained)])}
    assert set(outcomes) == {"small.jpg", "chained.jpg"}
    assert {o.status for o in outcomes.values()} == {"duplicate"}
    assert outcomes["chained.jpg"].detail == {"duplicate_of": "curated:large.png", "kind": "near", "distance": 1}


def test_copies_that_disagree_are_all_excluded_as_conflicts():
    covid = _candidate("covid.png", "COVID", sha="1", source="covid_radiography")
    normal = _candidate("normal.jpg", "NORMAL", sha="1")
    outcomes = list(resolve_groups([(covid, normal)]))
    assert [o.status for o in outcomes] == ["conflict", "conflict"]
    assert {c["label"] for c in outcomes[0].detail["copies"]} == {"COVID", "NORMAL"}


def test_repeated_pairs_from_several_bands_count_once():
    a, b = _candidate("a.png", "COVID", sha="1"), _candidate("b.png", "COVID", sha="1")
    assert len(list(resolve_groups([(a, b), (a, b), (b, a)]))) == 1
