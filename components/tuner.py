"""Tuner's `tuner_fn`: a hyperparameter search over the study's knobs.

KerasTuner 1.4 builds and fits Keras 3 models (it imports `keras`, which is
Keras 3 next to TensorFlow 2.16), while TFT, the Trainer and the served model
use tf_keras. KerasTuner's oracles and HyperParameters do not care which Keras
trains, so the search is KerasTuner's own BaseTuner loop with its oracles
(random, Bayesian optimisation, Hyperband) and a `run_trial` of ours that
builds and fits the tf_keras model exactly as the Trainer does. A trial whose
loss is not finite raises FailedTrialError: KerasTuner records it FAILED and
the search goes on.

Knobs (names shared with components.trainer.with_hyperparameters):
learning_rate, width_multiplier (every convolution's filters), dense_multiplier,
dropout, batch_size, augmentation_strength (scales every augmentation range).
"""
import dataclasses
import math
import os
from typing import Callable, Dict, Tuple

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from cxr.components import trainer as trainer_lib
from cxr.components.trainer import TrainerSettings

OBJECTIVE = "val_loss"
KNOBS = ("learning_rate", "width_multiplier", "dense_multiplier", "dropout", "batch_size",
         "augmentation_strength")


@dataclasses.dataclass(frozen=True)
class TunerSettings:
    """From the Tuner's custom_config (pipeline config section `tuner`)."""
    algorithm: str
    max_trials: int
    epochs_per_trial: int
    learning_rate: Tuple[float, ...]
    width_multiplier: Tuple[float, ...]
    dense_multiplier: Tuple[float, ...]
    dropout: Tuple[float, ...]
    batch_size: Tuple[int, ...]
    augmentation_strength: Tuple[float, ...]

    @classmethod
    def from_custom_config(cls, custom_config: dict) -> "TunerSettings":
        values = custom_config["tuner"]
        return cls(**{field.name: (tuple(values[field.name]) if isinstance(values[field.name], list)
                                   else values[field.name]) for field in dataclasses.fields(cls)})


def search_space(settings: TunerSettings) -> keras_tuner.HyperParameters:
    space = keras_tuner.HyperParameters()
    for knob in KNOBS:
        space.Choice(knob, list(getattr(settings, knob)), ordered=True)
    return space


def make_oracle(settings: TunerSettings, seed: int) -> keras_tuner.Oracle:
    common = dict(objective=keras_tuner.Objective(OBJECTIVE, "min"), hyperparameters=search_space(settings),
                  tune_new_entries=False, seed=seed)
    if settings.algorithm == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=settings.max_trials, **common)
    if settings.algorithm == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=settings.max_trials, **common)
    if settings.algorithm == "hyperband":
        return keras_tuner.oracles.HyperbandOracle(max_epochs=settings.epochs_per_trial, **common)
    raise ValueError(f"tuner.algorithm must be random, bayesian or hyperband, got {settings.algorithm!r}")


Datasets = Callable[[TrainerSettings], Tuple[tf.data.Dataset, tf.data.Dataset]]


class TfKerasTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """KerasTuner's search loop; each trial trains the study's tf_keras CNN."""

    def __init__(self, oracle, settings: TrainerSettings, datasets: Datasets, epochs: int, directory: str):
        super().__init__(oracle, directory=directory, project_name="cxr", overwrite=True)
        self.settings = settings
        self.datasets = datasets
        self.epochs = epochs

    def run_trial(self, trial, *fit_args, **fit_kwargs) -> Dict[str, float]:
        values = trial.hyperparameters.values
        settings = trainer_lib.with_hyperparameters(self.settings, values)
        keras.utils.set_random_seed(settings.seed)
        train, evaluation = self.datasets(settings)
        model = trainer_lib.build(settings)
        # Hyperband's "tuner/epochs" is the trial's budget. Each trial trains a fresh model for it:
        # models are not kept between trials, so "tuner/initial_epoch" has nothing to resume.
        history = model.fit(train, validation_data=evaluation, verbose=2,
                            epochs=values.get("tuner/epochs", self.epochs),
                            callbacks=[keras.callbacks.TerminateOnNaN()])
        losses = history.history.get("loss", []) + history.history.get(OBJECTIVE, [])
        if not losses or not all(math.isfinite(loss) for loss in losses):
            raise keras_tuner.errors.FailedTrialError(
                f"trial {trial.trial_id} diverged (loss {losses[-1:]}) with {dict(values)}")
        return {OBJECTIVE: min(history.history[OBJECTIVE])}

    def save_model(self, trial_id, model, step=0):
        pass  # the Trainer trains the final model with the best values

    def load_model(self, trial):
        raise NotImplementedError("the Tuner keeps hyperparameters, not models")


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
    settings = TrainerSettings.from_custom_config(fn_args.custom_config)
    tuning = TunerSettings.from_custom_config(fn_args.custom_config)
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    tuner = TfKerasTuner(make_oracle(tuning, settings.seed), settings,
                         lambda trial_settings: trainer_lib.datasets(fn_args, transform_output, trial_settings),
                         epochs=tuning.epochs_per_trial, directory=os.path.join(fn_args.working_dir, "search"))
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={})
