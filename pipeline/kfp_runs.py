"""Kubeflow Pipelines' run ids, and the names TFX's runs take on KFP.

KFP's backends before 2.5 leave {{$.pipeline_job_uuid}} unresolved; each task then records TFX's run
under the name of the run's Argo workflow (kubeflow/task.py). KFP's own records in the same ML Metadata
map one to the other (backend/src/v2/metadata/client.go, 2.0 to 2.5): its driver makes a context of type
system.PipelineRun named by KFP's run id, and its launcher writes each task's pod name
(<workflow>-system-container-impl-<hash>, or <workflow>-<hash> on Argo before 3.4) on the task's execution.
"""
import re
from typing import Optional

from ml_metadata import errors

KFP_RUN_CONTEXT = "system.PipelineRun"
KFP_POD_NAME = "pod_name"
_ARGO_TEMPLATE = "-system-container-impl-"  # backend/src/v2/compiler/argocompiler/container.go


def argo_workflow_of_pod(pod: str) -> Optional[str]:
    """The Argo workflow a KFP task's pod belongs to, from the pod's name; None if it is not such a name."""
    if _ARGO_TEMPLATE in pod:
        return pod.split(_ARGO_TEMPLATE)[0] or None
    return pod.rsplit("-", 1)[0] if re.fullmatch(r".+-\d+", pod) else None


def kfp_workflow_of_run(store, kfp_run_id: str) -> Optional[str]:
    """The Argo workflow that ran KFP's run `kfp_run_id`, as KFP recorded it in ML Metadata; None if unknown."""
    try:
        context = store.get_context_by_type_and_name(KFP_RUN_CONTEXT, kfp_run_id)
    except errors.NotFoundError:  # no KFP run ever recorded here: the type is not registered
        return None
    if context is None:
        return None
    pods = [execution.custom_properties[KFP_POD_NAME].string_value
            for execution in store.get_executions_by_context(context.id) if KFP_POD_NAME in execution.custom_properties]
    workflows = {argo_workflow_of_pod(pod) for pod in pods} - {None}
    return workflows.pop() if len(workflows) == 1 else None


