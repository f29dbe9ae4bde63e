"""The Tuner in the local pipeline: a few trials on tiny data, and the best values reach the Trainer."""
import dataclasses
import json
import os

import pytest

from cxr import contract
from cxr.dataprep.build import build_tfrecords
from cxr.dataprep.config import IngestConfig
from cxr.pipeline.local_runner import run_local
from helpers import IN_PROCESS_BEAM, ORCHESTRATION_ONLY, latest_artifact_uris, tiny_pipeline_config, write_tiny_data

pytestmark = pytest.mark.slow

TUNING = ("tuner.enabled=true", "tuner.max_trials=2", "tuner.epochs_per_trial=1",
          "tuner.learning_rate=[0.001, 0.003]", "tuner.width_multiplier=[1.0, 2.0]", "tuner.batch_size=[8, 16]",
          "tuner.dense_multiplier=[1.0]", "tuner.dropout=[0.2]", "tuner.augmentation_strength=[0.0, 1.0]")


def test_the_best_hyperparameters_of_the_search_are_what_the_trainer_trains_with(tmp_path):
    roots = write_tiny_data(tmp_path / "raw", per_class=16)
    build_tfrecords(IngestConfig(source_roots=roots, out_dir=str(tmp_path / "tfrecords"), beam_args=IN_PROCESS_BEAM))
    config = tiny_pipeline_config(tmp_path, *ORCHESTRATION_ONLY, *TUNING)
    summary = run_local(config)
    assert summary.error is None, summary.error
    assert summary.statuses["Tuner"] == "COMPLETE" and summary.statuses["Trainer"] == "COMPLETE"

    [best_dir] = latest_artifact_uris(config, "Tuner", "best_hyperparameters")
    with open(os.path.join(best_dir, "best_hyperparameters.txt")) as f:
        best = json.load(f)["values"]
    assert set(best) >= {"learning_rate", "width_multiplier", "batch_size", "augmentation_strength"}
    [model_run] = latest_artifact_uris(config, "Trainer", "model_run")
    with open(os.path.join(model_run, contract.TRAINER_SETTINGS_FILE)) as f:
        used = json.load(f)
    expected = config.trainer_settings().with_hyperparameters(best)
    assert used == json.loads(json.dumps(dataclasses.asdict(expected)))
