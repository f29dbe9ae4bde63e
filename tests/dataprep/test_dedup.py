from cxr.dataprep.dedup import Candidate, bucket_keys, duplicate_pairs, resolve_groups
from cxr.dataprep.layouts import SeenFile
from cxr.dataprep.probe import ImageFacts


def _candidate(name, label, sha="a", phash=0, phash256=0, side=100, source="curated"):
    seen = SeenFile(source=source, path=f"/d/{name}", relpath=name, size=1, raw_class="x",
                    image_id=name, patient_id=name)
    facts = ImageFacts(format="png", height=side, width=side, channels=1, bit_depth=8,
                       sha256=sha, phash=phash, phash256=phash256)
    return Candidate(seen=seen, label=label, facts=facts)


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
    assert bucket_keys(a, -1) == [("sha256", "1")]
    assert list(duplicate_pairs([a, near], max_distance=-1)) == []


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
