"""The Tuner in the local pipeline: a few trials on tiny data, and the best values reach the Trainer."""
import json
import os

import pytest

from cxr.components.ingest.build import build_tfrecords
from cxr.components.ingest.config import IngestConfig
from cxr.components.trainer import SETTINGS_FILE, TrainerSettings, with_hyperparameters
from cxr.demo_data import DemoDataSpec, write_demo_data
from cxr.pipeline.local_runner import run_local
from cxr.pipeline.pipeline import trainer_settings
from helpers import IN_PROCESS_BEAM, latest_artifact_uris, tiny_pipeline_config

pytestmark = pytest.mark.slow

TUNING = ("tuner.enabled=true", "tuner.max_trials=2", "tuner.epochs_per_trial=1",
          "tuner.learning_rate=[0.001, 0.003]", "tuner.width_multiplier=[1.0, 2.0]", "tuner.batch_size=[8, 16]",
          "tuner.dense_multiplier=[1.0]", "tuner.dropout=[0.2]", "tuner.augmentation_strength=[0.0, 1.0]")


def test_the_best_hyperparameters_of_the_search_are_what_the_trainer_trains_with(tmp_path):
    roots = write_demo_data(DemoDataSpec(out_dir=str(tmp_path / "raw"), per_class=16, size=64, seed=3))
    build_tfrecords(IngestConfig(source_roots=roots, out_dir=str(tmp_path / "tfrecords"), beam_args=IN_PROCESS_BEAM))
    config = tiny_pipeline_config(tmp_path, *TUNING)
    summary = run_local(config)
    assert summary.error is None, summary.error
    assert summary.statuses["Tuner"] == "COMPLETE" and summary.statuses["Trainer"] == "COMPLETE"

    [best_dir] = latest_artifact_uris(config, "Tuner", "best_hyperparameters")
    with open(os.path.join(best_dir, "best_hyperparameters.txt")) as f:
        best = json.load(f)["values"]
    assert set(best) >= {"learning_rate", "width_multiplier", "batch_size", "augmentation_strength"}
    [model_run] = latest_artifact_uris(config, "Trainer", "model_run")
    with open(os.path.join(model_run, SETTINGS_FILE)) as f:
        used = json.load(f)
    configured = TrainerSettings.from_custom_config(trainer_settings(config))
    expected = with_hyperparameters(configured, best)
    assert used["learning_rate"] == expected.learning_rate and used["filters"] == expected.filters
    assert used["batch_size"] == expected.batch_size and used["augmentation"] == expected.augmentation
