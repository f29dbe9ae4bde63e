"""Starts tasks of the compiled pipeline quickly: imports once what the pipeline image's tasks import,
then forks one child per task, which runs the task's `python -m <module> <args>` as a fresh process
would (its own environment, argv, stdout and stderr, exit code).

Importing TensorFlow, TFX, Beam and TFMA costs each process 30 to 50 s on two cores; a cluster pays it
in every pod, the local execution test would pay it 26 times. The zygote imports and never runs
TensorFlow, so forking it is safe. Protocol: one JSON request per line on stdin
({"module", "args", "env", "log"}); one JSON answer per line on stdout ({"returncode"}).
"""
import importlib
import json
import os
import runpy
import sys
import traceback

PRELOADED = (
    "cxr.pipeline.metadata_reader", "cxr.kubeflow.ui_outputs", "cxr.pipeline.pipeline", "cxr.components.trainer",
    "cxr.components.transform", "tfx.orchestration.portable.launcher", "tensorflow_model_analysis",
    "tensorflow_transform", "tensorflow_data_validation",
    "tfx.components.example_gen.import_example_gen.executor", "tfx.components.statistics_gen.executor",
    "tfx.components.schema_gen.executor", "tfx.components.example_validator.executor",
    "tfx.components.transform.executor", "tfx.components.trainer.executor", "tfx.components.evaluator.executor",
    "tfx.components.pusher.executor",
)


def main() -> None:
    # Started as a script from the image's working directory; its tasks are `python -m` commands, for which
    # Python puts that directory, not the script's, first on the path.
    sys.path[0] = os.getcwd()
    for module in PRELOADED:
        importlib.import_module(module)
    _answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            _run_task(request)
        _, status = os.waitpid(child, 0)
        _answer({"returncode": os.waitstatus_to_exitcode(status)})


def _run_task(request: dict) -> None:
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # the task's failure: its traceback goes to its log, like a process's
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _answer(message: dict) -> None:
    sys.__stdout__.write(json.dumps(message) + "\n")
    sys.__stdout__.flush()


if __name__ == "__main__":
    main()
