"""The run in Kubeflow Pipelines' UI: its evaluation as a `Metrics` and a `ClassificationMetrics` artifact,
and the run report (pipeline/report/, what `cxr report` writes) as an `HTML` artifact.

The task reads the finished run back from ML Metadata (the TFMA result the Evaluator wrote) and
answers as a KFP container does: each artifact's file at its local path, and the artifacts'
metadata in the ExecutorOutput file named by the ExecutorInput (backend/src/v2/component/
launcher_v2.go reads it with a strict protojson.Unmarshal into ExecutorOutput and records the
metadata in ML Metadata, which the UI shows).
"""
import json
import math
import os
import shutil
import tempfile
from typing import Dict

from google.protobuf import json_format
from kfp import dsl
from kfp.pipeline_spec import pipeline_spec_pb2

from cxr.components import artifacts
from cxr.contract import LABELS, Nodes, metric_sub_key
from cxr.pipeline.config import PipelineConfig
from cxr.pipeline.metadata_reader import RunSummary, read_run

METRICS, CONFUSION_MATRIX, REPORT = "metrics", "confusion_matrix", "report"  # the outputs (kfp_pipeline.py)


def write_ui_outputs(config: PipelineConfig, metadata_connection, run_id: str, executor_input_json: str) -> None:
    executor_input = json_format.Parse(executor_input_json, pipeline_spec_pb2.ExecutorInput())
    summary, outputs = read_run(metadata_connection, run_id)
    metrics = output_artifact(dsl.Metrics, executor_input, METRICS)
    for name, value in run_metrics(summary).items():
        metrics.log_metric(name, value)
    confusion = output_artifact(dsl.ClassificationMetrics, executor_input, CONFUSION_MATRIX)
    evaluation = outputs.get(Nodes.EVALUATOR, {}).get("evaluation")
    if evaluation is not None:
        confusion.log_confusion_matrix(list(LABELS), artifacts.confusion_matrix(evaluation.uri))
    report = output_artifact(dsl.HTML, executor_input, REPORT)
    _write_report(metadata_connection, run_id, report.path)
    write_executor_output(executor_input.outputs.output_file,
                           {METRICS: metrics, CONFUSION_MATRIX: confusion}, files={REPORT: report})


def run_metrics(summary: RunSummary) -> Dict[str, float]:
    """The overall test metrics, each class's precision and recall, and the verdict (1 blessed, 0 not)."""
    values = {}
    for sub_key, metrics in summary.metrics.items():
        qualifier = _SUB_KEY_NAMES.get(sub_key, sub_key)
        for name, value in metrics.items():
            number = float(value) if value is not None else math.nan  # TFMA writes NaN as "NaN"
            if math.isfinite(number):  # a class never predicted has no precision
                values[_metric_key(name, qualifier)] = number
    if summary.blessed is not None:
        values["blessed"] = float(summary.blessed)
    values["pushed"] = float(summary.pushed_to is not None)
    return values


# TFMA's sub keys as KFP's metric names say them: the class by name.
_SUB_KEY_NAMES = {**{metric_sub_key(class_id): label for class_id, label in enumerate(LABELS)},
                  **{metric_sub_key(class_id, top_k=1): f"{label} topK:1" for class_id, label in enumerate(LABELS)}}


def _metric_key(name: str, qualifier: str) -> str:
    """A metric's name and its sub key's words as one name, the class named unless the metric's name already
    says it: 'gate_recall NORMAL', 'precision/NORMAL topK:1'."""
    return " ".join([name] + [word for word in qualifier.split() if word not in name])


def _write_report(metadata_connection, run_id: str, path: str) -> None:
    from cxr.pipeline.report.collect import collect
    from cxr.pipeline.report.render import write_report
    with tempfile.TemporaryDirectory() as folder:
        index = write_report(collect(metadata_connection, run_id), folder)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(index, path)


def output_artifact(kind, executor_input: pipeline_spec_pb2.ExecutorInput, name: str):
    [runtime] = executor_input.outputs.artifacts[name].artifacts
    return kind(name=runtime.name, uri=runtime.uri, metadata={})


def write_executor_output(path: str, metrics: Dict[str, dsl.Artifact], files: Dict[str, dsl.Artifact]) -> None:
    """The artifacts' metadata for KFP; KFP uploads each artifact's file, so metrics get theirs too."""
    for artifact in metrics.values():
        os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
        with open(artifact.path, "w", encoding="utf-8") as f:
            json.dump(artifact.metadata, f)
    artifacts_by_name = {key: {"artifacts": [{"name": artifact.name, "uri": artifact.uri,
                                              "metadata": artifact.metadata}]}
                         for key, artifact in {**metrics, **files}.items()}
    output = json_format.ParseDict({"artifacts": artifacts_by_name}, pipeline_spec_pb2.ExecutorOutput())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json_format.MessageToJson(output))
