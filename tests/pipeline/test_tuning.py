"""The Tuner in the local pipeline: every trial trains on Transform's output, the best completed trial's values
reach the Trainer, and a search whose trials did not complete stops the run before the Trainer."""
import dataclasses
import html
import json
import math
import os
import re

import pytest

from cxr import contract
from cxr.output import run_summary
from cxr.pipeline.local_runner import run_local
from helpers import ORCHESTRATION_ONLY, latest_artifact_uris, tiny_pipeline_config

pytestmark = pytest.mark.slow

TUNING = ("tuner.enabled=true", "tuner.max_trials=3", "tuner.epochs_per_trial=1",
          "tuner.learning_rate=[0.001, 0.003]", "tuner.width_multiplier=[1.0, 2.0]", "tuner.batch_size=[8, 16]",
          "tuner.dense_multiplier=[1.0]", "tuner.dropout=[0.2]", "tuner.augmentation_strength=[0.0, 1.0]")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_span):
    """A run with a three-trial search, and its configuration."""
    base = tmp_path_factory.mktemp("tuning")
    tiny_span(base / "tfrecords")
    config = tiny_pipeline_config(base, *ORCHESTRATION_ONLY, *TUNING)
    summary = run_local(config)
    # This run's folders, read now: a later test's run adds executions to the same ML Metadata.
    folders = {key: latest_artifact_uris(config, node, key)[0] for node, key in (
        ("Tuner", "tuner_results"), ("Tuner", "best_hyperparameters"), ("Trainer", "model_run"))
        if summary.statuses.get(node) == "COMPLETE"}
    return config, summary, folders


def _read(directory, name):
    with open(os.path.join(directory, name)) as f:
        return json.load(f)


def test_every_trial_trains_on_the_transform_output_and_completes(tuned):
    config, summary, folders = tuned
    assert summary.error is None, summary.error
    assert summary.statuses["Tuner"] == "COMPLETE" and summary.statuses["Trainer"] == "COMPLETE"
    results_dir = folders["tuner_results"]
    trials = _read(results_dir, contract.TUNER_TRIALS_FILE)
    assert len(trials) == config.tuner.max_trials
    assert all(t["status"] == "COMPLETED" and math.isfinite(t["objective"]) and t["epochs"] == 1 and not t["error"]
               for t in trials), trials
    completed = _read(results_dir, "tuner_results.json")  # TFX's file: the completed trials, best first
    assert sorted(t["trial_id"] for t in completed) == sorted(t["trial_id"] for t in trials)
    assert [t["score"] for t in completed] == sorted(t["objective"] for t in trials)


def test_the_best_completed_trial_is_what_the_trainer_trains_with(tuned):
    config, summary, folders = tuned
    best = _read(folders["best_hyperparameters"], "best_hyperparameters.txt")["values"]
    results_dir = folders["tuner_results"]
    first = _read(results_dir, "tuner_results.json")[0]
    [marked] = [t for t in _read(results_dir, contract.TUNER_TRIALS_FILE) if t["best"]]
    assert marked["trial_id"] == first["trial_id"] and {k: first[k] for k in marked["values"]} == marked["values"]
    assert {name: best[name] for name in marked["values"]} == marked["values"]
    used = _read(folders["model_run"], contract.TRAINER_SETTINGS_FILE)
    expected = config.trainer_settings().with_hyperparameters(best)
    assert used == json.loads(json.dumps(dataclasses.asdict(expected)))
    # cxr run's summary names the best trial
    assert f"tuner: best trial {marked['trial_id']} of 3 (3 completed" in run_summary(summary)


def test_a_search_whose_every_trial_diverged_stops_the_run_before_the_trainer(tuned):
    config, _, _ = tuned
    # A learning rate of 1e38 overflows the weights on the first step: every trial's loss is infinite.
    diverging = dataclasses.replace(config, tuner=dataclasses.replace(config.tuner, learning_rate=(1e38,)))
    summary = run_local(diverging)
    assert summary.statuses["Tuner"] == "FAILED" and "Trainer" not in summary.statuses
    assert "SearchFailed: the search failed: 0 of 3 trials completed" in summary.error
    assert summary.error.count("DIVERGED with learning_rate=1e+38") == 3
    assert summary.pushed_to is None


def test_the_report_shows_every_trial_the_best_marked_and_the_objective_by_trial(tuned, tmp_path):
    from cxr.pipeline.metadata_reader import sqlite_connection
    from cxr.pipeline.report.collect import collect
    from cxr.pipeline.report.render import write_report
    config, summary, folders = tuned
    trials = _read(folders["tuner_results"], contract.TUNER_TRIALS_FILE)
    with open(write_report(collect(sqlite_connection(config.metadata_path), summary.run_id), str(tmp_path)),
              encoding="utf-8") as f:
        page = f.read()
    section = page[page.index("<h3>Tuner search"):page.index("</figure>", page.index("<h3>Tuner search"))]
    assert "<h3>Tuner search: 3 trials, 3 completed" in section and html.escape(summary.tuner_search) in section
    rows = re.findall(r"<tr><td>(.*?)</td><td><span class='good'>COMPLETED</span></td><td>([\d.]+)</td>", section)
    [best] = [t for t in trials if t["best"]]
    assert rows == [(f"<b>{t['trial_id']} (best)</b>" if t["best"] else t["trial_id"], f"{t['objective']:.4f}")
                    for t in trials]
    assert section.count("<circle") == 3 and section.count("fill='#d62728'") == 1
    assert f"trial {best['trial_id']}: {best['objective']:.4f}</title></circle>" in section.split("fill='#d62728'")[1]
