"""The end-of-run summary `cxr run` prints: component statuses, the gate's verdict, metrics, push."""
from cxr.components.evaluation import GATE_RECALL, class_metric_name
from cxr.contract import LABELS
from cxr.pipeline.metadata_reader import RunSummary

EXIT_FAILED = 1
EXIT_NOT_BLESSED = 3
EXIT_INTERRUPTED = 130  # as shells report a command ended by Ctrl-C


def format_summary(summary: RunSummary) -> str:
    lines = ["", f"run {summary.run_id}, components:"]
    for node in summary.components or list(summary.statuses):
        lines.append(f"  {node:<22} {summary.statuses.get(node, 'NOT RUN')}")
    if summary.error:
        lines += ["", f"FAILED: {summary.error}"]
    if "DriftCheck" in summary.statuses:
        lines += ["", *_drift_lines(summary)]
    if summary.metrics:
        lines += ["", *_metric_table(summary.metrics)]
    lines.append("")
    if summary.blessed:
        lines.append("BLESSED: the model passed every threshold of the gate")
    elif summary.blessed is False:
        lines.append("NOT BLESSED: the model failed the gate and was not pushed:")
        lines += [f"  - {failure}" for failure in summary.failed_thresholds]
    if summary.serving_check:
        verdict = "passed" if summary.serving_check_passed else "FAILED, so nothing is pushed"
        lines.append(f"serving check {verdict}: {summary.serving_check}")
    lines.append(f"pushed to: {summary.pushed_to}" if summary.pushed_to else "pushed: nothing")
    return "\n".join(lines)


def _metric_table(metrics) -> list:
    overall = metrics.get("", {})
    lines = [f"test split: {int(overall.get('example_count', 0))} examples, "
             f"accuracy {_number(overall.get('sparse_categorical_accuracy'))}",
             f"  {'class':<20} {'precision':>9} {'recall':>7} {'AUC':>6} {'gate recall':>11}"]
    for class_id, name in enumerate(LABELS):
        argmax = metrics.get(f"classId:{class_id} topK:1", {})
        binarized = metrics.get(f"classId:{class_id}", {})
        lines.append(f"  {name:<20} {_number(argmax.get(class_metric_name('precision', name))):>9} "
                     f"{_number(argmax.get(class_metric_name('recall', name))):>7} "
                     f"{_number(binarized.get('auc')):>6} {_number(binarized.get(GATE_RECALL)):>11}")
    return lines


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def _drift_lines(summary: RunSummary) -> list:
    if summary.drift_baseline_span is None:
        return ["drift: no earlier statistics to compare with"]
    if not summary.drift:
        return [f"drift against span {summary.drift_baseline_span}: within the thresholds"]
    return [f"DRIFT against span {summary.drift_baseline_span}:", *[f"  - {line}" for line in summary.drift]]
