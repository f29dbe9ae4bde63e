"""The Evaluator's configuration: the gate's thresholds go in, and the report reads them back from a run."""
import tensorflow_model_analysis as tfma
from google.protobuf import json_format

from cxr.components.evaluation import eval_config, gate_of
from cxr.components.settings import GateSettings


def test_the_thresholds_read_back_from_the_recorded_config_are_the_gate_given():
    gate = GateSettings(min_accuracy=0.61, min_class_recall=0.32, max_accuracy_regression=0.04)
    # TFX records eval_config in ML Metadata as JSON; the report parses it back from there.
    recorded = json_format.Parse(json_format.MessageToJson(eval_config(gate)), tfma.EvalConfig())
    assert gate_of(recorded) == {"min_accuracy": 0.61, "min_class_recall": 0.32, "max_accuracy_regression": 0.04}
