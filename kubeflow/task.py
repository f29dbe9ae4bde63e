"""What each task of the compiled Kubeflow pipeline runs in the pipeline image.

    python -m cxr.kubeflow.task node --node-id Trainer --compiled-config '<json>' --config '<json>' --run-id <id>
    python -m cxr.kubeflow.task outputs --executor-input '<json>' --compiled-config ... --config ... --run-id <id>
    python -m cxr.kubeflow.task monitor --executor-input '<json>' --compiled-config ... --config ... --run-id <id>
        --until <time>

Every task first builds the run's configuration: the compiled one with the run's `config` parameter
merged onto it, checked as compiling checks it (cluster_checks.run_configuration); a task whose
configuration the cluster could not run fails before it runs anything.

`node` runs one TFX node. The task rebuilds
`create_pipeline(config)` with the code in the image, compiles it to TFX's IR and runs that one
node with TFX's portable launcher against ML Metadata, as LocalDagRunner does for every node (and
as TFX's former Kubeflow container entrypoint did in each pod). So the node's driver (ExampleGen's
span resolution and fingerprint), the Resolver, the Importer, caching and publishing behave as on
the local runner. All tasks of one run share KFP's run id as TFX's pipeline run id.

`outputs` reads the finished run from ML Metadata and hands KFP's UI the evaluation as `Metrics`
and `ClassificationMetrics`, and the run report as `HTML` (kubeflow/ui_outputs.py).

`monitor` is the monitoring job's one task (kubeflow/monitoring_job.py): `cxr monitor` on the span
that ends at --until, the page and the distances for KFP's UI.
"""
import argparse
import os
import sys
from typing import List, Mapping, Optional

from absl import logging

from cxr.kubeflow.cluster_checks import run_configuration
from cxr.kubeflow.settings import MONITORING, SQLITE_METADATA, TRAINING
from cxr.pipeline.config import PipelineConfig, from_json
from cxr.pipeline.kfp_runs import argo_workflow_of_pod

RUN_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.set_verbosity(logging.INFO)
    compiled = from_json(args.compiled_config, origin="the compiled configuration (--compiled-config)")
    config = run_configuration(compiled, args.config, job=MONITORING if args.step == "monitor" else TRAINING)
    run_id = pipeline_run_id(args.run_id, os.environ)
    if args.step == "node":
        run_node(config, args.node_id, run_id)
    elif args.step == "monitor":
        from cxr.kubeflow.monitoring_job import run_monitoring
        run_monitoring(config, metadata_connection(config), run_id, args.until, args.executor_input)
    else:
        from cxr.kubeflow.ui_outputs import write_ui_outputs
        write_ui_outputs(config, metadata_connection(config), run_id, args.executor_input)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr.kubeflow.task", description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    node = steps.add_parser("node", help="run one TFX node of the pipeline")
    node.add_argument("--node-id", required=True)
    outputs = steps.add_parser("outputs", help="write the run's evaluation for KFP's UI")
    monitor = steps.add_parser("monitor", help="judge the served model's logged requests (the monitoring job)")
    monitor.add_argument("--until", required=True, help="the span's end: KFP's schedule time, or its placeholder "
                                                        "unresolved (then now)")
    for step in (outputs, monitor):
        step.add_argument("--executor-input", required=True, help="KFP's {{$}}: the task's ExecutorInput as JSON")
    for step in (node, outputs, monitor):
        step.add_argument("--compiled-config", required=True, help="the compiled PipelineConfig as JSON")
        step.add_argument("--config", required=True, help="the run's config parameter: the settings it changes, "
                                                          "as a JSON object ({} for none)")
        step.add_argument("--run-id", required=True, help=f"KFP's {RUN_ID_PLACEHOLDER}")
    return parser


def pipeline_run_id(run_id: str, environ: Mapping[str, str]) -> str:
    """KFP's run id; on KFP backends before 2.5, which pass the placeholder through unresolved, the
    Argo workflow's name, the prefix of every pod name of the run (KFP_POD_NAME)."""
    if run_id and "{{" not in run_id:
        return run_id
    pod = environ.get("KFP_POD_NAME", "")
    workflow = argo_workflow_of_pod(pod)
    if not workflow:
        raise RuntimeError(f"no pipeline run id: --run-id is {run_id!r} and KFP_POD_NAME ({pod!r}) is not an "
                           f"Argo pod name of a KFP run")
    logging.info("KFP left %s unresolved (backend before 2.5): the run id is the workflow name %s", run_id, workflow)
    return workflow


def metadata_connection(config: PipelineConfig):
    """ML Metadata as the configuration names it: KFP's gRPC service, or the SQLite file at metadata_path."""
    from cxr.pipeline.metadata_reader import grpc_connection, sqlite_connection
    if config.kubeflow.metadata_grpc == SQLITE_METADATA:
        return sqlite_connection(config.metadata_path)
    return grpc_connection(config.kubeflow.metadata_grpc)


def run_node(config: PipelineConfig, node_id: str, run_id: str) -> None:
    from cxr.pipeline.metadata_reader import describe, read_run
    from cxr.pipeline.node_launcher import compile_run, launch_node

    connection = metadata_connection(config)
    ir = compile_run(config, connection, run_id)
    logging.info("running %s of pipeline run %s", node_id, run_id)
    launch_node(ir, node_id, connection)
    # The launcher returns quietly when the node's inputs could not be resolved (it records a failed
    # execution, or none): on Kubeflow that must fail the task, or the run would go on without it.
    status = read_run(connection, run_id)[0].statuses.get(node_id)
    if status not in ("COMPLETE", "CACHED"):
        raise RuntimeError(f"{node_id} ended {status or 'without running'} in pipeline run {run_id}: its inputs "
                           f"could not be resolved from ML Metadata at {describe(connection)} (see the log above)")
    logging.info("%s %s", node_id, status)


if __name__ == "__main__":
    sys.exit(main())
