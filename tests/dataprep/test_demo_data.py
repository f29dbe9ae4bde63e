import csv
import glob
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from cxr.dataprep.demo_data import NIH_COLUMNS, DemoDataSpec, write_demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return write_demo_data(DemoDataSpec(out_dir=str(out), per_class=8, size=64, seed=5))


def _digest(root):
    digest = hashlib.sha256()
    for directory, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_trees_have_the_real_datasets_layouts(demo):
    radiography = os.path.join(demo["covid_radiography"], "COVID-19_Radiography_Dataset")
    assert os.path.isfile(os.path.join(radiography, "COVID", "images", "COVID-1.png"))
    assert os.path.isfile(os.path.join(radiography, "COVID", "masks", "COVID-1.png"))
    assert os.path.isdir(os.path.join(radiography, "Viral Pneumonia", "images"))
    curated = os.path.join(demo["curated"], "Curated X-Ray Dataset")
    assert os.path.isfile(os.path.join(curated, "Pneumonia-Bacterial", "Pneumonia-Bacterial (1).jpg"))
    assert os.path.isfile(os.path.join(demo["nih"], "images_001", "images", "00000001_000.png"))


def test_nih_label_file_has_the_real_columns_and_patients_with_several_images(demo):
    with open(os.path.join(demo["nih"], "Data_Entry_2017.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == NIH_COLUMNS
    patients = [row[3] for row in rows[1:]]
    assert max(patients.count(p) for p in set(patients)) > 1
    assert any("|" in row[1] for row in rows[1:])
    for row in rows[1:]:
        folder = "images_001" if os.path.exists(os.path.join(demo["nih"], "images_001", "images", row[0])) \
            else "images_002"
        assert os.path.isfile(os.path.join(demo["nih"], folder, "images", row[0])), row[0]


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(demo, tmp_path):
    again = write_demo_data(DemoDataSpec(out_dir=str(tmp_path / "a"), per_class=8, size=64, seed=5))
    other = write_demo_data(DemoDataSpec(out_dir=str(tmp_path / "b"), per_class=8, size=64, seed=6))
    for source in demo:
        assert _digest(demo[source]) == _digest(again[source]), source
        assert _digest(demo[source]) != _digest(other[source]), source


def _pictures(paths, size=64):
    return np.stack([np.asarray(Image.open(p).convert("L").resize((size, size)), np.float32)[..., None] / 255
                     for p in paths])


def _class_files(demo):
    radiography = os.path.join(demo["covid_radiography"], "COVID-19_Radiography_Dataset")
    curated = os.path.join(demo["curated"], "Curated X-Ray Dataset")
    with open(os.path.join(demo["nih"], "Data_Entry_2017.csv"), newline="") as f:
        pneumothorax = [row["Image Index"] for row in csv.DictReader(f) if row["Finding Labels"] == "Pneumothorax"]
    return [sorted(glob.glob(os.path.join(curated, "Pneumonia-Bacterial", "*.jpg"))),
            sorted(glob.glob(os.path.join(radiography, "COVID", "images", "*.png"))),
            sorted(glob.glob(os.path.join(radiography, "Normal", "images", "*.png"))),
            [glob.glob(os.path.join(demo["nih"], "images_*", "images", name))[0] for name in pneumothorax]]


@pytest.mark.slow  # trains a model, or starts the real command in a process of its own
def test_a_small_cnn_learns_the_four_findings_from_held_out_phantoms(tmp_path):
    """Learnable: a tiny CNN far above chance (25 %); the pipeline's demo rests on it."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)
    demo = write_demo_data(DemoDataSpec(out_dir=str(tmp_path), per_class=80, size=64, seed=1))
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, files in enumerate(_class_files(demo)):
        pictures = _pictures(files[:80])
        train_x.append(pictures[:60])
        test_x.append(pictures[60:])
        train_y += [label] * 60
        test_y += [label] * len(pictures[60:])
    layers = tf.keras.layers
    model = tf.keras.Sequential([layers.Input((64, 64, 1)), layers.Conv2D(16, 3, activation="relu"),
                                 layers.MaxPooling2D(), layers.Conv2D(32, 3, activation="relu"),
                                 layers.MaxPooling2D(), layers.Conv2D(32, 3, activation="relu"),
                                 layers.MaxPooling2D(), layers.Flatten(), layers.Dense(64, activation="relu"),
                                 layers.Dense(4, activation="softmax")])
    model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(np.concatenate(train_x), np.array(train_y), epochs=25, batch_size=16, verbose=0)
    _, accuracy = model.evaluate(np.concatenate(test_x), np.array(test_y), verbose=0)
    assert accuracy > 0.6, accuracy


@pytest.mark.parametrize("changes, message", [({"per_class": 2}, "--per-class"), ({"size": 8}, "--size")])
def test_bad_sizes_are_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        DemoDataSpec(out_dir=str(tmp_path), **changes)
