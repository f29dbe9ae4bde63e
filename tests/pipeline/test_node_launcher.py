"""launch_node: the one way a node runs, for the local runner and for each Kubeflow task."""
import pytest

from cxr.contract import Nodes
from cxr.pipeline.config import load_config
from cxr.pipeline.metadata_reader import sqlite_connection
from cxr.pipeline.node_launcher import compile_run, launch_node


def test_the_compiled_run_lists_the_contract_s_node_ids_in_topological_order(tmp_path):
    ir = compile_run(load_config("demo", overrides=["tuner.enabled=true"]), run_id="run-1")
    order = [node.pipeline_node.node_info.id for node in ir.nodes]
    declared = {value for name, value in vars(Nodes).items() if name.isupper()}
    assert declared <= set(order)  # the names other modules look nodes up by are the pipeline's own
    for position, node in enumerate(ir.nodes):
        assert all(order.index(upstream) < position for upstream in node.pipeline_node.upstream_nodes)
    assert "run-1" in str(ir.runtime_spec.pipeline_run_id)


def test_a_node_the_compiled_pipeline_lacks_is_refused_by_name_before_anything_runs(tmp_path):
    connection = sqlite_connection(str(tmp_path / "metadata.sqlite"))
    with pytest.raises(ValueError, match=r"no node 'Trainr'; its nodes: ImportExampleGen, .*Trainer.*another image"):
        launch_node(compile_run(load_config("demo"), connection, "run-1"), "Trainr", connection)
    assert not (tmp_path / "metadata.sqlite").exists()
