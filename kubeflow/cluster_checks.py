"""What a cluster refuses, checked before anything reaches it.

`check_cluster_config`: settings that cannot work on a cluster (left from the example file, the
local image, storage no task can reach, the default pipeline name), refused when compiling.

`check_package`: a compiled pipeline checked as Kubeflow Pipelines' API server and Argo compiler
check it before a run starts, so `cxr kfp submit` and `schedule` refuse it before connecting.
The rules and messages follow KFP's backend (kubeflow/pipelines, tags 2.0.5 to 2.5.0):
- backend/src/apiserver/template/v2_template.go, NewV2SpecTemplate: the spec must parse strictly,
  schemaVersion must be 2.1.0, the name non-empty, the root component present;
- backend/src/apiserver/common/utils.go, ValidatePipelineName (called on upload by
  resource/resource_manager.go): the name must match ^[a-z0-9][a-z0-9-]{0,127}$;
- backend/src/v2/compiler/visitor.go and argocompiler/dag.go: only container and importer
  executors are implemented ("resolver executors not implemented", "custom job executors is Google
  Cloud only"); the backend reads no container lifecycle hook, so a TFX driver attached as
  `lifecycle.preCacheCheck` (what KubeflowV2DagRunner emits for ExampleGen) would silently not run;
- v2_template.go, validatePipelineJobInputs: a run must give every root parameter that is neither
  optional nor defaulted, no parameter the pipeline does not declare, and each value of the type
  the pipeline declares (a STRING parameter takes a string value, not the struct its text parses to);
- server/api_converter.go, toModelJob: a recurring run's max concurrency is 1 to 10.
"""
import re
from typing import Dict, Iterator, List, Mapping, Tuple

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cxr.pipeline.config import DEFAULT_IMAGE, SQLITE_METADATA, ConfigError, PipelineConfig, to_dict

DEFAULT_NAME = PipelineConfig().name
SCHEMA_VERSION = "2.1.0"
MAX_CONCURRENCY = 10
PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
EXAMPLE_PLACEHOLDER = "YOUR-"  # what kubeflow/cluster.example.yaml asks to replace


def check_cluster_config(config: PipelineConfig, target: str) -> None:
    problems = [*_placeholders_left(config), *_image_problems(config), *_storage_problems(config, target)]
    if target == "kfp":
        problems += _models_volume_problems(config)
    if config.name == DEFAULT_NAME:
        # TFX keys its contexts in ML Metadata by pipeline name: the baseline model the Evaluator compares
        # with, the cache, the spans ExampleGen has read. A cluster's ML Metadata serves every team.
        problems.append(f"name is the default {DEFAULT_NAME!r}: the cluster's ML Metadata is shared by every "
                        f"pipeline, and TFX finds the baseline model, its cache and the spans it has read by pipeline "
                        f"name; name this deployment, e.g. {DEFAULT_NAME}-<team>")
    if target == "kfp" and not PIPELINE_NAME.match(config.name):
        problems.append(f"name {config.name!r}: Kubeflow Pipelines takes lower-case letters, digits and '-', "
                        f"starting with a letter or digit")
    if problems:
        raise ConfigError(f"cannot compile for {target}:\n  - " + "\n  - ".join(problems))


def _placeholders_left(config: PipelineConfig) -> Iterator[str]:
    for setting, value in _settings(to_dict(config)):
        if EXAMPLE_PLACEHOLDER in str(value):
            yield f"{setting} is {value!r}: replace the {EXAMPLE_PLACEHOLDER}... value left from the example file"


def _settings(values: dict, prefix: str = "") -> Iterator[Tuple[str, object]]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _settings(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _image_problems(config: PipelineConfig) -> Iterator[str]:
    if config.kubeflow.image == DEFAULT_IMAGE:
        yield (f"kubeflow.image is the local default {DEFAULT_IMAGE!r}: build and push the pipeline image "
               f"(make image IMAGE=registry.example.com/cxr-pipeline:1, docker push) and name it here")


def _storage_problems(config: PipelineConfig, target: str) -> Iterator[str]:
    paths = config.storage_paths()
    if target == "vertex" or config.kubeflow.metadata_grpc != SQLITE_METADATA:
        del paths["metadata_path"]  # ML Metadata is the cluster's service
    mounts = config.kubeflow.mounts() if target == "kfp" else {}
    for setting, path in paths.items():
        if path.startswith("gs://"):
            continue
        if path.startswith("s3://"):
            yield (f"{setting} is {path!r}: TensorFlow reads s3:// only with tensorflow-io, which the pipeline "
                   f"image does not install; use gs:// or a mounted volume")
        elif target == "vertex":
            yield f"{setting} is {path!r}: Vertex AI Pipelines' steps reach gs:// paths only"
        elif not any(_under(path, mount) for mount in mounts):
            yield (f"{setting} is {path!r}, which no task mounts: use gs://, or mount a volume there "
                   f"(kubeflow.volumes: claim-name:/mount/path; mounted now: {', '.join(mounts) or 'none'})")


def models_mount(config: PipelineConfig):
    """The mount path of the volume serving_dir lies on (None for a bucket or no such volume)."""
    held = [mount for mount in config.kubeflow.mounts() if _under(config.serving_dir, mount)]
    return max(held, key=len) if held else None


def _models_volume_problems(config: PipelineConfig) -> Iterator[str]:
    """Only the Pusher's task mounts the served models' volume (kfp_pipeline.task_mounts): no other path of
    the pipeline may lie on it, or the tasks that need that path could not reach it."""
    models = models_mount(config)
    if models is None:
        return
    for setting, path in config.storage_paths().items():
        if setting != "serving_dir" and "://" not in path and _under(path, models) and not (
                setting == "metadata_path" and config.kubeflow.metadata_grpc != SQLITE_METADATA):
            yield (f"{setting} is {path!r}, on the volume mounted at {models} that holds serving_dir "
                   f"({config.serving_dir!r}): only the Pusher's task mounts that volume, so that no other task can "
                   f"write the served models; give serving_dir a claim of its own (serving/k8s/models-pvc.yaml)")


def _under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


# ---------------------------------------------------------------------------------------------
# The compiled package.

def check_package(path: str, params: Mapping[str, object] = None) -> pipeline_spec_pb2.PipelineSpec:
    """The PipelineSpec in `path`, refused with KFP's reason if its API server or compiler would refuse it."""
    spec = _read_spec(path)
    problems = _spec_problems(spec) + _parameter_problems(spec, params or {})
    if problems:
        raise ValueError(f"{path} would be refused by Kubeflow Pipelines:\n  - " + "\n  - ".join(problems))
    return spec


def package_pipeline_root(path: str) -> str:
    """The compiled pipeline's default root ('' if none). KFP's backend reads a run's root from the run's
    runtime config only (apiserver/template/template.go), never the spec's default, so submit sends it."""
    return _read_spec(path).default_pipeline_root


def _read_spec(path: str) -> pipeline_spec_pb2.PipelineSpec:
    try:
        with open(path, encoding="utf-8") as f:
            document = next(yaml.safe_load_all(f), None)
    except OSError as error:
        raise ValueError(f"{path}: cannot read the compiled pipeline: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not YAML: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds no pipeline spec")
    if "pipelineSpec" in document:
        raise ValueError(f"{path} is a Vertex AI PipelineJob; compile with `cxr kfp compile --target kfp`")
    try:
        return json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as error:
        raise ValueError(f"{path}: invalid v2 pipeline spec: {error}") from error


def _spec_problems(spec: pipeline_spec_pb2.PipelineSpec) -> List[str]:
    problems = []
    if spec.schema_version != SCHEMA_VERSION:
        problems.append(f"KFP only supports schema version {SCHEMA_VERSION}, but the pipeline spec has version "
                        f"{spec.schema_version or '(none)'}")
    if not PIPELINE_NAME.match(spec.pipeline_info.name):
        problems.append(f"pipeline name {spec.pipeline_info.name!r}: it must contain only lowercase alphanumeric "
                        f"characters or '-' and must start with alphanumeric characters")
    if not spec.HasField("root") or not spec.root.dag.tasks:
        problems.append("root component is empty")
    for label, executor in executors(spec).items():
        kind = executor.WhichOneof("spec")
        if kind != "container":
            problems.append(f"executor {label}: {kind} executors are not implemented by KFP's Argo compiler; "
                            f"container executors only")
        elif executor.container.HasField("lifecycle"):
            problems.append(f"executor {label}: KFP ignores container lifecycle hooks, so its "
                            f"{', '.join(f.name for f, _ in executor.container.lifecycle.ListFields())} would not run")
    return problems


ExecutorSpec = pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec


def executors(spec: pipeline_spec_pb2.PipelineSpec) -> Dict[str, ExecutorSpec]:
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return dict(deployment.executors)


ParameterType = pipeline_spec_pb2.ParameterType
# What validatePipelineJobInputs accepts for each declared type, and how it names the type in its refusal.
_VALUE_TYPES = {
    ParameterType.STRING: ((str,), "string", "string"),
    ParameterType.NUMBER_INTEGER: ((int, float), "double or integer", "number"),
    ParameterType.NUMBER_DOUBLE: ((int, float), "double or integer", "number"),
    ParameterType.BOOLEAN: ((bool,), "bool", "bool"),
    ParameterType.LIST: ((list, tuple), "list", "list"),
    ParameterType.STRUCT: ((dict,), "struct", "struct"),
}


def package_params(path: str, texts: Mapping[str, str]) -> Dict[str, object]:
    """`--param name=text` values as the types the compiled pipeline declares: a STRING parameter takes the
    text as it is (the configuration's JSON stays text), other types take the value the text spells in YAML."""
    declared = _read_spec(path).root.input_definitions.parameters
    params = {}
    for name, text in texts.items():
        kind = declared[name].parameter_type if name in declared else ParameterType.STRING
        params[name] = text if kind == ParameterType.STRING else _parsed(name, text, kind)
    return params


def _parsed(name: str, text: str, kind) -> object:
    value = yaml.safe_load(text)
    if kind == ParameterType.NUMBER_INTEGER and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _of_type(value, kind):
        raise ValueError(f"--param {name}={text}: the pipeline declares {name} as {ParameterType.ParameterTypeEnum.Name(kind)}")
    return value


def _of_type(value, kind) -> bool:
    accepted = _VALUE_TYPES.get(kind, ((), "", ""))[0]
    return isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)


def _parameter_problems(spec: pipeline_spec_pb2.PipelineSpec, params: Mapping[str, object]) -> List[str]:
    declared = spec.root.input_definitions.parameters
    problems = [f"parameter {name} is not optional, yet has neither default value nor user provided value"
                for name, parameter in declared.items()
                if name not in params and not parameter.is_optional and not parameter.HasField("default_value")]
    for name, value in params.items():
        if name in declared and not _of_type(value, declared[name].parameter_type):
            _, required, given = _VALUE_TYPES.get(declared[name].parameter_type, ((), "unknown", "a known"))
            problems.append(f"input parameter {name} requires type {required}, but the input parameter is not of "
                            f"{given} value type")
    unknown = sorted(set(params) - set(declared))
    if unknown:
        problems.append(f"parameter(s) provided are not required by pipeline: {', '.join(unknown)} "
                        f"(it declares: {', '.join(declared) or 'none'})")
    return problems


def check_max_concurrency(max_concurrency: int) -> None:
    if not 1 <= max_concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"Max concurrency of a recurring run must be at least 1 and at most {MAX_CONCURRENCY}. "
                         f"Received {max_concurrency} (as Kubeflow Pipelines' API server refuses it)")
