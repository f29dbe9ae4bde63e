"""A contract fake of the Kubeflow Pipelines REST API, v2beta1: the subset kfp 2.5's kfp.Client calls.

It implements, from KFP's published v2beta1 API (backend/api/v2beta1/*.proto and the generated
kfp_server_api client), with in-memory state:

    GET    /apis/v2beta1/healthz
    GET    /apis/v2beta1/pipelines                    filter (display_name EQUALS), namespace, paging
    POST   /apis/v2beta1/pipelines/upload             multipart `uploadfile`; name, description, namespace in the query
    POST   /apis/v2beta1/pipelines/upload_version     multipart `uploadfile`; name, pipelineid, description in the query
    GET    /apis/v2beta1/pipelines/{id}/versions      filter, paging
    GET    /apis/v2beta1/experiments                  filter, namespace, paging
    POST   /apis/v2beta1/experiments
    POST   /apis/v2beta1/runs
    POST   /apis/v2beta1/recurringruns
    GET    /apis/v2beta1/recurringruns                experiment_id, namespace, paging
    GET    /apis/v2beta1/recurringruns/{id}
    DELETE /apis/v2beta1/recurringruns/{id}

Like the real server it answers errors as {"error", "code", "message", "details"} with gRPC codes
(404/5 unknown id, 400/3 invalid argument, 409/6 name already taken), omits empty fields (an empty
list comes back as {}), writes int64 fields such as max_concurrency as strings, lists recurring runs under the camelCase
key "recurringRuns" (the proto field's own name; every other key is snake_case), and uploading a
pipeline also creates its first version, named after it. With multi_user=True, listing or creating
experiments and listing recurring runs without a namespace (or experiment) is refused, as in
multi-user deployments. Every request is recorded: method, path, query, JSON body, multipart fields
and files, headers.

Like the real server it refuses a package its template parser refuses, a run or recurring run whose
parameters validatePipelineJobInputs refuses, and a recurring run whose max concurrency is not 1 to
10, with the rules (and the KFP source each follows) of cxr/kubeflow/kfp_rules.py, the module the
pre-upload checks use: one statement of each rule.

It has not been checked against a live cluster: nothing here has been run against one.
"""
import dataclasses
import datetime
import email.parser
import email.policy
import itertools
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

import yaml
from google.protobuf import json_format

from cxr.kubeflow import kfp_rules

API = "/apis/v2beta1"
_HTTP_STATUS = {3: 400, 5: 404, 6: 409, 16: 401}
_EQUALS = (1, "EQUALS")


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]
    body: Optional[dict] = None
    fields: Dict[str, str] = dataclasses.field(default_factory=dict)
    files: Dict[str, bytes] = dataclasses.field(default_factory=dict)
    filenames: Dict[str, str] = dataclasses.field(default_factory=dict)


class KfpError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class FakeKfpServer:
    """`with FakeKfpServer() as kfp_server:` serves on kfp_server.url until the block ends."""

    def __init__(self, multi_user: bool = False, default_page_size: int = 20):
        self.multi_user = multi_user
        self.default_page_size = default_page_size
        self.requests: List[Recorded] = []
        self.pipelines: Dict[str, dict] = {}
        self.versions: Dict[str, dict] = {}
        self.packages: Dict[str, bytes] = {}
        self.experiments: Dict[str, dict] = {}
        self.runs: Dict[str, dict] = {}
        self.recurring_runs: Dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "FakeKfpServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def requests_to(self, method: str, path: str) -> List[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == API + path]

    # -- dispatch --------------------------------------------------------------------------------

    def handle(self, request: Recorded) -> dict:
        with self._lock:
            route = request.path[len(API):] if request.path.startswith(API + "/") else None
            for method, pattern, action in self._routes():
                match = re.fullmatch(pattern, route or "")
                if request.method == method and match:
                    return action(request, *match.groups())
            raise KfpError(5, f"Not Found: {request.method} {request.path}")

    def _routes(self):
        return [
            ("GET", r"/healthz", lambda r: {"multi_user": self.multi_user}),
            ("GET", r"/pipelines", self._list_pipelines),
            ("POST", r"/pipelines/upload", self._upload_pipeline),
            ("POST", r"/pipelines/upload_version", self._upload_version),
            ("GET", r"/pipelines/([^/:]+)/versions", self._list_versions),
            ("GET", r"/experiments", self._list_experiments),
            ("POST", r"/experiments", self._create_experiment),
            ("POST", r"/runs", self._create_run),
            ("GET", r"/recurringruns", self._list_recurring_runs),
            ("POST", r"/recurringruns", self._create_recurring_run),
            ("GET", r"/recurringruns/([^/:]+)", lambda r, i: self._get(self.recurring_runs, i, "RecurringRun")),
            ("DELETE", r"/recurringruns/([^/:]+)", self._delete_recurring_run),
        ]

    # -- pipelines -------------------------------------------------------------------------------

    def _list_pipelines(self, request):
        namespace = request.query.get("namespace", "")
        found = [p for p in self.pipelines.values() if p.get("namespace", "") == namespace]
        return self._page(request, _filtered(request, found), "pipelines")

    def _upload_pipeline(self, request):
        name = request.query.get("name") or request.filenames.get("uploadfile", "")
        package = self._package(request)
        namespace = request.query.get("namespace", "")
        if any(p["display_name"] == name and p.get("namespace", "") == namespace for p in self.pipelines.values()):
            raise KfpError(6, f"Failed to upload pipeline: pipeline named {name!r} already exists")
        pipeline = _without_empty({"pipeline_id": self._new_id("pipeline"), "display_name": name,
                                   "description": request.query.get("description"), "namespace": namespace,
                                   "created_at": _now()})
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, package, request.query.get("description"))
        return pipeline

    def _list_versions(self, request, pipeline_id):
        self._get(self.pipelines, pipeline_id, "Pipeline")
        found = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        return self._page(request, _filtered(request, found), "pipeline_versions")

    def _upload_version(self, request):
        pipeline_id = request.query.get("pipelineid")
        if not pipeline_id:
            raise KfpError(3, "Failed to upload pipeline version: pipeline id is empty")
        self._get(self.pipelines, pipeline_id, "Pipeline")
        name = request.query.get("name")
        if not name:
            raise KfpError(3, "Failed to upload pipeline version: name is empty")
        if any(v["display_name"] == name and v["pipeline_id"] == pipeline_id for v in self.versions.values()):
            raise KfpError(6, f"Failed to upload pipeline version: version named {name!r} already exists")
        return self._add_version(pipeline_id, name, self._package(request), request.query.get("description"))

    def _add_version(self, pipeline_id, name, package, description):
        version = _without_empty({"pipeline_id": pipeline_id, "pipeline_version_id": self._new_id("version"),
                                  "display_name": name, "description": description, "created_at": _now()})
        self.versions[version["pipeline_version_id"]] = version
        self.packages[version["pipeline_version_id"]] = package
        return version

    @staticmethod
    def _package(request) -> bytes:
        if "uploadfile" not in request.files:
            raise KfpError(3, "Failed to read pipeline from file: missing uploadfile")
        _check_template(request.files["uploadfile"])
        return request.files["uploadfile"]

    # -- experiments -----------------------------------------------------------------------------

    def _list_experiments(self, request):
        namespace = self._namespace(request.query.get("namespace"))
        found = [e for e in self.experiments.values() if e.get("namespace", "") == namespace]
        return self._page(request, _filtered(request, found), "experiments")

    def _create_experiment(self, request):
        body = request.body or {}
        name, namespace = body.get("display_name"), self._namespace(body.get("namespace"))
        if not name:
            raise KfpError(3, "Invalid input error: Experiment name is empty. Please specify a valid experiment name")
        if any(e["display_name"] == name and e.get("namespace", "") == namespace for e in self.experiments.values()):
            raise KfpError(6, f"Failed to create a new experiment: experiment {name!r} already exists")
        experiment = _without_empty({"experiment_id": self._new_id("experiment"), "display_name": name,
                                     "description": body.get("description"), "namespace": namespace,
                                     "created_at": _now(), "storage_state": "AVAILABLE"})
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    # -- runs and recurring runs -----------------------------------------------------------------

    def _create_run(self, request):
        body = self._checked_run_body(request.body or {})
        run = dict(body, run_id=self._new_id("run"), created_at=_now(), state="PENDING", storage_state="AVAILABLE")
        self.runs[run["run_id"]] = run
        return run

    def _create_recurring_run(self, request):
        body = self._checked_run_body(request.body or {})
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        periodic = (body.get("trigger") or {}).get("periodic_schedule")
        if not cron and not periodic:
            raise KfpError(3, "Invalid input error: a trigger (cron_schedule or periodic_schedule) is required")
        if cron and len(cron.split()) not in (5, 6):  # robfig/cron: seconds first, day of week optional
            raise KfpError(3, f"Invalid input error: invalid cron expression {cron!r}")
        problem = kfp_rules.max_concurrency_problem(int(body.get("max_concurrency") or 0))
        if problem:
            raise KfpError(3, f"Invalid input error: {problem}")
        experiment = self.experiments[body["experiment_id"]]
        recurring = dict(body, recurring_run_id=self._new_id("recurring"), created_at=_now(), updated_at=_now(),
                         max_concurrency=str(body.get("max_concurrency") or 1),
                         status="ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED")
        recurring.update(_without_empty({"namespace": experiment.get("namespace")}))
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return recurring

    def _checked_run_body(self, body):
        if not body.get("display_name"):
            raise KfpError(3, "Invalid input error: display name is empty")
        self._get(self.experiments, body.get("experiment_id") or "", "Experiment")
        reference = body.get("pipeline_version_reference") or {}
        if reference:
            version = self._get(self.versions, reference.get("pipeline_version_id") or "", "PipelineVersion")
            if reference.get("pipeline_id") and reference["pipeline_id"] != version["pipeline_id"]:
                raise KfpError(3, "Invalid input error: pipeline version does not belong to the pipeline")
        elif not body.get("pipeline_spec"):
            raise KfpError(3, "Invalid input error: a pipeline spec or pipeline version reference is required")
        spec = body.get("pipeline_spec") or _pipeline_spec(self.packages[reference["pipeline_version_id"]])
        _check_job_inputs(spec, (body.get("runtime_config") or {}).get("parameters") or {})
        return body

    def _list_recurring_runs(self, request):
        experiment_id = request.query.get("experiment_id")
        if experiment_id:
            self._get(self.experiments, experiment_id, "Experiment")
            found = [r for r in self.recurring_runs.values() if r["experiment_id"] == experiment_id]
        else:
            namespace = self._namespace(request.query.get("namespace"))
            found = [r for r in self.recurring_runs.values() if r.get("namespace", "") == namespace]
        # The one camelCase key of the API: the proto field itself is named recurringRuns.
        return self._page(request, _filtered(request, found), "recurringRuns")

    def _delete_recurring_run(self, request, recurring_run_id):
        self._get(self.recurring_runs, recurring_run_id, "RecurringRun")
        del self.recurring_runs[recurring_run_id]
        return {}

    # -- shared ----------------------------------------------------------------------------------

    def _namespace(self, namespace: Optional[str]) -> str:
        if self.multi_user and not namespace:
            raise KfpError(3, "Invalid input error: In multi-user mode, a namespace is required")
        return namespace or ""

    def _page(self, request, items, key):
        """Pages `items` (in creation order) with an opaque offset token, like KFP's next_page_token."""
        size = int(request.query.get("page_size") or 0) or self.default_page_size
        token = request.query.get("page_token") or ""
        if token and not token.startswith("offset-"):
            raise KfpError(3, f"Invalid input error: invalid page token {token!r}")
        start = int(token[len("offset-"):]) if token else 0
        page = items[start:start + size]
        more = start + size < len(items)
        return _without_empty({key: page, "total_size": len(items),
                               "next_page_token": f"offset-{start + size}" if more else None})

    def _get(self, table, item_id, kind):
        if item_id not in table:
            raise KfpError(5, f"{kind} {item_id} not found: ResourceNotFoundError")
        return table[item_id]

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"


def _pipeline_spec(package: bytes) -> dict:
    documents = list(yaml.safe_load_all(package))
    if not documents or not isinstance(documents[0], dict):
        raise KfpError(3, "Failed to read pipeline from file: invalid v2 pipeline spec")
    return documents[0]


def _spec(package: bytes):
    try:
        return kfp_rules.parse_spec(_pipeline_spec(package))
    except json_format.ParseError as error:
        raise KfpError(3, f"Failed to create a pipeline: invalid v2 pipeline spec: {error}")


def _check_template(package: bytes) -> None:
    """What the API server refuses on upload (kfp_rules.template_problems)."""
    problems = kfp_rules.template_problems(_spec(package))
    if problems:
        raise KfpError(3, f"Failed to create a pipeline: {problems[0]}")


def _check_job_inputs(spec: dict, parameters: dict) -> None:
    """What the API server refuses when a run or recurring run is created (kfp_rules.job_input_problems)."""
    problems = kfp_rules.job_input_problems(kfp_rules.parse_spec(spec), parameters)
    if problems:
        raise KfpError(3, f"Failed to generate the ExecutionSpec: invalid pipeline job inputs: {problems[0]}")


def _filtered(request, items):
    raw = request.query.get("filter")
    if not raw:
        return items
    try:
        predicates = json.loads(raw).get("predicates", [])
    except (ValueError, AttributeError):
        raise KfpError(3, f"Invalid input error: filter {raw!r} is not a JSON Filter")
    for predicate in predicates:
        if predicate.get("operation") not in _EQUALS or predicate.get("key") != "display_name":
            raise KfpError(3, f"Invalid input error: the fake only filters display_name EQUALS, got {predicate}")
        items = [i for i in items if i.get("display_name") == predicate.get("stringValue",
                                                                           predicate.get("string_value"))]
    return items


def _without_empty(document: dict) -> dict:
    return {key: value for key, value in document.items() if value not in (None, "", [], {})}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_multipart(content_type: str, data: bytes):
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    fields, files, filenames = {}, {}, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files[name], filenames[name] = payload, part.get_filename()
        else:
            fields[name] = payload.decode()
    return fields, files, filenames


def _handler_for(server: FakeKfpServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms wait per request

        def do_GET(self):
            self._serve()

        do_POST = do_DELETE = do_GET

        def _serve(self):
            url = urllib.parse.urlsplit(self.path)
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Recorded(method=self.command, path=url.path,
                               query=dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)),
                               headers={key.lower(): value for key, value in self.headers.items()})
            server.requests.append(request)
            try:
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    request.fields, request.files, request.filenames = _parse_multipart(content_type, data)
                elif data:
                    request.body = json.loads(data)
                status, answer = 200, server.handle(request)
            except KfpError as error:
                status, answer = _HTTP_STATUS[error.code], {
                    "error": error.message, "code": error.code, "message": error.message, "details": []}
            except ValueError as error:
                status, answer = 400, {"error": str(error), "code": 3, "message": str(error), "details": []}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    return Handler
