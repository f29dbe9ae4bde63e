"""One node of a compiled pipeline run, through TFX's portable Launcher against ML Metadata.

What TFX's LocalDagRunner does for each node (tfx/orchestration/local/local_dag_runner.py), less its
partial runs, which this project does not use. The local runner launches every node this way in
one process; each Kubeflow task launches its one node this way in its pod (kubeflow/task.py), so
drivers, resolvers, the Importer, caching and publishing behave alike on both.
"""
from typing import Dict, List, Optional

from tfx.dsl.compiler import compiler, constants
from tfx.orchestration import metadata
from tfx.orchestration.local import runner_utils
from tfx.orchestration.portable import launcher, runtime_parameter_utils
from tfx.proto.orchestration import pipeline_pb2

from cxr.pipeline.config import PipelineConfig
from cxr.pipeline.pipeline import create_pipeline


def compile_run(config: PipelineConfig, connection=None, run_id: Optional[str] = None) -> pipeline_pb2.Pipeline:
    """create_pipeline(config) as TFX's IR (the nodes in topological order), for the run with this id."""
    ir = compiler.Compiler().compile(create_pipeline(config, connection))
    if run_id is not None:
        runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
    return ir


def launch_node(ir: pipeline_pb2.Pipeline, node_id: str, connection) -> None:
    """Runs the node `node_id` of the compiled run `ir`, recording it in ML Metadata at `connection`."""
    nodes = {node.pipeline_node.node_info.id: node.pipeline_node for node in ir.nodes}
    if node_id not in nodes:
        raise ValueError(f"the pipeline has no node {node_id!r}; its nodes: {', '.join(nodes)}. Was it compiled "
                         f"from other code than the code running it (another image)?")
    deployment = runner_utils.extract_local_deployment_config(ir)
    launcher.Launcher(
        pipeline_node=nodes[node_id], mlmd_connection=metadata.Metadata(connection),
        pipeline_info=ir.pipeline_info, pipeline_runtime_spec=ir.runtime_spec,
        executor_spec=runner_utils.extract_executor_spec(deployment, node_id),
        custom_driver_spec=runner_utils.extract_custom_driver_spec(deployment, node_id)).launch()


def node_dependencies(config: PipelineConfig) -> Dict[str, List[str]]:
    """{node id: the ids of its upstream nodes}, in the IR's topological order."""
    return {node.pipeline_node.node_info.id: list(node.pipeline_node.upstream_nodes)
            for node in compile_run(config).nodes}
