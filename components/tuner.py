"""Tuner's `tuner_fn`: a hyperparameter search over the study's knobs.

KerasTuner 1.4 builds and fits Keras 3 models (it imports `keras`, which is
Keras 3 next to TensorFlow 2.16), while TFT, the Trainer and the served model
use tf_keras. KerasTuner's oracles and HyperParameters do not care which Keras
trains, so the search is KerasTuner's own BaseTuner loop with its oracles
(random, Bayesian optimisation, Hyperband) and a `run_trial` of ours that
builds and fits the tf_keras model exactly as the Trainer does. A trial whose
loss is not finite raises FailedTrialError: KerasTuner records it FAILED and
the search goes on.

The knobs, their default choices and what each changes are declared once, in
components/settings.py (KNOBS).
"""
import math
import os
from typing import Callable, Dict

import keras_tuner
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from cxr.components import trainer as trainer_lib
from cxr.components.model import learning_rate_callbacks
from cxr.components.settings import KNOBS, TUNER_KEY, TrainerSettings, TunerSettings, read

OBJECTIVE = "val_loss"
ORACLES = {"random": keras_tuner.oracles.RandomSearchOracle, "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
           "hyperband": keras_tuner.oracles.HyperbandOracle}


def search_space(settings: TunerSettings) -> keras_tuner.HyperParameters:
    space = keras_tuner.HyperParameters()
    for knob in KNOBS:
        space.Choice(knob, list(getattr(settings, knob)), ordered=True)
    return space


def make_oracle(settings: TunerSettings, seed: int) -> keras_tuner.Oracle:
    budget = ({"max_epochs": settings.epochs_per_trial} if settings.algorithm == "hyperband"
              else {"max_trials": settings.max_trials})
    return ORACLES[settings.algorithm](objective=keras_tuner.Objective(OBJECTIVE, "min"),
                                       hyperparameters=search_space(settings), tune_new_entries=False, seed=seed,
                                       **budget)


# (trial settings, replicas) -> (train, eval) global batches
Datasets = Callable[[TrainerSettings, int], trainer_lib.Inputs]


class TfKerasTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """KerasTuner's search loop; each trial trains the study's tf_keras CNN as the Trainer does
    (same strategy, precision, XLA setting and augmentation layer)."""

    def __init__(self, oracle, settings: TrainerSettings, datasets: Datasets, epochs: int, directory: str):
        super().__init__(oracle, directory=directory, project_name="cxr", overwrite=True)
        self.settings = settings
        self.datasets = datasets
        self.epochs = epochs
        self.strategy = trainer_lib.distribution_strategy()

    def run_trial(self, trial, *fit_args, **fit_kwargs) -> Dict[str, float]:
        values = trial.hyperparameters.values
        settings = self.settings.with_hyperparameters(values)
        keras.utils.set_random_seed(settings.training.seed)
        inputs = self.datasets(settings, self.strategy.num_replicas_in_sync)
        model = trainer_lib.build(settings, self.strategy)
        # Hyperband's "tuner/epochs" is the trial's budget. Each trial trains a fresh model for it:
        # models are not kept between trials, so "tuner/initial_epoch" has nothing to resume.
        epochs = values.get("tuner/epochs", self.epochs)
        schedule = learning_rate_callbacks(settings.training, epochs, self.strategy.num_replicas_in_sync)
        history = model.fit(inputs.train, steps_per_epoch=inputs.steps_per_epoch, validation_data=inputs.evaluation,
                            verbose=2, epochs=epochs, callbacks=[keras.callbacks.TerminateOnNaN(), *schedule])
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
    settings = trainer_lib.settings_from(fn_args.custom_config)
    tuning = read(TunerSettings, fn_args.custom_config[TUNER_KEY], f"custom_config[{TUNER_KEY!r}]")
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    splits = trainer_lib.read_splits(fn_args)
    tuner = TfKerasTuner(make_oracle(tuning, settings.training.seed), settings,
                         lambda trial_settings, replicas: trainer_lib.datasets(splits, transform_output,
                                                                               trial_settings, replicas),
                         epochs=tuning.epochs_per_trial, directory=os.path.join(fn_args.working_dir, "search"))
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={})
