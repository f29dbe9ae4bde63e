"""`cxr kfp submit|schedule|schedules|unschedule`: the compiled pipeline on a Kubeflow Pipelines v2 cluster.

Everything goes through kfp 2.5's own `kfp.Client` (KFP REST API v2beta1). Our code reads no
environment variable and writes nothing; authentication is what the caller passes (`--token-file` or
$CXR_KFP_TOKEN, sent as `Authorization: Bearer ...`, only over https:// or to localhost; `--cookies-file`
or $CXR_KFP_COOKIES, sent verbatim as the `Cookie` header) plus
what kfp.Client picks up by itself:

* `~/.config/kfp/context.json` (namespace, cookie, extra auth header), which kfp.Client loads
  on construction and rewrites when it detects a multi-user cluster from inside a pod;
* KF_PIPELINES_UI_ENDPOINT (replaces the host in the links it prints) and the IAP/OAuth
  variables KF_PIPELINES_IAP_OAUTH2_CLIENT_ID, KF_PIPELINES_APP_OAUTH2_CLIENT_ID/_SECRET;
* with no host (`cxr kfp ... ` without `--host`): inside the cluster, the pipelines service
  with the projected service account token (KF_PIPELINES_SA_TOKEN_PATH); outside, the API
  server's proxy found through the kube config.

kfp.Client also prints "... details: <link>" lines to stdout as it uploads and runs.
"""
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, Iterator, List, Optional, Tuple

import kfp
import urllib3
from kfp_server_api.exceptions import ApiException

from cxr.kubeflow.cluster_checks import check_max_concurrency, package_pipeline_root

_SCHEDULE_PAGE_SIZE = 100
_HEALTH_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class Connection:
    host: Optional[str] = None  # None: kfp.Client finds the API in-cluster or through the kube config
    namespace: Optional[str] = None
    token: Optional[str] = None
    cookies: Optional[str] = None


def secret(path: Optional[str], variable: str, flag: str) -> Optional[str]:
    """A credential from a file (its first line) or the environment variable, never from the command line."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as error:
            raise ValueError(f"{flag} {path}: cannot read it ({error.strerror})") from None
        if not value:
            raise ValueError(f"{flag} {path} is empty")
        return value
    return os.environ.get(variable) or None


def _check_transport(connection: Connection) -> None:
    """A credential goes over https://, or plain http:// to this machine only (kubectl port-forward's tunnel)."""
    if not (connection.token or connection.cookies) or not connection.host:
        return
    parsed = urllib.parse.urlsplit(connection.host if "://" in connection.host else f"http://{connection.host}")
    if parsed.scheme != "https" and parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise ValueError(f"refusing to send the token or cookies to {connection.host} over plain HTTP: use "
                         f"https://, or kubectl port-forward and --host http://localhost:PORT")


def connect(connection: Connection) -> kfp.Client:
    """kfp.Client for the connection; building it already asks the API server for its health."""
    _check_transport(connection)
    namespace = {"namespace": connection.namespace} if connection.namespace else {}
    if connection.host:
        _probe_health(connection)
    with api_errors(connection.host):
        client = kfp.Client(host=connection.host, existing_token=connection.token, cookies=connection.cookies,
                            **namespace)
    if connection.namespace:
        # kfp.Client ignores namespace="kubeflow" (its default doubles as "not given"), so the
        # namespace is set on the instance; set_user_namespace would also rewrite context.json.
        client._context_setting["namespace"] = connection.namespace
    return client


@contextlib.contextmanager
def api_errors(host: Optional[str]) -> Iterator[None]:
    """The API's failures as one line naming the host, instead of urllib3's or the generated client's tracebacks."""
    where = host or "the in-cluster or kube-config endpoint"
    try:
        yield
    except urllib3.exceptions.MaxRetryError as error:
        raise ConnectionError(f"cannot reach the Kubeflow Pipelines API at {where}: {_reason(error)}") from None
    except ApiException as error:
        raise ConnectionError(f"the Kubeflow Pipelines API at {where} answered HTTP {error.status} "
                              f"{error.reason}: {_message(error.body)}") from None


def _probe_health(connection: Connection) -> None:
    """One request to the API's health endpoint. kfp.Client asks it too, but retries an error answer
    five times, 5 s apart, logging a traceback each time, then says only that it timed out."""
    url = connection.host if "://" in connection.host else f"http://{connection.host}"
    headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
    if connection.cookies:
        headers["Cookie"] = connection.cookies
    request = urllib.request.Request(f"{url.rstrip('/')}/apis/v2beta1/healthz", headers=headers)
    try:
        urllib.request.urlopen(request, timeout=_HEALTH_TIMEOUT_S).close()
    except urllib.error.HTTPError as error:
        raise ConnectionError(f"the Kubeflow Pipelines API at {connection.host} answered HTTP {error.code} "
                              f"{error.reason}: {_message(error.read())}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"cannot reach the Kubeflow Pipelines API at {connection.host}: {reason}") from None


def _reason(error: urllib3.exceptions.MaxRetryError) -> str:
    reason = str(error.reason or error)
    return reason.split(": ", 1)[-1].rstrip("')")  # drops urllib3's "<...HTTPConnection object at 0x..>: "


def _message(body) -> str:
    """KFP's JSON error message, or the start of whatever else answered (a login page, another service)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        answer = json.loads(text)
        return answer.get("message") or answer.get("error") or text[:200]
    except (ValueError, AttributeError):
        return " ".join(text.split())[:200] + (" (is this the Kubeflow Pipelines API?)" if text else "")


# ---------------------------------------------------------------------------------------------
# Cron: KFP hands the expression to robfig/cron with seconds first. A five-field Unix cron is
# not refused there: the day-of-week field is optional, so "0 3 * * *" silently means
# "second 0, minute 3, every hour". Hence the strict check before anything is sent.

_CRON_EXAMPLE = "'0 0 3 * * *' (03:00:00 every day)"
_MONTHS = {name: number for number, name in enumerate(
    "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), start=1)}
_WEEKDAYS = {name: number for number, name in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_CRON_FIELDS = (
    ("seconds", 0, 59, {}),
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _WEEKDAYS),
)


def validate_cron(expression: str) -> str:
    expression = expression.strip()
    fields = expression.split()
    if len(fields) != len(_CRON_FIELDS):
        hint = ""
        if len(fields) == 5:
            hint = f" {expression!r} looks like a five-field Unix cron; prepend the seconds, e.g. {'0 ' + expression!r}."
        raise ValueError(f"KFP cron expressions need six fields, seconds first "
                         f"(seconds minutes hours day-of-month month day-of-week), e.g. {_CRON_EXAMPLE}; "
                         f"got {len(fields)} in {expression!r}.{hint}")
    for value, (field, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in value.split(","):
            if not _cron_part_ok(part.upper(), low, high, names):
                raise ValueError(f"Invalid {field} field {value!r} in cron {expression!r}: expected *, ?, "
                                 f"{low}-{high}{' or names' if names else ''}, ranges a-b, lists a,b, "
                                 f"steps */n or a-b/n; six fields, seconds first, e.g. {_CRON_EXAMPLE}.")
    return expression


def _cron_part_ok(part: str, low: int, high: int, names: Dict[str, int]) -> bool:
    span, _, step = part.partition("/")
    if step and not (step.isdigit() and int(step) > 0):
        return False
    if span in ("*", "?"):
        return True
    start, dash, end = span.partition("-")
    first, last = _cron_value(start, names), _cron_value(end, names) if dash else None
    if first is None or (dash and last is None):
        return False
    return low <= first <= (last if last is not None else first) <= high


def _cron_value(text: str, names: Dict[str, int]) -> Optional[int]:
    if text.isdigit():
        return int(text)
    return names.get(text)


# ---------------------------------------------------------------------------------------------
# Submitting and scheduling.

@dataclasses.dataclass(frozen=True)
class Submitted:
    pipeline_id: str
    version_id: str
    run_id: str
    url: str


def upload_version(client: kfp.Client, package_path: str, pipeline_name: str,
                   version_name: Optional[str] = None) -> Tuple[str, str]:
    """Uploads the spec as a new version of `pipeline_name`, creating the pipeline the first time.

    Creating a pipeline also gives it a first version named after the pipeline; the named version is
    uploaded anyway, so that every run points at a version named by time and content hash. The same
    package sent twice within a second gets the same default name: a version of that name is reused.
    """
    version_name = version_name or _default_version_name(package_path, pipeline_name)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package_path, pipeline_name=pipeline_name).pipeline_id
    else:
        existing = _version_named(client, pipeline_id, version_name)
        if existing:
            return pipeline_id, existing
    version = client.upload_pipeline_version(package_path, version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def _version_named(client: kfp.Client, pipeline_id: str, name: str) -> Optional[str]:
    equals = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    versions = client.list_pipeline_versions(pipeline_id, filter=equals).pipeline_versions or []
    return versions[0].pipeline_version_id if versions else None


def _default_version_name(package_path: str, pipeline_name: str) -> str:
    with open(package_path, "rb") as package:
        digest = hashlib.sha256(package.read()).hexdigest()[:8]
    return f"{pipeline_name}-{_utc_stamp()}-{digest}"


def submit(client: kfp.Client, package_path: str, pipeline_name: str, experiment: str,
           params: Dict[str, object], run_name: Optional[str] = None) -> Submitted:
    pipeline_id, version_id = upload_version(client, package_path, pipeline_name)
    run = client.run_pipeline(_experiment_id(client, experiment), run_name or f"{pipeline_name}-{_utc_stamp()}",
                              pipeline_id=pipeline_id, version_id=version_id, params=params,
                              pipeline_root=package_pipeline_root(package_path) or None)
    return Submitted(pipeline_id, version_id, run.run_id, f"{_host(client)}/#/runs/details/{run.run_id}")


def schedule(client: kfp.Client, package_path: str, pipeline_name: str, experiment: str, cron: str,
             name: str, max_concurrency: int = 1, catchup: bool = False,
             params: Optional[Dict[str, object]] = None) -> str:
    """Creates a recurring run; returns its id. A name already in use is refused (unschedule it first)."""
    cron = validate_cron(cron)
    check_max_concurrency(max_concurrency)
    taken = [s.id for s in list_schedules(client) if s.name == name]
    if taken:
        raise ValueError(f"A schedule named {name!r} already exists (id {', '.join(taken)}); "
                         f"recurring runs cannot be changed in place: unschedule it first.")
    pipeline_id, version_id = upload_version(client, package_path, pipeline_name)
    recurring = client.create_recurring_run(
        _experiment_id(client, experiment), name, cron_expression=cron, max_concurrency=max_concurrency,
        no_catchup=not catchup, enabled=True, params=params or {},
        pipeline_id=pipeline_id, version_id=version_id, pipeline_root=package_pipeline_root(package_path) or None)
    return recurring.recurring_run_id


def _experiment_id(client: kfp.Client, experiment: str) -> str:
    return client.create_experiment(name=experiment).experiment_id  # returns the existing one by that name


def _utc_stamp() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"


def _host(client: kfp.Client) -> str:
    # The UI base kfp.Client itself uses for its links: the host, unless KF_PIPELINES_UI_ENDPOINT.
    return client._get_url_prefix().rstrip("/")


# ---------------------------------------------------------------------------------------------
# Listing and removing schedules.

@dataclasses.dataclass(frozen=True)
class Schedule:
    id: str
    name: str
    cron: str
    status: str
    max_concurrency: int
    pipeline_version_id: str


def list_schedules(client: kfp.Client, experiment: Optional[str] = None) -> List[Schedule]:
    scope = {"namespace": client.get_user_namespace() or None}
    if experiment:
        scope = {"experiment_id": client.get_experiment(experiment_name=experiment).experiment_id}
    schedules, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=_SCHEDULE_PAGE_SIZE, **scope)
        schedules.extend(_schedule(recurring) for recurring in page.recurring_runs or [])
        token = page.next_page_token
        if not token:
            return schedules


def _schedule(recurring) -> Schedule:
    trigger = recurring.trigger
    if trigger and trigger.cron_schedule and trigger.cron_schedule.cron:
        cron = trigger.cron_schedule.cron
    elif trigger and trigger.periodic_schedule:
        cron = f"every {trigger.periodic_schedule.interval_second}s"
    else:
        cron = ""
    reference = recurring.pipeline_version_reference
    version_id = (reference.pipeline_version_id if reference else None) or recurring.pipeline_version_id or ""
    return Schedule(id=recurring.recurring_run_id, name=recurring.display_name or "", cron=cron,
                    status=recurring.status or recurring.mode or "",
                    max_concurrency=int(recurring.max_concurrency or 0),  # int64: a string in JSON
                    pipeline_version_id=version_id)


def unschedule(client: kfp.Client, name_or_id: str) -> Schedule:
    """Deletes a recurring run found by display name or id.

    Recurring runs cannot be updated in place, so deleting (then scheduling again) is how one changes them.
    """
    schedules = list_schedules(client)
    matches = [s for s in schedules if s.id == name_or_id] or [s for s in schedules if s.name == name_or_id]
    if not matches:
        names = ", ".join(sorted({s.name for s in schedules})) or "none"
        raise ValueError(f"No schedule is named or has the id {name_or_id!r}; existing schedules: {names}.")
    if len(matches) > 1:
        ids = ", ".join(s.id for s in matches)
        raise ValueError(f"{len(matches)} schedules are named {name_or_id!r} (ids {ids}); pass the id instead.")
    client.delete_recurring_run(matches[0].id)
    return matches[0]
