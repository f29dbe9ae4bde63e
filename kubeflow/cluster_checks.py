"""What a cluster refuses, checked before anything reaches it.

`check_cluster_config`: settings that cannot work on a cluster (left from the example file, the
local image, storage no task can reach, the default pipeline name), refused when compiling.

`run_configuration`: what a run of the compiled pipeline runs with, its `config` parameter merged
onto the compiled configuration; every task and `cxr kfp submit` / `schedule` read it so.

`check_package`: a compiled pipeline checked as Kubeflow Pipelines' API server and Argo compiler
check it before a run starts (kubeflow/kfp_rules.py, each rule with the KFP source it follows), so
`cxr kfp submit` and `schedule` refuse it before connecting.
"""
from typing import Dict, Iterator, List, Mapping, Tuple

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cxr.kubeflow import kfp_rules
from cxr.kubeflow.kfp_rules import executors
from cxr.kubeflow.settings import (
    CONFIG_PARAMETER, DEFAULT_IMAGE, MONITORING, RUNTIME_SETTINGS, SQLITE_METADATA, TRAINING)
from cxr.pipeline.config import ConfigError, PipelineConfig, changed_settings, to_dict, with_changes

DEFAULT_NAME = PipelineConfig().name
EXAMPLE_PLACEHOLDER = "YOUR-"  # what kubeflow/cluster.example.yaml asks to replace


def check_cluster_config(config: PipelineConfig, target: str, job: str = TRAINING) -> None:
    """Refuses, naming every setting at fault, a configuration the cluster could not run as `job`."""
    problems = [*_placeholders_left(config), *_image_problems(config), *_storage_problems(config, target)]
    if target == "kfp":
        problems += _models_volume_problems(config)
    if job == MONITORING and not config.monitoring.logs_root:
        problems.append("monitoring.logs_root is empty: set it to the log proxies' --request_log_root "
                        "(serving/k8s/deployment.yaml), on a volume or gs://")
    if config.name == DEFAULT_NAME:
        # TFX keys its contexts in ML Metadata by pipeline name: the baseline model the Evaluator compares
        # with, the cache, the spans ExampleGen has read. A cluster's ML Metadata serves every team.
        problems.append(f"name is the default {DEFAULT_NAME!r}: the cluster's ML Metadata is shared by every "
                        f"pipeline, and TFX finds the baseline model, its cache and the spans it has read by pipeline "
                        f"name; name this deployment, e.g. {DEFAULT_NAME}-<team>")
    if target == "kfp" and not kfp_rules.PIPELINE_NAME.match(config.name):
        problems.append(f"name {config.name!r}: Kubeflow Pipelines takes lower-case letters, digits and '-', "
                        f"starting with a letter or digit")
    if problems:
        raise ConfigError(f"cannot compile the {job} job for {target}:\n  - " + "\n  - ".join(problems))


def run_configuration(compiled: PipelineConfig, changes: str, target: str = "kfp", job: str = TRAINING
                      ) -> PipelineConfig:
    """What a run of the compiled pipeline runs with: the compiled configuration with the run's `config`
    parameter (a JSON object of the settings to change, `{}` for none) merged onto it, checked as compiling
    checks it. A change the compiled spec cannot follow (the pipeline's name, the kubeflow section but
    kubeflow.metadata_grpc) is refused, naming it: recompile for those."""
    origin = f"the run's {CONFIG_PARAMETER} parameter"
    config = with_changes(compiled, changes, origin)
    fixed = [name for name in changed_settings(compiled, config) if name == "name" or (
        name.startswith("kubeflow.") and name[len("kubeflow."):] not in RUNTIME_SETTINGS)]
    if fixed:
        raise ConfigError(f"{origin} changes {', '.join(fixed)}, which the compiled pipeline holds (its name, "
                          f"image, volumes, resources, placement): change them in the configuration and "
                          f"recompile (cxr kfp compile)")
    check_cluster_config(config, target, job)
    return config


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
    problems = [*kfp_rules.template_problems(spec), *kfp_rules.compiler_problems(spec),
                *kfp_rules.job_input_problems(spec, params or {})]
    if problems:
        raise ValueError(f"{path} would be refused by Kubeflow Pipelines:\n  - " + "\n  - ".join(problems))
    return spec


def package_pipeline_root(path: str) -> str:
    """The compiled pipeline's default root ('' if none). KFP's backend reads a run's root from the run's
    runtime config only (apiserver/template/template.go), never the spec's default, so submit sends it."""
    return _read_spec(path).default_pipeline_root


COMPILED_CONFIG_INPUT = "compiled_config"  # each task's constant input (kfp_pipeline.config_args)


def package_config(path: str) -> Tuple[PipelineConfig, str]:
    """The configuration a package was compiled with, and its job (the monitoring job's one task monitors)."""
    from cxr.pipeline.config import from_json
    spec = _read_spec(path)
    for task in spec.root.dag.tasks.values():
        if COMPILED_CONFIG_INPUT in task.inputs.parameters:
            text = task.inputs.parameters[COMPILED_CONFIG_INPUT].runtime_value.constant.string_value
            job = MONITORING if _task_args(spec, task)[:1] == ["monitor"] else TRAINING
            return from_json(text, f"{path}: the compiled configuration"), job
    raise ValueError(f"{path}: no task holds the compiled configuration ({COMPILED_CONFIG_INPUT}); compile it with "
                     f"this version's `cxr kfp compile`")


def _task_args(spec, task) -> List[str]:
    executor = executors(spec)[spec.components[task.component_ref.name].executor_label]
    return list(executor.container.args)


def check_run_changes(path: str, params: Mapping[str, object]) -> PipelineConfig:
    """What a run of the package with these parameters would run with, refused as its tasks would refuse it."""
    compiled, job = package_config(path)
    changes = params.get(CONFIG_PARAMETER, "{}")
    return run_configuration(compiled, changes, "kfp", job) if isinstance(changes, str) else compiled


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
        return kfp_rules.parse_spec(document)
    except json_format.ParseError as error:
        raise ValueError(f"{path}: invalid v2 pipeline spec: {error}") from error


ParameterType = kfp_rules.ParameterType


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
    if not kfp_rules.of_type(value, kind):
        raise ValueError(f"--param {name}={text}: the pipeline declares {name} as "
                         f"{ParameterType.ParameterTypeEnum.Name(kind)}")
    return value


def check_max_concurrency(max_concurrency: int) -> None:
    problem = kfp_rules.max_concurrency_problem(max_concurrency)
    if problem:
        raise ValueError(f"{problem} (as Kubeflow Pipelines' API server refuses it)")
