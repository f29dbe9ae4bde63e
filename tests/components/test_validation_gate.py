"""ValidationGate's refusals before Transform, on real TFDV statistics and real artifacts."""
import os

import pandas as pd
import tensorflow_data_validation as tfdv
from tfx.types import artifact_utils, standard_artifacts

from cxr.components.artifacts import STATISTICS_FILE
from cxr.components.validation_gate import missing_classes, span_problems


def _statistics(tmp_path, labels_by_split):
    artifact = standard_artifacts.ExampleStatistics()
    artifact.uri = str(tmp_path / "statistics")
    artifact.split_names = artifact_utils.encode_split_names(list(labels_by_split))
    for split, labels in labels_by_split.items():
        folder = os.path.join(artifact.uri, f"Split-{split}")
        os.makedirs(folder)
        stats = tfdv.generate_statistics_from_dataframe(pd.DataFrame({"label": labels}))
        with open(os.path.join(folder, STATISTICS_FILE), "wb") as f:  # as StatisticsGen writes it
            f.write(stats.SerializeToString())
    return artifact


def test_a_split_without_a_class_is_named_with_the_class(tmp_path):
    every_class = ["BACTERIAL_PNEUMONIA", "COVID", "NORMAL", "PNEUMOTHORAX"] * 2
    statistics = _statistics(tmp_path, {"train": every_class, "test": ["COVID", "NORMAL", "NORMAL"]})
    assert missing_classes(statistics) == ["split test has no example of BACTERIAL_PNEUMONIA",
                                           "split test has no example of PNEUMOTHORAX"]
    assert missing_classes(_statistics(tmp_path / "all", {"train": every_class, "test": every_class})) == []


def test_a_span_without_its_manifest_is_incomplete(tmp_path):
    examples = standard_artifacts.Examples()
    examples.set_int_custom_property("span", 4)
    (tmp_path / "span-4").mkdir()
    (tmp_path / "span-4" / "data-00000-of-00001.tfrecord.gz").write_bytes(b"")
    [problem] = span_problems(examples, str(tmp_path))
    assert problem.startswith(f"span 4 has no {tmp_path}/span-4/manifest.json: it is incomplete")
    (tmp_path / "span-4" / "manifest.json").write_text("{}")
    assert span_problems(examples, str(tmp_path)) == []
