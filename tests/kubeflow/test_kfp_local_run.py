"""The compiled `--target kfp` pipeline, run as a cluster runs it (kfp_local.py): each task in its own
process of the pipeline image's environment (image_env.py), state in ML Metadata. One compiled spec,
two runs: the second, after span 2 lands, reads span 2 with no recompile, is judged against the first
run's blessed model, and pushes again. Then the monitoring job judges what the pushed model served."""
import dataclasses
import datetime
import json
import os

import pytest

from cxr.kubeflow.cluster_checks import check_package
from cxr.kubeflow.runner import compile_pipeline
from cxr.components.settings import TRAINER_KEY
from cxr.pipeline.metadata_reader import execution_properties, read_run, sqlite_connection
from cxr.pipeline.pipeline import create_pipeline
from helpers import ORCHESTRATION_ONLY, latest_artifact_uris, serve_and_log, tiny_pipeline_config
from kfp_local import Zygote, file_of, metadata_of, run_package

pytestmark = pytest.mark.slow



def _span_read(summary_outputs) -> int:
    return summary_outputs["ImportExampleGen"]["examples"].custom_properties["span"].int_value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, image):
    """A volume mounted at the same path in every task, the served models' inside it (the Pusher's task alone
    mounts that one), and the pipeline compiled once for them."""
    volume = tmp_path_factory.mktemp("cxr-volume")
    (volume / "serving").mkdir()
    config = tiny_pipeline_config(
        volume, "name=cxr-local-cluster", "kubeflow.image=registry.example.com/cxr-pipeline:test",
        f'kubeflow.volumes=["cxr-data:{volume}", "cxr-models:{volume / "serving"}"]',
        "kubeflow.metadata_grpc=sqlite", "kubeflow.trainer_gpus=0", *ORCHESTRATION_ONLY)
    package = compile_pipeline(config, "kfp", str(tmp_path_factory.mktemp("compiled")))
    check_package(package)
    with Zygote(image) as zygote:
        yield volume, config, package, zygote


@pytest.fixture(scope="module")
def first_run(cluster, tmp_path_factory, tiny_span):
    """Span 1 run as a cluster runs it, and pushed: where each test starts, whichever runs first or alone."""
    volume, _, package, zygote = cluster
    tiny_span(volume / "tfrecords", span=1, seed=3)
    # One task starts as a new process, exactly as its container's command line says; the rest fork.
    first = run_package(package, str(tmp_path_factory.mktemp("kfp-root")), zygote, fresh_processes={"curated-schema"})
    assert first.succeeded, first.failures()
    return first


def test_two_runs_of_one_compiled_spec_train_on_the_newest_span_and_push(cluster, first_run, tmp_path, tiny_span):
    volume, config, package, zygote = cluster
    first = first_run
    nodes = {component.id for component in create_pipeline(config).components}
    assert set(first.tasks) == {_task_name(node) for node in nodes} | {"kfp-ui-outputs"}

    summary, outputs = read_run(sqlite_connection(config.metadata_path), first.run_id)
    assert summary.run_id == first.run_id  # ML Metadata groups the tasks under KFP's run id
    assert set(summary.statuses) == nodes and set(summary.statuses.values()) == {"COMPLETE"}, summary.statuses
    assert _span_read(outputs) == 1 and summary.pushed_to
    metrics = metadata_of(first.tasks["kfp-ui-outputs"], "metrics")
    assert metrics["sparse_categorical_accuracy"] == pytest.approx(summary.metrics[""]["sparse_categorical_accuracy"])
    assert metrics["pushed"] == 1.0
    confusion = metadata_of(first.tasks["kfp-ui-outputs"], "confusion_matrix")["confusionMatrix"]
    assert sum(map(sum, (row["row"] for row in confusion["rows"]))) == summary.metrics[""]["example_count"]
    report = file_of(first.tasks["kfp-ui-outputs"], "report")
    assert f"cxr run {first.run_id} (span 1)" in report and "<img src='data:image/png;base64," in report

    tiny_span(volume / "tfrecords", span=2, seed=5)
    # As a KFP 2.0-2.4 backend runs it: the run id placeholder stays unresolved, every task records under the
    # run's workflow name, and the report still takes the run id `cxr kfp submit` printed.
    # Its config parameter changes one setting: every other is the compiled one (the name, the root, the folders).
    metadata = sqlite_connection(config.metadata_path)
    epochs = config.training.epochs + 1
    second = run_package(package, str(tmp_path / "kfp-root"), zygote, kfp_version=(2, 4), metadata=metadata,
                         params={"config": json.dumps({"training": {"epochs": epochs}})})
    assert second.succeeded, second.failures()
    summary_2, outputs_2 = read_run(metadata, second.run_id)
    trained_with = json.loads(execution_properties(metadata, summary_2.run_id)["Trainer"]["custom_config"])
    assert trained_with[TRAINER_KEY]["training"]["epochs"] == epochs
    assert trained_with[TRAINER_KEY]["model"] == json.loads(json.dumps(dataclasses.asdict(config.model)))
    assert summary_2.run_id != second.run_id and second.run_id not in summary_2.run_id
    assert _span_read(outputs_2) == 2 and summary_2.pushed_to and summary_2.pushed_to != summary.pushed_to
    # The Resolver found the first run's blessed model, and the Evaluator judged the new one against it.
    assert latest_artifact_uris(config, "Evaluator", "baseline_model", output=False) == [
        outputs["Trainer"]["model"].uri]
    confusion_2 = metadata_of(second.tasks["kfp-ui-outputs"], "confusion_matrix")["confusionMatrix"]
    assert sum(map(sum, (row["row"] for row in confusion_2["rows"]))) == summary_2.metrics[""]["example_count"]
    assert sorted(os.listdir(volume / "serving" / "cxr")) == sorted(
        os.path.basename(path) for path in (summary.pushed_to, summary_2.pushed_to))


def _task_name(node_id: str) -> str:
    return node_id.lower().replace("_", "-")


def test_the_monitoring_job_judges_the_served_version_s_requests_against_the_run_that_pushed_it(cluster, first_run,
                                                                                              tmp_path):
    # The newest pushed version serves and logs to the volume; the monitoring job,
    # compiled once and run as a scheduled run, finds that version's training split and test answers in ML
    # Metadata and hands KFP's UI its page and distances.
    volume, config, _, zygote = cluster
    summary, _ = read_run(sqlite_connection(config.metadata_path))
    version = os.path.basename(summary.pushed_to)
    logs = volume / "request-logs"
    serve_and_log(str(volume / "serving" / "cxr"), str(logs), requests=32)
    monitoring = dataclasses.replace(config, monitoring=dataclasses.replace(
        config.monitoring, logs_root=str(logs), lookback_s=7200.0, window_s=3600.0))
    package = compile_pipeline(monitoring, "kfp", str(tmp_path / "compiled"), job="monitoring")
    check_package(package)
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
    for schedule_time in (end.strftime("%Y-%m-%dT%H:%M:%SZ"), None):  # resolved, and as KFP up to 2.15 leaves it
        run = run_package(package, str(tmp_path / "kfp-root"), zygote, schedule_time=schedule_time)
        assert run.succeeded, run.failures()
        metrics = metadata_of(run.tasks["cxr-monitor"], "metrics")
        assert metrics["logged images"] == 32 and metrics["windows"] == 2 and metrics["windows judged"] == 1
        assert {"skew pixel_mean", "answers predicted_class", "embedding p-value"} <= set(metrics), metrics
        shown = file_of(run.tasks["cxr-monitor"], "page")
        assert "The model's answers against its answers on the test split" in shown
        assert "data:image/png;base64," not in shown  # KFP's copy: no served image (monitoring.kfp_page_images)
        with open(os.path.join(config.pipeline_root, "monitoring", run.run_id, "monitoring.json")) as f:
            judged = json.load(f)["versions"][version]
        assert judged["from"] == f"pipeline run {summary.run_id}" and judged["test_answers"]

