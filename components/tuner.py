"""The Tuner: a hyperparameter search over the study's knobs, every trial trained on Transform's output.

KerasTuner 1.4 builds and fits Keras 3 models (it imports `keras`, which is
Keras 3 next to TensorFlow 2.16), while TFT, the Trainer and the served model
use tf_keras. KerasTuner's oracles and HyperParameters do not care which Keras
trains, so the search is KerasTuner's own BaseTuner loop with its oracles
(random, Bayesian optimisation, Hyperband) and a `run_trial` of ours that
builds and fits the tf_keras model exactly as the Trainer does.

What TFX's generic Tuner (tfx/components/tuner/executor.py) leaves undone, done here:
- It hands `tuner_fn` the transform graph as `fn_args.transform_graph_path` only: the deprecated
  `transform_output` is filled in by the Trainer's executor alone (None here).
- KerasTuner's `get_best_trials` pads the completed trials with failed ones (keras_tuner/src/engine/
  oracle.py), so when no trial completed TFX writes as "best" values that never trained. Here the
  search fails unless enough trials completed (`tuner.min_completed_trials`), with a message naming
  each failed trial and its error, and no hyperparameters are written.
- Its `write_best_hyperparameters` asks the oracle for `max_trials` trials, None for Hyperband (a
  TypeError after the whole search). The executor here writes TFX's two files itself (the Trainer
  reads best_hyperparameters.txt, TFX's format) and every trial's record beside them
  (contract.TUNER_TRIALS_FILE).

The knobs, their default choices and what each changes are declared once, in
components/settings.py (KNOBS).
"""
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import keras_tuner
from absl import logging
import tensorflow_transform as tft
import tf_keras as keras
from keras_tuner.src.engine.trial import TrialStatus
from tfx import v1 as tfx
from tfx.components.tuner import executor as tfx_tuner
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils

from cxr import contract
from cxr.components import trainer as trainer_lib
from cxr.components.model import learning_rate_callbacks
from cxr.components.settings import KNOBS, TUNER_KEY, TrainerSettings, TunerSettings, read

OBJECTIVE = "val_loss"
ORACLES = {"random": keras_tuner.oracles.RandomSearchOracle, "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
           "hyperband": keras_tuner.oracles.HyperbandOracle}
# A trial's outcome in contract.TUNER_TRIALS_FILE: it trained to a finite objective, its loss stopped
# being finite, or it raised an error.
COMPLETED, DIVERGED, FAILED = "COMPLETED", "DIVERGED", "FAILED"


def search_space(settings: TunerSettings) -> keras_tuner.HyperParameters:
    space = keras_tuner.HyperParameters()
    for knob in KNOBS:
        space.Choice(knob, list(getattr(settings, knob)), ordered=True)
    return space


def make_oracle(settings: TunerSettings, seed: int) -> keras_tuner.Oracle:
    budget = ({"max_epochs": settings.epochs_per_trial} if settings.algorithm == "hyperband"
              else {"max_trials": settings.max_trials})
    # KerasTuner's own stop after 3 failures in a row is off: `TfKerasTuner` judges failures by its rule.
    return ORACLES[settings.algorithm](objective=keras_tuner.Objective(OBJECTIVE, "min"),
                                       hyperparameters=search_space(settings), tune_new_entries=False, seed=seed,
                                       max_consecutive_failed_trials=sys.maxsize, **budget)


@dataclasses.dataclass
class TrialRecord:
    """One trial as contract.TUNER_TRIALS_FILE lists it."""
    trial_id: str
    values: Dict[str, object]  # the knobs' chosen values
    epoch_budget: int  # what it was to train (Hyperband gives each trial its own)
    status: str = FAILED  # COMPLETED, DIVERGED or FAILED
    objective: Optional[float] = None  # the lowest val_loss of its epochs, when it completed
    val_accuracy: Optional[float] = None  # the highest of its epochs
    epochs: int = 0  # epochs it trained
    seconds: float = 0.0
    error: str = ""  # why it did not complete
    best: bool = False


class SearchFailed(RuntimeError):
    """Fewer trials completed than the search asks: no hyperparameters are handed to the Trainer."""


# (trial settings, replicas) -> (train, eval) global batches
Datasets = Callable[[TrainerSettings, int], trainer_lib.Inputs]


class _EpochCounter(keras.callbacks.Callback):
    def __init__(self, record: TrialRecord):
        super().__init__()
        self.record = record

    def on_epoch_end(self, epoch, logs=None):
        self.record.epochs = epoch + 1


class TfKerasTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """KerasTuner's search loop; each trial trains the study's tf_keras CNN as the Trainer does
    (same strategy, precision, XLA setting and augmentation layer).

    `min_completed`: the search fails unless this many trials completed; 0: every trial but those
    that diverged, and at least one (then a trial that fails with an error ends the search at once)."""

    def __init__(self, oracle, settings: TrainerSettings, datasets: Datasets, epochs: int, directory: str,
                 min_completed: int = 0):
        super().__init__(oracle, directory=directory, project_name="cxr", overwrite=True)
        self.settings = settings
        self.datasets = datasets
        self.epochs = epochs
        self.min_completed = min_completed
        self.strategy = trainer_lib.distribution_strategy()
        self.records: Dict[str, TrialRecord] = {}
        self._started: Dict[str, float] = {}

    def search(self, *fit_args, **fit_kwargs) -> None:
        super().search(*fit_args, **fit_kwargs)
        failure = search_failure(self.trials(), self.min_completed)
        if failure:
            raise SearchFailed(failure)

    def on_trial_begin(self, trial):
        self._started[trial.trial_id] = time.monotonic()
        values = trial.hyperparameters.values
        self.records[trial.trial_id] = TrialRecord(
            trial.trial_id, {name: values[name] for name in KNOBS if name in values},
            int(values.get("tuner/epochs", self.epochs)))

    def run_trial(self, trial, *fit_args, **fit_kwargs) -> Dict[str, float]:
        record = self.records[trial.trial_id]
        values = trial.hyperparameters.values
        try:
            settings = self.settings.with_hyperparameters(values)
            keras.utils.set_random_seed(settings.training.seed)
            inputs = self.datasets(settings, self.strategy.num_replicas_in_sync)
            model = trainer_lib.build(settings, self.strategy)
            # Each trial trains a fresh model for its budget (Hyperband's "tuner/epochs"): models are not
            # kept between trials, so Hyperband's "tuner/initial_epoch" has nothing to resume.
            schedule = learning_rate_callbacks(settings.training, record.epoch_budget,
                                               self.strategy.num_replicas_in_sync)
            history = model.fit(inputs.train, steps_per_epoch=inputs.steps_per_epoch,
                                validation_data=inputs.evaluation, verbose=2, epochs=record.epoch_budget,
                                callbacks=[keras.callbacks.TerminateOnNaN(), _EpochCounter(record), *schedule])
        except Exception as error:
            record.error = f"{type(error).__name__}: {_first_line(error)}"
            raise
        record.val_accuracy = max(history.history.get("val_accuracy", [math.nan]))
        losses = history.history.get("loss", []) + history.history.get(OBJECTIVE, [])
        if not history.history.get(OBJECTIVE) or not all(math.isfinite(loss) for loss in losses):
            record.status = DIVERGED
            record.error = f"the loss is not finite (last {losses[-1:]})"
            raise keras_tuner.errors.FailedTrialError(f"trial {trial.trial_id} diverged: {record.error}")
        return {OBJECTIVE: min(history.history[OBJECTIVE])}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle ends the trial: its status and score are final here
        record, ended = self.records[trial.trial_id], self.oracle.trials[trial.trial_id]
        record.seconds = round(time.monotonic() - self._started[trial.trial_id], 1)
        if ended.status == TrialStatus.COMPLETED:
            record.status, record.objective, record.error = COMPLETED, float(ended.score), ""
        elif record.status != DIVERGED:
            record.status = FAILED
            record.error = record.error or _last_line(ended.message)
        failure = self._hopeless()
        if failure:
            raise SearchFailed(failure)

    def _hopeless(self) -> Optional[str]:
        """Why the search cannot pass any more, as soon as that is known."""
        trials = self.trials()
        if self.min_completed == 0:
            if any(record.status == FAILED for record in trials):
                return search_failure(trials, 0, stopped=True)
            return None
        budget = self.oracle.max_trials  # None for Hyperband: its trial count follows from its brackets
        failed = sum(record.status != COMPLETED for record in trials)
        if budget and budget - failed < self.min_completed:
            return search_failure(trials, self.min_completed, stopped=True)
        return None

    def trials(self) -> List[TrialRecord]:
        """Every ended trial in the order it ran, the best completed one marked."""
        records = [self.records[trial_id] for trial_id in self.oracle.end_order if trial_id in self.records]
        completed = [record for record in records if record.status == COMPLETED]
        for record in records:
            record.best = False
        if completed:
            min(completed, key=lambda record: record.objective).best = True
        return records

    def save_model(self, trial_id, model, step=0):
        pass  # the Trainer trains the final model with the best values

    def load_model(self, trial):
        raise NotImplementedError("the Tuner keeps hyperparameters, not models")


def search_failure(trials: List[TrialRecord], min_completed: int, stopped: bool = False) -> Optional[str]:
    """Why a search with these trials fails (None: it passes): fewer completed than `min_completed`
    asks (0: every trial but the diverged ones, and at least one)."""
    completed = [record for record in trials if record.status == COMPLETED]
    if min_completed == 0:
        passed = completed and all(record.status != FAILED for record in trials)
        rule = "every trial to complete or diverge, and at least one to complete (tuner.min_completed_trials=0)"
    else:
        passed = len(completed) >= min_completed
        rule = f"at least {min_completed} completed trials (tuner.min_completed_trials)"
    if passed:
        return None
    failed = "; ".join(f"trial {record.trial_id} {record.status} with {_values(record.values)}: {record.error}"
                       for record in trials if record.status != COMPLETED)
    return (f"the search {'was stopped' if stopped else 'failed'}: {len(completed)} of {len(trials)} trials "
            f"completed, and it needs {rule}; no hyperparameters are handed to the Trainer. {failed}")


# A model that has learned nothing but the class shares scores about ln(classes) (1.386 for four nearly
# balanced classes); a best trial above this share of it left that plateau barely or not at all.
PLATEAU_SHARE = 0.9


def learned_nothing(best: TrialRecord) -> bool:
    return best.objective > PLATEAU_SHARE * math.log(contract.NUM_CLASSES)


def summary_line(trials: List[TrialRecord]) -> str:
    """The search in one line: the best trial, its objective and values, how many trials completed, and
    a warning when no trial learned enough for the search to tell its values apart."""
    completed = [record for record in trials if record.status == COMPLETED]
    [best] = [record for record in trials if record.best]
    line = (f"best trial {best.trial_id} of {len(trials)} ({len(completed)} completed, "
            f"{sum(record.seconds for record in trials):.0f} s): {OBJECTIVE} {best.objective:.4f} "
            f"with {_values(best.values)}")
    if learned_nothing(best):
        line += (f"; WARNING: no trial learned (every {OBJECTIVE} above {PLATEAU_SHARE} x ln "
                 f"{contract.NUM_CLASSES} = {PLATEAU_SHARE * math.log(contract.NUM_CLASSES):.3f}, near what "
                 f"guessing the class shares scores), so the search could not tell its values apart: give "
                 f"trials more epochs (tuner.epochs_per_trial)")
    return line


def _values(values: Dict[str, object]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items())


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _last_line(message: Optional[str]) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
    settings = trainer_lib.settings_from(fn_args.custom_config)
    tuning = read(TunerSettings, fn_args.custom_config[TUNER_KEY], f"custom_config[{TUNER_KEY!r}]")
    if not fn_args.transform_graph_path:
        raise ValueError("the Tuner needs Transform's graph (its transform_graph input)")
    transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    splits = trainer_lib.read_splits(fn_args)
    tuner = TfKerasTuner(make_oracle(tuning, settings.training.seed), settings,
                         lambda trial_settings, replicas: trainer_lib.datasets(splits, transform_output,
                                                                               trial_settings, replicas),
                         epochs=tuning.epochs_per_trial, directory=os.path.join(fn_args.working_dir, "search"),
                         min_completed=tuning.min_completed_trials)
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={})


def write_results(tuner: TfKerasTuner, output_dict) -> str:
    """TFX's best_hyperparameters.txt and tuner_results.json (the formats of tfx/components/tuner/executor.py)
    and every trial's record; returns the search's summary line, also set on the tuner_results artifact."""
    trials = tuner.trials()
    [best] = [record for record in trials if record.best]
    best_values = tuner.oracle.trials[best.trial_id].hyperparameters
    best_dir = artifact_utils.get_single_uri(output_dict[standard_component_specs.BEST_HYPERPARAMETERS_KEY])
    [results] = output_dict[standard_component_specs.TUNER_RESULTS_KEY]
    io_utils.write_string_file(os.path.join(best_dir, tfx_tuner._DEFAULT_BEST_HP_FILE_NAME),
                               json.dumps(best_values.get_config()))
    completed = sorted((record for record in trials if record.status == COMPLETED), key=lambda r: r.objective)
    io_utils.write_string_file(os.path.join(results.uri, tfx_tuner._DEFAULT_TUNER_RESULTS_FILE_NAME), json.dumps(
        [{"trial_id": record.trial_id, "score": record.objective, **tuner.oracle.trials[record.trial_id]
          .hyperparameters.values} for record in completed]))
    io_utils.write_string_file(os.path.join(results.uri, contract.TUNER_TRIALS_FILE),
                               json.dumps([dataclasses.asdict(record) for record in trials], indent=1))
    line = summary_line(trials)
    results.set_string_custom_property(contract.TUNER_SEARCH, line)
    return line


class TunerExecutor(tfx_tuner.Executor):
    """TFX's Tuner executor with this module's judgement of the search and its files (see the module's text)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        if tfx_tuner.get_tune_args(exec_properties):  # as TFX's: parallel trials are Vertex's Tuner's
            raise ValueError("TuneArgs is not supported by this Tuner's Executor.")
        tuner = tfx_tuner.search(input_dict, exec_properties, self._get_tmp_dir())  # SearchFailed: too few completed
        logging.info("Tuner: %s", write_results(tuner, output_dict))


class Tuner(tfx.components.Tuner):
    """TFX's Tuner component, run by TunerExecutor."""
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(TunerExecutor)
