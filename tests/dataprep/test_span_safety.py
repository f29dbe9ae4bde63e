"""One writer per span, a span published whole or not at all, and no file escaping the ledger:
concurrent runs, a run killed mid-way, an interrupted publish, links, empty and mistaken folders."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cxr.dataprep.build import IngestError, build_tfrecords
from cxr.dataprep.config import IngestConfig
from cxr.dataprep.demo_data import DemoDataSpec, write_demo_data
from cxr.dataprep.span_output import SpanOutputError, publish, span_lock
from helpers import IN_PROCESS_BEAM, encode, phantom_picture, write


def _curated(root, count=3, seed=0):
    for index in range(count):
        write(str(root / "Normal" / f"Normal ({index}).jpg"), encode(phantom_picture(seed + index), "JPEG"))
    return str(root)


def _config(roots, out, **options):
    return IngestConfig(source_roots=roots, out_dir=str(out), span=1, beam_args=IN_PROCESS_BEAM, **options)


def _files(folder):
    return {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}


def test_symlinked_folders_are_followed_and_broken_links_quarantined_with_their_reason(tmp_path):
    root = tmp_path / "curated"
    _curated(root)
    elsewhere = tmp_path / "elsewhere" / "COVID-19"
    write(str(elsewhere / "COVID-19 (1).jpg"), encode(phantom_picture(20, finding="covid"), "JPEG"))
    os.symlink(elsewhere, root / "COVID-19")  # a class folder kept on another disk
    os.symlink(tmp_path / "gone.jpg", root / "Normal" / "Normal (9).jpg")  # a broken link
    os.symlink(root, root / "Normal" / "loop")  # a link back up the tree
    manifest = build_tfrecords(_config({"curated": str(root)}, tmp_path / "out"))
    assert manifest["written"] == {"COVID": {"curated": 1}, "NORMAL": {"curated": 3}}
    [broken] = manifest["quarantined"]
    assert broken["file"] == "curated:Normal/Normal (9).jpg"
    assert broken["reason"] == f"broken symbolic link to {tmp_path / 'gone.jpg'}"
    table = manifest["reconciliation"]
    assert table["balanced"] and table["seen"] == 5 and table["files_without_exactly_one_outcome"] == 0


def test_a_folder_of_another_dataset_is_refused_naming_both(tmp_path):
    roots = write_demo_data(DemoDataSpec(out_dir=str(tmp_path / "downloads"), per_class=4, size=64, seed=1))
    with pytest.raises(IngestError, match=r"--curated .*covid19-radiography-database looks like the COVID-19 "
                                          r"Radiography Database \(--covid-radiography\), not the curated COVID-19 "
                                          r"PA set \(--curated\): it has covid-19_radiography_dataset"):
        build_tfrecords(_config({"curated": roots["covid_radiography"]}, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_run_that_writes_no_image_fails_naming_the_layout_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=r"no image written, nothing published \(0 files seen.*Looked for "
                                          r"--curated .*empty: <class>/\*\.jpg, for the classes COVID-19, Normal, "
                                          r"Pneumonia-Bacterial"):
        build_tfrecords(_config({"curated": str(tmp_path / "empty")}, tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []  # no span, no staging, no lock left


def test_a_second_run_on_a_span_being_written_is_refused_naming_the_holder(tmp_path):
    root = _curated(tmp_path / "curated")
    with span_lock(str(tmp_path / "out"), 1):
        with pytest.raises(SpanOutputError, match=rf"being written by process {os.getpid()} on .* since .*"
                                                  r"\(lock .*\.span-1\.lock\)"):
            build_tfrecords(_config({"curated": root}, tmp_path / "out"))
    assert build_tfrecords(_config({"curated": root}, tmp_path / "out"))["reconciliation"]["written"] == 3


def test_two_concurrent_runs_on_one_span_publish_one_whole_span(tmp_path):
    roots = [_curated(tmp_path / f"curated-{n}", count=2 + n, seed=10 * n) for n in range(2)]
    outcomes = []

    def run(root):
        try:
            outcomes.append(build_tfrecords(_config({"curated": root}, tmp_path / "out", overwrite=True)))
        except SpanOutputError as refused:
            outcomes.append(refused)

    threads = [threading.Thread(target=run, args=(root,)) for root in roots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    published = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, SpanOutputError)]
    assert len(published) + len(refused) == 2 and published, outcomes  # one may finish before the other starts
    with open(tmp_path / "out" / "span-1" / "manifest.json") as f:
        assert json.load(f)["reconciliation"] == published[-1]["reconciliation"]
    assert sorted(os.listdir(tmp_path / "out")) == ["span-1"]


@pytest.mark.slow  # trains a model, or starts the real command in a process of its own
def test_a_run_killed_mid_way_with_overwrite_leaves_the_old_span_whole(tmp_path):
    small = _curated(tmp_path / "small", count=2)
    build_tfrecords(_config({"curated": small}, tmp_path / "out"))
    old = _files(tmp_path / "out" / "span-1")
    big = str(tmp_path / "big")
    for index in range(300):
        write(os.path.join(big, "Normal", f"Normal ({index}).jpg"), encode(phantom_picture(index, size=256), "JPEG"))
    run = subprocess.Popen([sys.executable, "-m", "cxr", "build-tfrecords", "--curated", big,
                            "--out", str(tmp_path / "out"), "--span", "1", "--overwrite",
                            "--beam-arg=--direct_running_mode=in_memory"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(name.startswith(".span-1.partial-") for name in os.listdir(tmp_path / "out")):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert _files(tmp_path / "out" / "span-1") == old
    # The lock of the killed run is taken over, and its staging folder does not count as a span.
    manifest = build_tfrecords(_config({"curated": small}, tmp_path / "out", overwrite=True))
    assert manifest["reconciliation"]["written"] == 2


def test_a_publish_interrupted_between_its_renames_is_undone_by_the_next_run(tmp_path):
    root = _curated(tmp_path / "curated")
    build_tfrecords(_config({"curated": root}, tmp_path / "out"))
    old = _files(tmp_path / "out" / "span-1")
    os.rename(tmp_path / "out" / "span-1", tmp_path / "out" / ".span-1.old-0badf00d")  # the crash
    with pytest.raises(IngestError, match="already exists; pass --overwrite"):
        build_tfrecords(_config({"curated": root}, tmp_path / "out"))
    assert _files(tmp_path / "out" / "span-1") == old


def test_overwrite_is_checked_again_when_publishing(tmp_path):
    staging, span_dir = tmp_path / ".span-1.partial-x", tmp_path / "span-1"
    staging.mkdir()
    span_dir.mkdir()  # a span that another writer published while this run was running
    with pytest.raises(SpanOutputError, match="span-1 already exists; pass --overwrite"):
        publish(str(staging), str(span_dir), overwrite=False)
    publish(str(staging), str(span_dir), overwrite=True)
    assert not staging.exists() and span_dir.exists()


def test_an_output_path_that_is_a_file_is_named(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(SpanOutputError, match=f"cannot write in {tmp_path / 'out'}"):
        build_tfrecords(_config({"curated": _curated(tmp_path / "curated")}, tmp_path / "out"))
