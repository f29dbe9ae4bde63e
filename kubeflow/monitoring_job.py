"""`cxr kfp compile --job monitoring`: `cxr monitor` as a Kubeflow Pipelines pipeline of one task, for a
recurring run (`cxr kfp schedule --package build/monitoring.yaml --cron ...`).

Each run judges the monitoring.lookback_s of logged requests (monitoring.logs_root, where the log
proxies write) that end at the run's scheduled time, KFP's {{$.pipeline_job_schedule_time_utc}}.
Backends before kubeflow/pipelines#13473 pass that placeholder through unresolved (issue #12616,
KFP 2.15): then the span ends when the task starts. Each served version's training split and test
answers come from the pipeline run that pushed it, in ML Metadata (pipeline/served_versions.py), as
for `cxr monitor`. The task writes monitoring.json, the page and the queue of images to label under
<pipeline_root>/monitoring/<KFP run id>/, and hands KFP's UI the page (HTML) and the distances (Metrics).
An alarm does not fail the run: it is the `alarm` metric and the page's verdict.
"""
import functools
import math
import os
from typing import Dict

from google.protobuf import json_format
from kfp import compiler, dsl
from kfp.pipeline_spec import pipeline_spec_pb2

from cxr.kubeflow.kfp_pipeline import NO_CHANGES, TASK_COMMAND, config_args, default_pipeline_root, mount_volumes
from cxr.kubeflow.ui_outputs import output_artifact, write_executor_output
from cxr.pipeline.config import PipelineConfig, to_json

METRICS, PAGE = "metrics", "page"  # the task's outputs
MONITORING_DIR = "monitoring"  # under the pipeline root, one folder per run


def compile_monitoring(config: PipelineConfig, path: str) -> None:
    """The monitoring job's spec; runner.compile_pipeline has checked the configuration."""
    compiler.Compiler().compile(_pipeline_function(config), path)


def _pipeline_function(config: PipelineConfig):
    settings, compiled_config = config.kubeflow, to_json(config)

    def cxr_monitoring(config: str = NO_CHANGES):  # the parameter's name is settings.CONFIG_PARAMETER
        task = _monitor_component(settings.image)(
            compiled_config=compiled_config, config=config, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, until=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER)
        task.set_display_name("cxr monitor").set_caching_options(False)
        # Every volume, the served models' too: the monitor reads each served version (kfp-kubernetes cannot
        # mount a claim read-only); it is the one task but the Pusher's that mounts it.
        mount_volumes(task, settings.mounts())

    return dsl.pipeline(name=f"{config.name}-monitoring", pipeline_root=default_pipeline_root(config), description=(
        "cxr monitor on the served model's request log: skew against training, drift, answers"))(cxr_monitoring)


@functools.lru_cache(maxsize=None)
def _monitor_component(image: str):
    def cxr_monitor(compiled_config: str, config: str, run_id: str, until: str, metrics: dsl.Output[dsl.Metrics],
                    page: dsl.Output[dsl.HTML]):
        return dsl.ContainerSpec(image=image, command=TASK_COMMAND, args=[
            "monitor", "--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,
            *config_args(compiled_config, config), "--run-id", run_id, "--until", until])
    return dsl.container_component(cxr_monitor)


def run_monitoring(config: PipelineConfig, metadata_connection, run_id: str, until_text: str,
                   executor_input_json: str) -> dict:
    from cxr.monitoring.moments import monitored_span
    from cxr.monitoring.monitor import PAGE as PAGE_FILE, monitor, prune_old_files
    from cxr.monitoring.page import render as render_page
    from cxr.pipeline.served_versions import sources_from_metadata

    executor_input = json_format.Parse(executor_input_json, pipeline_spec_pb2.ExecutorInput())
    settings = config.monitoring
    since, until = monitored_span(None, until_text, settings.lookback_s)
    out_dir = os.path.join(config.pipeline_root, MONITORING_DIR, run_id)
    # Earlier runs' queues and pages hold patient images too: each run enforces their retention.
    removed = prune_old_files(os.path.join(config.pipeline_root, MONITORING_DIR), settings.retention_days)
    result = monitor(os.path.join(config.serving_dir, config.model_name), sources_from_metadata(metadata_connection),
                     since, until, settings, out_dir)
    result["earlier_runs_files_removed_by_retention"] = removed
    metrics = output_artifact(dsl.Metrics, executor_input, METRICS)
    for name, value in monitoring_metrics(result).items():
        metrics.log_metric(name, value)
    page = output_artifact(dsl.HTML, executor_input, PAGE)
    if settings.kfp_page_images:
        _copy(os.path.join(out_dir, PAGE_FILE), page.path)
    else:  # KFP's UI and artifact store: the page without the served images (monitoring.kfp_page_images)
        with open(page.path, "w", encoding="utf-8") as f:
            f.write(render_page(result, {}))
    write_executor_output(executor_input.outputs.output_file, {METRICS: metrics}, files={PAGE: page})
    return result


def monitoring_metrics(result: dict) -> Dict[str, float]:
    """Counts, the alarm (1 or 0), and over the judged windows each check's largest distance per feature and the
    embedding test's smallest p-value."""
    judged = [window for window in result["windows"] if window["judged"]]
    values = {"alarm": float(result["alarm"]), "logged images": float(result["logged_images"]),
              "windows": float(len(result["windows"])), "windows judged": float(len(judged)),
              "windows alarmed": float(sum(window["alarm"] for window in judged)),
              "queued for labelling": float(result.get("queued_for_labelling", 0))}
    for window in judged:
        for finding in window["findings"]:
            if finding["p_value"] is not None:
                name = f"{finding['check']} p-value"
                values[name] = min(values.get(name, math.inf), finding["p_value"])
            elif finding["distance"] is not None:
                name = f"{finding['check']} {finding['feature']}"
                values[name] = max(values.get(name, -math.inf), finding["distance"])
    return values


def _copy(source: str, destination: str) -> None:
    import tensorflow as tf
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    tf.io.gfile.copy(source, destination, overwrite=True)
