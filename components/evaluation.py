"""The TFMA configuration: what is measured on the test split, how it is sliced, and the gate."""
import tensorflow_model_analysis as tfma
from google.protobuf import wrappers_pb2

from cxr import contract
from cxr.components.settings import GateSettings
from cxr.contract import CLASS_ID, GATE_RECALL, LABELS, class_metric_name

# Per-class precision and recall of the arg-max prediction: top_k 1 at threshold 0.
ARGMAX = '"top_k": 1, "thresholds": [0.0]'
# The gate's per-class recall (contract.GATE_RECALL) counts a case as found when its class gets a
# probability above 0.5, which implies the arg-max, so it is never above the
# arg-max recall. TFMA 0.47 cannot attach thresholds to the top_k metrics (their
# sub keys carry top_k, the thresholds' do not), so the gate uses this one.
SLICES = ([], [contract.SOURCE], [contract.LABEL])


def eval_config(gate: GateSettings) -> tfma.EvalConfig:
    accuracy_gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_accuracy}),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -gate.max_accuracy_regression}))
    recall_gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_class_recall}))
    metrics = [tfma.MetricConfig(class_name="ExampleCount"),
               tfma.MetricConfig(class_name="SparseCategoricalAccuracy", per_slice_thresholds=[_overall(accuracy_gate)]),
               tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot")]
    for class_id, class_name in enumerate(LABELS):
        metrics += [_per_class("Precision", class_id, class_name), _per_class("Recall", class_id, class_name)]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=contract.EXAMPLES_SIGNATURE,
                                    preprocessing_function_names=[contract.TRANSFORM_SIGNATURE],
                                    label_key=CLASS_ID, prediction_key=contract.PROBABILITIES)],
        slicing_specs=[tfma.SlicingSpec(feature_keys=keys) for keys in SLICES],
        # Only the metrics above: a Keras model's compiled loss and accuracy, which TFMA adds by default,
        # load the SavedModel again in each of its combiners (evaluators/keras_util.py, setup): twelve loads
        # for a candidate and a baseline, half the Evaluator's time (bench/RESULTS.md, "Test suite").
        options=tfma.Options(include_default_metrics=wrappers_pb2.BoolValue(value=False)),
        metrics_specs=[
            tfma.MetricsSpec(metrics=metrics),
            tfma.MetricsSpec(binarize=tfma.BinarizationOptions(class_ids={"values": list(range(contract.NUM_CLASSES))}),
                             metrics=[tfma.MetricConfig(class_name="AUC"),
                                      tfma.MetricConfig(class_name="Recall", config='{"name": "%s"}' % GATE_RECALL,
                                                        per_slice_thresholds=[_overall(recall_gate)])]),
        ])


def gate_of(config: tfma.EvalConfig) -> dict:
    """The thresholds eval_config(gate) put into `config`: min_accuracy, max_accuracy_regression, min_class_recall."""
    thresholds = {}
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                threshold = per_slice.threshold
                if metric.class_name == "SparseCategoricalAccuracy":
                    thresholds["min_accuracy"] = threshold.value_threshold.lower_bound.value
                    thresholds["max_accuracy_regression"] = -threshold.change_threshold.absolute.value
                elif GATE_RECALL in metric.config:
                    thresholds["min_class_recall"] = threshold.value_threshold.lower_bound.value
    return thresholds


def _per_class(metric: str, class_id: int, class_name: str) -> tfma.MetricConfig:
    name = class_metric_name(metric.lower(), class_name)
    return tfma.MetricConfig(class_name=metric, config='{"class_id": %d, %s, "name": "%s"}' % (class_id, ARGMAX, name))


def _overall(threshold: tfma.MetricThreshold) -> tfma.PerSliceMetricThreshold:
    """The gate judges the whole test split; the source and label slices are for reading."""
    return tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
