"""Shared fixtures: the three dataset trees, small, with every quirk of the downloads; a small exported model;
the pipeline image's environment."""
import os

import pytest

import image_env
from helpers import cmyk_jpeg, encode, phantom_picture, sixteen_bit_png, write


@pytest.fixture(scope="session")
def quirky_trees(tmp_path_factory):
    """The three datasets as downloaded, small, with every quirk the adapters must handle.

    Returns the roots and the expected outcome of each file, keyed 'source:relpath'.
    """
    base = tmp_path_factory.mktemp("downloads")
    expected = {}

    def add(source, root, relpath, data, outcome):
        write(os.path.join(root, relpath), data)
        if outcome:
            expected[f"{source}:{relpath}"] = outcome

    radiography = str(base / "covid19-radiography-database")
    ds = "COVID-19_Radiography_Dataset"
    covid_1 = phantom_picture(1, finding="covid")
    normal_a = phantom_picture(12)
    for relpath, data, outcome in [
        (f"{ds}/COVID/images/COVID-1.png", encode(covid_1, "PNG"), "written"),
        (f"{ds}/COVID/images/COVID-2.PNG", sixteen_bit_png(2), "written"),
        (f"{ds}/COVID/images/COVID-3.png", b"this is not an image\n", "quarantined"),
        (f"{ds}/COVID/images/COVID-4.png", encode(phantom_picture(4), "GIF"), "quarantined"),
        (f"{ds}/COVID/masks/COVID-1.png", encode(covid_1, "PNG"), None),
        (f"{ds}/Normal/images/Normal-1.png", encode(phantom_picture(11).convert("RGBA"), "PNG"), "written"),
        (f"{ds}/Normal/images/Normal-2.png", encode(normal_a.convert("RGB").convert("P"), "PNG"), "conflict"),
        (f"{ds}/Normal/images/Normal-3.png", b"", "quarantined"),
        (f"{ds}/Normal/images/Normal-4.png", encode(phantom_picture(14), "PNG")[:300], "quarantined"),
        (f"{ds}/Lung_Opacity/images/Lung_Opacity-1.png", encode(phantom_picture(21), "PNG"), "unmapped"),
        (f"{ds}/COVID.metadata.xlsx", b"PK\x03\x04 spreadsheet", None),
        (f"{ds}/README.md.txt", b"readme", None),
        (f"{ds}/COVID/images/.DS_Store", b"\x00\x00\x00\x01Bud1", None),
        (f"{ds}/Normal/images/Thumbs.db", b"thumbs", None),
        (f"__MACOSX/{ds}/COVID/images/._COVID-1.png", b"\x00\x05\x16\x07", None),
    ]:
        add("covid_radiography", radiography, relpath, data, outcome)

    curated = str(base / "curated")
    cd = "Curated X-Ray Dataset"
    bacterial_1 = encode(phantom_picture(31, finding="bacterial_pneumonia").convert("RGB"), "JPEG", quality=92)
    for relpath, data, outcome in [
        (f"{cd}/Pneumonia-Bacterial/Pneumonia-Bacterial (1).jpg", bacterial_1, "written"),
        (f"{cd}/Pneumonia-Bacterial/Pneumonia-Bacterial (2).JPG", cmyk_jpeg(32), "written"),
        (f"{cd}/Pneumonia-Bacterial/Pneumonia-Bacterial (3).jpeg",
         encode(phantom_picture(33, size=120, finding="bacterial_pneumonia"), "JPEG"), "written"),
        (f"{cd}/Pneumonia-Bacterial/Pneumonia-Bacterial (4).jpg", bacterial_1, "duplicate"),
        (f"{cd}/COVID-19/COVID-19 (1).jpg",
         encode(covid_1.resize((80, 80)).convert("RGB"), "JPEG", quality=90), "duplicate"),
        # A copy of Radiography's Normal-2 filed under COVID-19: copies that disagree.
        (f"{cd}/COVID-19/COVID-19 (2).jpg", encode(normal_a.resize((110, 110)), "JPEG", quality=88), "conflict"),
        (f"{cd}/Pneumonia-Viral/Pneumonia-Viral (1).jpg", encode(phantom_picture(41), "JPEG"), "unmapped"),
    ]:
        add("curated", curated, relpath, data, outcome)

    nih = str(base / "nih")
    rows = [("00000001_000.png", "Pneumothorax", 0, 1), ("00000001_001.png", "No Finding", 1, 1),
            ("00000002_000.png", "Effusion|Pneumothorax", 0, 2), ("00000003_000.png", "Infiltration", 0, 3),
            ("00000004_000.png", "Pneumothorax", 0, 4)]  # the last one's file is missing
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
    lines = [f"{name},{findings},{followup},{patient},58,M,{'AP' if followup else 'PA'},1024,1024,0.143,0.143,\n"
             for name, findings, followup, patient in rows]
    write(os.path.join(nih, "Data_Entry_2017.csv"), (header + "".join(lines)).encode())
    write(os.path.join(nih, "BBox_List_2017.csv"), b"Image Index,Finding Label\n")
    for (name, findings, _, _), folder, seed, outcome in [
        (rows[0], "images_001", 51, "written"), (rows[1], "images_001", 52, "written"),
        (rows[2], "images_002", 53, "unmapped"), (rows[3], "images_002", 54, "unmapped"),
    ]:
        finding = "pneumothorax" if "Pneumothorax" in findings else "normal"
        add("nih", nih, f"{folder}/images/{name}", encode(phantom_picture(seed, finding=finding), "PNG"), outcome)
    add("nih", nih, "images_002/images/00000099_000.png", encode(phantom_picture(59), "PNG"), "quarantined")
    return {"roots": {"covid_radiography": radiography, "curated": curated, "nih": nih},
            "expected": expected}


def _once_per_test_run(tmp_path_factory, worker_id, name, build):
    """build(folder) once per test run, its (picklable) result shared: under pytest-xdist (make test) the first
    worker to ask builds it in the run's shared folder while the others wait on a file lock, then load it."""
    import fcntl
    import pickle
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    built = shared / f"{name}.pickle"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            built.write_bytes(pickle.dumps(build(str(shared / name))))
        return pickle.loads(built.read_bytes())


@pytest.fixture(scope="session")
def model_base_path(tmp_path_factory, worker_id) -> str:
    """<serving_dir>/cxr with version 1 of a small model trained on phantoms and exported as the Trainer does.
    Tests only read it."""
    from trained_model import export_small_model

    def build(folder):
        os.makedirs(folder)
        return export_small_model(folder)
    return _once_per_test_run(tmp_path_factory, worker_id, "exported", build)


@pytest.fixture(scope="session")
def loaded_model(model_base_path):
    import tensorflow as tf
    return tf.saved_model.load(os.path.join(model_base_path, "1"))


@pytest.fixture(scope="session")
def image(tmp_path_factory, worker_id) -> image_env.ImageEnvironment:
    """kubeflow/Dockerfile's last stage, rebuilt without Docker (image_env.py): what the cluster's tasks run."""
    return _once_per_test_run(tmp_path_factory, worker_id, "image", image_env.build)


def pytest_collection_modifyitems(items):
    # Rebuilding the image's environment (the `image` fixture) takes about 90 s: what needs it runs in
    # make test and make test-slow, not in make test-fast.
    for item in items:
        if "image" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_span(tmp_path_factory):
    """copy(tfrecords_dir, span=1, seed=3): the 16-per-class phantom span, ingested once per test session for
    each seed (cxr build-tfrecords, in-process Beam) and copied in as span `span`, its manifest saying so."""
    import json
    import shutil

    from cxr import contract
    from cxr.dataprep.build import build_tfrecords
    from cxr.dataprep.config import IngestConfig
    from helpers import IN_PROCESS_BEAM, write_tiny_data

    built = {}

    def copy(tfrecords_dir, span: int = 1, seed: int = 3) -> str:
        if seed not in built:
            base = tmp_path_factory.mktemp(f"tiny-span-seed-{seed}")
            roots = write_tiny_data(base / "raw", per_class=16, seed=seed)
            build_tfrecords(IngestConfig(source_roots=roots, out_dir=str(base / "tfrecords"), span=0,
                                         beam_args=IN_PROCESS_BEAM))
            built[seed] = contract.span_dir(str(base / "tfrecords"), 0)
        target = contract.span_dir(str(tfrecords_dir), span)
        if os.path.exists(target):
            shutil.rmtree(target)
        shutil.copytree(built[seed], target)
        manifest_path = os.path.join(target, contract.MANIFEST)
        with open(manifest_path) as f:
            manifest = json.load(f)
        manifest["span"] = span
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)
        return target

    return copy
