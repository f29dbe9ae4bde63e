"""What Kubeflow Pipelines' API server and Argo compiler refuse of a compiled pipeline and of a run.

The one home of these rules: `cxr kfp submit` / `schedule` check a package with them before
connecting (cluster_checks.check_package), and the tests' fake KFP server
(tests/kubeflow/fake_kfp_server.py) refuses with them. Each follows KFP's backend (kubeflow/pipelines,
tags 2.0.5 to 2.5.0), its messages too:
- `template_problems`: backend/src/apiserver/template/v2_template.go, NewV2SpecTemplate (the spec
  parses strictly, schemaVersion is 2.1.0, a root component), and common/utils.go,
  ValidatePipelineName, called on upload by resource/resource_manager.go (^[a-z0-9][a-z0-9-]{0,127}$);
- `compiler_problems`: backend/src/v2/compiler/visitor.go and argocompiler/dag.go: container and
  importer executors only ("resolver executors not implemented", "custom job executors is Google
  Cloud only"); no container lifecycle hook is read, so a TFX driver attached as
  `lifecycle.preCacheCheck` (KubeflowV2DagRunner's ExampleGen) would silently not run;
- `job_input_problems`: v2_template.go, validatePipelineJobInputs: every root parameter neither
  optional nor defaulted is given, none the pipeline does not declare, each of its declared type
  (protojson reads runtime_config.parameters into structpb.Value: a bool is no number there);
- `max_concurrency_problem`: server/api_converter.go, toModelJob: a recurring run's 1 to 10.
"""
import re
from typing import Dict, List, Mapping, Optional

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

SCHEMA_VERSION = "2.1.0"
MAX_CONCURRENCY = 10
PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")

ParameterType = pipeline_spec_pb2.ParameterType
ExecutorSpec = pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec

# What validatePipelineJobInputs accepts for each declared type, and how it names the type in its refusal.
_VALUE_TYPES = {
    ParameterType.STRING: ((str,), "string", "string"),
    ParameterType.NUMBER_INTEGER: ((int, float), "double or integer", "number"),
    ParameterType.NUMBER_DOUBLE: ((int, float), "double or integer", "number"),
    ParameterType.BOOLEAN: ((bool,), "bool", "bool"),
    ParameterType.LIST: ((list, tuple), "list", "list"),
    ParameterType.STRUCT: ((dict,), "struct", "struct"),
}


def parse_spec(document: dict) -> pipeline_spec_pb2.PipelineSpec:
    """The PipelineSpec of a package's first YAML document, parsed strictly as the API server parses it."""
    return json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())


def template_problems(spec: pipeline_spec_pb2.PipelineSpec) -> List[str]:
    problems = []
    if spec.schema_version != SCHEMA_VERSION:
        problems.append(f"KFP only supports schema version {SCHEMA_VERSION}, but the pipeline spec has version "
                        f"{spec.schema_version or '(none)'}")
    if not PIPELINE_NAME.match(spec.pipeline_info.name):
        problems.append(f"pipeline name {spec.pipeline_info.name!r}: it must contain only lowercase alphanumeric "
                        f"characters or '-' and must start with alphanumeric characters")
    if not spec.HasField("root") or not spec.root.dag.tasks:
        problems.append("root component is empty")
    return problems


def compiler_problems(spec: pipeline_spec_pb2.PipelineSpec) -> List[str]:
    problems = []
    for label, executor in executors(spec).items():
        kind = executor.WhichOneof("spec")
        if kind != "container":
            problems.append(f"executor {label}: {kind} executors are not implemented by KFP's Argo compiler; "
                            f"container executors only")
        elif executor.container.HasField("lifecycle"):
            problems.append(f"executor {label}: KFP ignores container lifecycle hooks, so its "
                            f"{', '.join(f.name for f, _ in executor.container.lifecycle.ListFields())} would not run")
    return problems


def executors(spec: pipeline_spec_pb2.PipelineSpec) -> Dict[str, ExecutorSpec]:
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return dict(deployment.executors)


def job_input_problems(spec: pipeline_spec_pb2.PipelineSpec, params: Mapping[str, object]) -> List[str]:
    declared = spec.root.input_definitions.parameters
    problems = [f"parameter {name} is not optional, yet has neither default value nor user provided value"
                for name, parameter in declared.items()
                if name not in params and not parameter.is_optional and not parameter.HasField("default_value")]
    for name, value in params.items():
        if name in declared and not of_type(value, declared[name].parameter_type):
            _, required, given = _VALUE_TYPES.get(declared[name].parameter_type, ((), "unknown", "a known"))
            problems.append(f"input parameter {name} requires type {required}, but the input parameter is not of "
                            f"{given} value type")
    unknown = sorted(set(params) - set(declared))
    if unknown:
        problems.append(f"parameter(s) provided are not required by pipeline: {', '.join(unknown)} "
                        f"(it declares: {', '.join(declared) or 'none'})")
    return problems


def of_type(value, kind) -> bool:
    accepted = _VALUE_TYPES.get(kind, ((), "", ""))[0]
    return isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)


def max_concurrency_problem(max_concurrency: int) -> Optional[str]:
    if not 1 <= max_concurrency <= MAX_CONCURRENCY:
        return (f"Max concurrency of a recurring run must be at least 1 and at most {MAX_CONCURRENCY}. "
                f"Received {max_concurrency}")
    return None
