"""The Tuner's search: KerasTuner's oracles over the study's knobs, trials trained with tf_keras."""
import math

import numpy as np
import pytest
import tensorflow as tf
from keras_tuner.src.engine.trial import TrialStatus

from cxr.components.settings import (
    KNOBS, AugmentationSettings, InputLimits, ModelSettings, SettingsError, TrainerSettings, TrainingSettings,
    TunerSettings, read)
from cxr.components.trainer import Inputs
from cxr.components.tuner import (
    COMPLETED, DIVERGED, FAILED, SearchFailed, TfKerasTuner, TrialRecord, make_oracle, search_space, summary_line)
from helpers import encode, phantom_picture
from trained_model import transformed_pixels

SIZE = 40
FINDINGS = ("bacterial_pneumonia", "covid", "normal", "pneumothorax")
SETTINGS = TrainerSettings(
    model=ModelSettings(image_size=SIZE, filters=(4, 8), dense_units=(8,), dropout=0.1),
    training=TrainingSettings(learning_rate=1e-3, batch_size=8, epochs=1, early_stopping_patience=1,
                              augmentation=AugmentationSettings(rotation=0.02, zoom=0.0, brightness=0.1, contrast=0.0)),
    input_limits=InputLimits())


@pytest.fixture(scope="module")
def pixels():
    images = [encode(phantom_picture(seed, size=64, finding=FINDINGS[seed % 4]), "PNG") for seed in range(32)]
    return transformed_pixels(images, SIZE), np.arange(32) % 4


def _tuning(**choices):
    values = dict(algorithm="random", max_trials=3, epochs_per_trial=1, min_completed_trials=0, learning_rate=(1e-3,),
                  width_multiplier=(1.0,), dense_multiplier=(1.0,), dropout=(0.1,), batch_size=(8,),
                  augmentation_strength=(1.0,))
    values.update(choices)
    return TunerSettings(**values)


def _datasets(pixels):
    """(train, eval) batched as the trial's settings say, like the Trainer's input."""
    images, labels = pixels

    def make(settings, replicas):
        batch = settings.training.batch_size * replicas
        train = tf.data.Dataset.from_tensor_slices(({"image": images}, labels)).batch(batch)
        return Inputs(train.repeat(), math.ceil(len(labels) / batch), train)
    return make


def test_the_search_space_covers_every_knob_with_the_configured_choices():
    space = search_space(_tuning(learning_rate=(1e-4, 1e-3), batch_size=(16, 32)))
    assert {hp.name for hp in space.space} == set(KNOBS)
    assert space.get("learning_rate") == 1e-4 and [hp.values for hp in space.space if hp.name == "batch_size"] == [
        [16, 32]]


def test_chosen_values_change_the_trainer_settings():
    tuned = SETTINGS.with_hyperparameters({"learning_rate": 3e-4, "width_multiplier": 0.5, "dense_multiplier": 2.0,
                                           "dropout": 0.5, "batch_size": 32, "augmentation_strength": 0.5,
                                           "tuner/epochs": 3})
    assert (tuned.training.learning_rate, tuned.model.filters, tuned.model.dense_units, tuned.model.dropout,
            tuned.training.batch_size) == (3e-4, (2, 4), (16,), 0.5, 32)
    assert tuned.training.augmentation == AugmentationSettings(horizontal_flip=True, rotation=0.01, zoom=0.0,
                                                               brightness=0.05, contrast=0.0)
    assert SETTINGS.with_hyperparameters({"augmentation_strength": 0.0}).training.augmentation.horizontal_flip is False


def test_every_knob_is_a_tuner_setting_with_its_choices_and_is_searched():
    defaults = TunerSettings()
    assert all(getattr(defaults, name) == knob.choices for name, knob in KNOBS.items())
    assert {hp.name for hp in search_space(defaults).space} == set(KNOBS)
    for name, knob in KNOBS.items():  # and each one changes what the Trainer trains with
        assert SETTINGS.with_hyperparameters({name: knob.choices[0]}) != SETTINGS, name


def test_the_strict_reader_refuses_an_unknown_or_missing_setting():
    import dataclasses
    values = dataclasses.asdict(SETTINGS)
    assert read(TrainerSettings, values, "trainer") == SETTINGS
    values["training"]["epoch"] = 3
    with pytest.raises(SettingsError, match=r"trainer.training: unknown setting epoch; known: .*epochs"):
        read(TrainerSettings, values, "trainer")
    del values["training"]["epoch"], values["model"]["dropout"]
    with pytest.raises(SettingsError, match=r"trainer.model: missing setting dropout"):
        read(TrainerSettings, values, "trainer")
    with pytest.raises(SettingsError, match="tuner.algorithm must be one of random, bayesian, hyperband"):
        _tuning(algorithm="grid")


def test_every_algorithm_the_settings_take_has_its_oracle():
    from cxr.components import tuner
    from cxr.components.settings import TUNER_ALGORITHMS
    assert set(tuner.ORACLES) == set(TUNER_ALGORITHMS)


@pytest.mark.parametrize("algorithm", ["random", "bayesian", "hyperband"])
def test_each_algorithm_trains_every_trial_and_reports_the_best_values(pixels, tmp_path, algorithm):
    tuning = _tuning(algorithm=algorithm, max_trials=2, epochs_per_trial=1, learning_rate=(1e-3, 3e-3))
    tuner = TfKerasTuner(make_oracle(tuning, seed=0), SETTINGS, _datasets(pixels), epochs=1,
                         directory=str(tmp_path))
    tuner.search()
    trials = list(tuner.oracle.trials.values())
    assert trials and all(trial.status == TrialStatus.COMPLETED for trial in trials)
    records = tuner.trials()
    assert [record.trial_id for record in records] == [trial.trial_id for trial in trials]
    assert all(record.status == COMPLETED and math.isfinite(record.objective) and record.epochs >= 1
               and record.seconds > 0 and not record.error and 0 <= record.val_accuracy <= 1 for record in records)
    best = tuner.get_best_hyperparameters()[0].values
    assert best["learning_rate"] in (1e-3, 3e-3)
    [marked] = [record for record in records if record.best]
    assert marked.objective == min(trial.score for trial in trials) == tuner.oracle.get_best_trials()[0].score
    assert marked.values == {name: best[name] for name in KNOBS}


def _search(pixels, tmp_path, tuning, datasets=None):
    tuner = TfKerasTuner(make_oracle(tuning, seed=0), SETTINGS, datasets or _datasets(pixels), epochs=1,
                         directory=str(tmp_path), min_completed=tuning.min_completed_trials)
    return tuner


def test_a_diverging_trial_is_recorded_and_the_search_goes_on_to_the_completed_ones(pixels, tmp_path):
    # A learning rate of 1e38 overflows the weights on the first step: the loss is infinite.
    tuner = _search(pixels, tmp_path, _tuning(max_trials=4, learning_rate=(1e-3, 1e38)))
    tuner.search()
    by_rate = {trial.hyperparameters.values["learning_rate"]: trial for trial in tuner.oracle.trials.values()}
    assert by_rate[1e38].status == TrialStatus.FAILED and "diverged" in by_rate[1e38].message
    assert by_rate[1e-3].status == TrialStatus.COMPLETED
    assert tuner.get_best_hyperparameters()[0].values["learning_rate"] == 1e-3
    records = {record.values["learning_rate"]: record for record in tuner.trials()}
    assert records[1e38].status == DIVERGED and records[1e38].objective is None and "not finite" in records[1e38].error
    assert records[1e-3].status == COMPLETED and records[1e-3].best


def test_a_search_where_every_trial_diverged_fails_naming_each_trial(pixels, tmp_path):
    tuner = _search(pixels, tmp_path, _tuning(max_trials=2, learning_rate=(1e38,), dropout=(0.1, 0.2)))
    with pytest.raises(SearchFailed, match=r"0 of 2 trials completed.*trial 0 DIVERGED with learning_rate=1e\+38.*"
                                           r"the loss is not finite.*trial 1 DIVERGED"):
        tuner.search()
    assert [record.status for record in tuner.trials()] == [DIVERGED, DIVERGED]
    assert not any(record.best for record in tuner.trials())


def _failing_for_batches_of(size, pixels):
    make = _datasets(pixels)

    def datasets(settings, replicas):
        if settings.training.batch_size == size:
            raise OSError(f"cannot read the split for batches of {size}")
        return make(settings, replicas)
    return datasets


def test_a_trial_that_errors_ends_the_search_at_once_naming_it_and_its_error(pixels, tmp_path):
    tuner = _search(pixels, tmp_path, _tuning(max_trials=6, batch_size=(8, 16)), _failing_for_batches_of(16, pixels))
    with pytest.raises(SearchFailed, match=r"was stopped: \d of \d trials completed.*batch_size=16.*"
                                           r"OSError: cannot read the split for batches of 16"):
        tuner.search()
    records = tuner.trials()
    assert records[-1].status == FAILED and records[-1].values["batch_size"] == 16
    assert len(records) < 6  # no trial ran after it


def test_min_completed_trials_lets_a_search_pass_with_failures_and_fails_one_that_cannot_reach_it(pixels, tmp_path):
    tolerant = _search(pixels, tmp_path / "a", _tuning(max_trials=4, batch_size=(8, 16), min_completed_trials=1),
                       _failing_for_batches_of(16, pixels))
    tolerant.search()
    statuses = {record.values["batch_size"]: record.status for record in tolerant.trials()}
    assert statuses == {8: COMPLETED, 16: FAILED}
    assert tolerant.get_best_hyperparameters()[0].values["batch_size"] == 8

    strict = _search(pixels, tmp_path / "b", _tuning(max_trials=3, batch_size=(16,), dropout=(0.1, 0.2, 0.3),
                                                     min_completed_trials=2), _failing_for_batches_of(16, pixels))
    with pytest.raises(SearchFailed, match=r"was stopped: 0 of 2 trials completed, and it needs at least 2 "
                                           r"completed trials \(tuner.min_completed_trials\)"):
        strict.search()  # after two failures of three trials, two can no longer complete


def test_min_completed_trials_is_checked_against_the_budget():
    with pytest.raises(SettingsError, match="tuner.min_completed_trials 4 is more than tuner.max_trials 3"):
        _tuning(max_trials=3, min_completed_trials=4)
    with pytest.raises(SettingsError, match="tuner.min_completed_trials must be 0"):
        _tuning(min_completed_trials=-1)


def test_the_summary_names_the_best_trial_and_warns_when_no_trial_left_the_plateau():
    def record(trial_id, objective, best=False):
        return TrialRecord(trial_id, {"learning_rate": 1e-3}, 5, COMPLETED, objective, 0.4, 5, 10.0, "", best)
    learned = summary_line([record("0", 0.9), record("1", 0.5, best=True)])
    assert learned.startswith("best trial 1 of 2 (2 completed, 20 s): val_loss 0.5000 with learning_rate=0.001")
    assert "WARNING" not in learned
    stuck = summary_line([record("0", 1.3376, best=True), record("1", 1.3559)])
    assert "WARNING: no trial learned (every val_loss above 0.9 x ln 4 = 1.248" in stuck
    assert "tuner.epochs_per_trial" in stuck
