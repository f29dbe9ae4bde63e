"""Runs a compiled `--target kfp` pipeline as a Kubeflow Pipelines cluster does, on this machine.

Each task's container command and args run in a process of their own, in DAG order, with what
KFP's backend gives a container (kubeflow/pipelines, backend/src/v2):
- task inputs resolved as the driver resolves them (driver/resolve.go at HEAD, driver/driver.go
  at 2.5.0): pipeline parameters from the run's values or their defaults, and runtime constants
  that are exactly `{{$.pipeline_job_uuid}}` (and the other job and task placeholders) replaced
  by the run's values; with `kfp_version` before 2.5, passed through unresolved, as those drivers do;
  `{{$.pipeline_job_schedule_time_utc}}` resolved to `schedule_time` where given (as drivers with
  kubeflow/pipelines#13473 do), else passed through unresolved (as through 2.15, issue #12616);
- with `metadata`, KFP's own records in ML Metadata (metadata/client.go, 2.0 to 2.5): the driver's
  context of type system.PipelineRun named by the run id, and for each task an execution of type
  system.ContainerExecution in it, with the pod's name the launcher writes when the task starts;
- the ExecutorInput and the placeholders of command and args built and resolved by kfp's own
  local-execution code (kfp.local.executor_input_utils, kfp.local.placeholder_utils);
- the environment the Argo template sets (compiler/argocompiler/container.go: KFP_POD_NAME,
  KFP_POD_UID), each task's declared PVC mounts present at their mount paths;
- the ExecutorOutput file parsed strictly, as component/launcher_v2.go does, and each output
  artifact's file required, as the launcher uploads it.
Every task runs in the pipeline image's environment as image_env.py rebuilds it from
kubeflow/Dockerfile: its Python, its environment variables, from its working directory (KFP sets
none of its own). Tasks start from a zygote (task_zygote.py: the imports done once, then a fork per
task) unless named in `fresh_processes`, which run their command line as a new process.
"""
import dataclasses
import json
import os
import subprocess
import uuid
from typing import Dict, List, Optional

import yaml
from google.protobuf import json_format
from kfp.local import executor_input_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

from cxr.kubeflow.cluster_checks import executors
from cxr.pipeline.kfp_runs import KFP_POD_NAME, KFP_RUN_CONTEXT
from image_env import ImageEnvironment

_ARGO_TEMPLATE = "system-container-impl"
_SCHEDULE_TIME = "{{$.pipeline_job_schedule_time_utc}}"
_UNRESOLVED_SCHEDULE_TIME = "unresolved-pipeline-job-schedule-time-utc"


@dataclasses.dataclass
class TaskResult:
    returncode: int
    log: str
    executor_output: Optional[pipeline_spec_pb2.ExecutorOutput] = None


@dataclasses.dataclass
class LocalRun:
    run_id: str
    tasks: Dict[str, TaskResult]  # in the order they ran; a failed task ends the run

    @property
    def succeeded(self) -> bool:
        return all(result.returncode == 0 for result in self.tasks.values())

    def failures(self) -> str:
        return "\n\n".join(f"{name} exited {result.returncode}:\n{result.log[-4000:]}"
                           for name, result in self.tasks.items() if result.returncode)


class Zygote:
    """`with Zygote(image) as zygote:` a task_zygote.py process in the image's environment, ready once its
    imports are done."""

    def __init__(self, image: ImageEnvironment):
        self.image = image

    def __enter__(self) -> "Zygote":
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "task_zygote.py")
        self._process = subprocess.Popen([self.image.python, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         cwd=self.image.workdir, env=self.image.env, text=True)
        assert json.loads(self._process.stdout.readline()) == {"ready": True}
        return self

    def run(self, command: List[str], env: dict, log_path: str) -> int:
        python, flag, module, *args = command
        assert (python, flag) == ("python", "-m"), f"the zygote runs `python -m module` commands, not {command}"
        request = {"module": module, "args": args, "env": env, "log": log_path}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())["returncode"]

    def __exit__(self, *exc) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)


def run_package(package_path: str, work_dir: str, zygote: Zygote, params: Optional[dict] = None,
                fresh_processes=(), kfp_version=(2, 5), metadata=None, schedule_time: Optional[str] = None) -> LocalRun:
    with open(package_path, encoding="utf-8") as f:
        documents = list(yaml.safe_load_all(f))
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(documents) > 1 else {}
    run = _Run(spec, platform, work_dir, params or {}, zygote.image, kfp_version, metadata, schedule_time)
    results = {}
    for task_name in _topological(spec.root.dag.tasks):
        results[task_name] = run.task(task_name, zygote if task_name not in fresh_processes else None)
        if results[task_name].returncode:
            break
    return LocalRun(run.run_id, results)


def _topological(tasks) -> List[str]:
    ordered, remaining = [], dict(tasks)
    while remaining:
        ready = sorted(name for name, task in remaining.items() if set(task.dependent_tasks) <= set(ordered))
        assert ready, f"the DAG has a cycle among {sorted(remaining)}"
        ordered += ready
        for name in ready:
            del remaining[name]
    return ordered


class _Run:
    def __init__(self, spec, platform: dict, work_dir: str, params: dict, image: ImageEnvironment, kfp_version,
                 metadata, schedule_time):
        self.spec, self.platform, self.work_dir, self.image = spec, platform, work_dir, image
        self.kfp_version, self.metadata, self.schedule_time = kfp_version, metadata, schedule_time
        self.run_id = str(uuid.uuid4())
        self.workflow = f"{spec.pipeline_info.name}-{self.run_id[:5]}"
        self.executors = executors(spec)
        declared = spec.root.input_definitions.parameters
        self.params = {name: json_format.MessageToDict(parameter.default_value)
                       for name, parameter in declared.items() if parameter.HasField("default_value")}
        self.params.update(params)

    def task(self, name: str, zygote: Optional[Zygote]) -> TaskResult:
        task = self.spec.root.dag.tasks[name]
        component = self.spec.components[task.component_ref.name]
        container = self.executors[component.executor_label].container
        task_root = os.path.join(self.work_dir, self.run_id, name)
        executor_input = executor_input_utils.construct_executor_input(
            component, self._arguments(task), task_root)
        command = placeholder_utils.replace_placeholders(
            list(container.command) + list(container.args),
            executor_input_utils.executor_input_to_dict(executor_input, component),
            pipeline_resource_name=self.workflow, task_resource_name=name, pipeline_root=self.work_dir)
        command = [part.replace(_UNRESOLVED_SCHEDULE_TIME, _SCHEDULE_TIME) for part in command]
        self._check_mounts(component.executor_label)
        os.makedirs(task_root, exist_ok=True)
        log_path = os.path.join(task_root, "log.txt")
        environment = self._environment(name)
        if self.metadata is not None:
            self._record_task(environment["KFP_POD_NAME"])
        if zygote:
            returncode = zygote.run(command, environment, log_path)
        else:
            with open(log_path, "w") as log:
                returncode = subprocess.run(command, env=environment, cwd=self.image.workdir, stdout=log,
                                            stderr=log).returncode
        with open(log_path, errors="replace") as log:
            result = TaskResult(returncode, log.read())
        if returncode == 0 and os.path.exists(executor_input.outputs.output_file):
            result.executor_output = self._executor_output(executor_input)
        return result

    def _arguments(self, task) -> dict:
        arguments = {}
        for key, spec in task.inputs.parameters.items():
            kind = spec.WhichOneof("kind")
            if kind == "component_input_parameter":
                arguments[key] = self.params[spec.component_input_parameter]
            elif kind == "runtime_value":
                arguments[key] = self._runtime_constant(json_format.MessageToDict(spec.runtime_value.constant))
            else:
                raise NotImplementedError(f"task input {key} of kind {kind}: the compiled pipeline passes none")
        return arguments

    def _runtime_constant(self, value):
        if value == _SCHEDULE_TIME:
            # kfp.local would try to resolve the literal placeholder again inside the ExecutorInput ({{$}}),
            # which KFP's launcher substitutes once: it travels as a token and is put back in the command.
            return self.schedule_time or _UNRESOLVED_SCHEDULE_TIME
        if self.kfp_version < (2, 5):
            return value
        return {"{{$.pipeline_job_uuid}}": self.run_id, "{{$.pipeline_job_name}}": self.workflow,
                "{{$.pipeline_job_resource_name}}": self.workflow}.get(value, value)

    def _record_task(self, pod_name: str) -> None:
        from ml_metadata import metadata_store
        from ml_metadata.proto import metadata_store_pb2
        store = metadata_store.MetadataStore(self.metadata)
        run_type = store.put_context_type(metadata_store_pb2.ContextType(name=KFP_RUN_CONTEXT))
        context = store.get_context_by_type_and_name(KFP_RUN_CONTEXT, self.run_id)
        if context is None:
            context = metadata_store_pb2.Context(type_id=run_type, name=self.run_id)
            context.custom_properties["resource_name"].string_value = "run-resource"  # what every 2.x driver writes
            [context.id] = store.put_contexts([context])
        execution = metadata_store_pb2.Execution(
            type_id=store.put_execution_type(metadata_store_pb2.ExecutionType(name="system.ContainerExecution")),
            last_known_state=metadata_store_pb2.Execution.RUNNING)
        execution.custom_properties[KFP_POD_NAME].string_value = pod_name
        store.put_execution(execution, artifact_and_events=[], contexts=[context])

    def _check_mounts(self, executor_label: str) -> None:
        for mount in self.platform.get(executor_label, {}).get("pvcMount", []):
            assert os.path.isdir(mount["mountPath"]), f"{executor_label} mounts {mount} at a path that does not exist"

    def _environment(self, task_name: str) -> dict:
        environment = dict(self.image.env)
        environment["KFP_POD_NAME"] = f"{self.workflow}-{_ARGO_TEMPLATE}-{abs(hash(task_name)) % 10 ** 10}"
        environment["KFP_POD_UID"] = str(uuid.uuid4())
        return environment

    @staticmethod
    def _executor_output(executor_input) -> pipeline_spec_pb2.ExecutorOutput:
        with open(executor_input.outputs.output_file, encoding="utf-8") as f:
            output = json_format.Parse(f.read(), pipeline_spec_pb2.ExecutorOutput())
        for name, artifacts in executor_input.outputs.artifacts.items():
            for artifact in artifacts.artifacts:
                assert os.path.exists(artifact.uri), f"output artifact {name} has no file at {artifact.uri}"
        return output


def metadata_of(result: TaskResult, output: str) -> dict:
    """The metadata a task recorded for one of its output artifacts, as KFP's UI reads it."""
    [artifact] = result.executor_output.artifacts[output].artifacts
    return json.loads(json_format.MessageToJson(artifact.metadata))


def file_of(result: TaskResult, output: str) -> str:
    """The file of one of a task's output artifacts (what KFP uploads to its store)."""
    [artifact] = result.executor_output.artifacts[output].artifacts
    with open(artifact.uri, encoding="utf-8") as f:
        return f.read()
