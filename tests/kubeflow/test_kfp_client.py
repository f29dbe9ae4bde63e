"""`cxr kfp submit|schedule|schedules|unschedule` through the real kfp.Client, against the fake KFP v2beta1 REST API."""
import hashlib
import json
import re

import kfp
import kfp_server_api
import pytest
import yaml
from kfp import compiler, dsl

from cxr.kubeflow import client as kfp_client
from cxr.kubeflow.client import Connection, connect, list_schedules, schedule, submit, unschedule, validate_cron
from cxr.kubeflow.cluster_checks import package_params
from cxr.output import schedules_table
from fake_kfp_server import FakeKfpServer

PARAMS = {"epochs": 3, "data_root": "gs://bucket/cxr"}


@pytest.fixture
def client(kfp_server):
    return connect(Connection(host=kfp_server.url))


def compile_package(path, default_epochs: int = 1) -> str:
    @dsl.component(base_image="python:3.10-slim")
    def train(epochs: int, data_root: str):
        print(epochs, data_root)

    @dsl.pipeline(name="cxr-tiny")
    def tiny(epochs: int = default_epochs, data_root: str = "/data"):
        train(epochs=epochs, data_root=data_root)

    compiler.Compiler().compile(tiny, str(path))
    return str(path)


@pytest.fixture(scope="session")
def package(tmp_path_factory):
    return compile_package(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")


def content(path: str) -> bytes:
    with open(path, "rb") as package_file:
        return package_file.read()


def test_the_first_submit_uploads_the_pipeline_then_runs_a_new_version_with_the_parameters(
        kfp_server, client, package):
    submitted = submit(client, package, "cxr-train", "cxr", PARAMS, run_name="first")

    [upload] = kfp_server.requests_to("POST", "/pipelines/upload")
    assert upload.query["name"] == "cxr-train" and "namespace" not in upload.query
    assert upload.files["uploadfile"] == content(package)
    assert upload.headers["content-type"].startswith("multipart/form-data")
    [version] = kfp_server.requests_to("POST", "/pipelines/upload_version")
    assert version.query["pipelineid"] == submitted.pipeline_id
    assert re.fullmatch(r"cxr-train-\d{8}-\d{6}-[0-9a-f]{8}", version.query["name"])
    assert version.query["name"].endswith(hashlib.sha256(content(package)).hexdigest()[:8])
    assert version.files["uploadfile"] == content(package)
    assert kfp_server.versions[submitted.version_id]["display_name"] == version.query["name"]

    [run] = kfp_server.requests_to("POST", "/runs")
    assert run.body["display_name"] == "first"
    assert run.body["experiment_id"] == next(iter(kfp_server.experiments))
    assert run.body["pipeline_version_reference"] == {
        "pipeline_id": submitted.pipeline_id, "pipeline_version_id": submitted.version_id}
    assert run.body["runtime_config"]["parameters"] == PARAMS
    assert "pipeline_spec" not in run.body
    assert submitted.run_id in kfp_server.runs
    assert submitted.url == f"{kfp_server.url}/#/runs/details/{submitted.run_id}"


def test_a_second_submit_adds_a_version_to_the_same_pipeline_and_reuses_the_experiment(
        kfp_server, client, package, tmp_path):
    changed = compile_package(tmp_path / "changed.yaml", default_epochs=5)
    first = submit(client, package, "cxr-train", "cxr", PARAMS)
    second = submit(client, changed, "cxr-train", "cxr", {"epochs": 9})

    assert len(kfp_server.requests_to("POST", "/pipelines/upload")) == 1
    assert len(kfp_server.pipelines) == 1 and second.pipeline_id == first.pipeline_id
    versions = kfp_server.requests_to("POST", "/pipelines/upload_version")
    assert [v.query["pipelineid"] for v in versions] == [first.pipeline_id, first.pipeline_id]
    assert versions[1].files["uploadfile"] == content(changed)
    assert second.version_id != first.version_id
    lookups = kfp_server.requests_to("GET", "/pipelines")
    assert [json.loads(r.query["filter"])["predicates"][0]["stringValue"] for r in lookups] == ["cxr-train"] * 2

    assert len(kfp_server.requests_to("POST", "/experiments")) == 1
    runs = kfp_server.requests_to("POST", "/runs")
    assert runs[0].body["experiment_id"] == runs[1].body["experiment_id"]
    assert runs[1].body["pipeline_version_reference"]["pipeline_version_id"] == second.version_id
    assert runs[1].body["runtime_config"]["parameters"] == {"epochs": 9}


def test_the_same_package_sent_twice_within_a_second_reuses_its_version(kfp_server, client, package, monkeypatch):
    monkeypatch.setattr(kfp_client, "_utc_stamp", lambda: "20250101-030000")
    first = submit(client, package, "cxr-train", "cxr", PARAMS)
    second = submit(client, package, "cxr-train", "cxr", PARAMS)

    assert second.version_id == first.version_id and second.run_id != first.run_id
    assert len(kfp_server.requests_to("POST", "/pipelines/upload_version")) == 1
    [lookup] = kfp_server.requests_to("GET", f"/pipelines/{first.pipeline_id}/versions")
    name = f"cxr-train-20250101-030000-{hashlib.sha256(content(package)).hexdigest()[:8]}"
    assert json.loads(lookup.query["filter"])["predicates"][0]["stringValue"] == name


def test_param_texts_take_the_types_the_package_declares(package):
    assert package_params(package, {"epochs": "3", "data_root": "007"}) == {"epochs": 3, "data_root": "007"}
    with pytest.raises(ValueError, match="--param epochs=three: the pipeline declares epochs as NUMBER_INTEGER"):
        package_params(package, {"epochs": "three"})


@pytest.mark.parametrize("params, refused", [
    ({"epochs": "3"}, "input parameter epochs requires type double or integer"),
    ({"epochs": True}, "input parameter epochs requires type double or integer"),
    ({"data_root": {"bucket": "b"}}, "input parameter data_root requires type string"),
])
def test_the_fake_server_refuses_a_value_of_another_type_than_declared(kfp_server, client, package, params, refused):
    pipeline_id, version_id = kfp_client.upload_version(client, package, "cxr-train")
    with pytest.raises(kfp_server_api.exceptions.ApiException, match=refused):
        client.run_pipeline(client.create_experiment(name="cxr").experiment_id, "typed", pipeline_id=pipeline_id,
                            version_id=version_id, params=params)


def test_the_fake_server_refuses_more_than_ten_concurrent_runs(kfp_server, client, package):
    pipeline_id, version_id = kfp_client.upload_version(client, package, "cxr-train")
    with pytest.raises(kfp_server_api.exceptions.ApiException, match="at least 1 and at most 10. Received 11"):
        client.create_recurring_run(client.create_experiment(name="cxr").experiment_id, "busy",
                                    cron_expression="0 0 3 * * *", max_concurrency=11, pipeline_id=pipeline_id,
                                    version_id=version_id)
    with pytest.raises(ValueError, match="at most 10. Received 11"):
        schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "busy", max_concurrency=11)


def test_an_explicit_version_name_is_uploaded_as_given(kfp_server, client, package):
    pipeline_id, version_id = kfp_client.upload_version(client, package, "cxr-train", version_name="v1.2.0")
    assert kfp_server.versions[version_id] == {**kfp_server.versions[version_id], "display_name": "v1.2.0",
                                               "pipeline_id": pipeline_id}


def test_schedule_sends_the_cron_concurrency_catchup_and_pipeline_version(kfp_server, client, package):
    recurring_run_id = schedule(client, package, "cxr-train", "cxr", " 0 0 3 * * * ", "nightly",
                                max_concurrency=2, catchup=False, params={"epochs": 1})

    [created] = kfp_server.requests_to("POST", "/recurringruns")
    [version_id] = [v for v in kfp_server.versions if kfp_server.versions[v]["display_name"] != "cxr-train"]
    assert created.body["display_name"] == "nightly"
    assert created.body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert created.body["max_concurrency"] == 2
    assert created.body["no_catchup"] is True
    assert created.body["mode"] == "ENABLE"
    assert created.body["pipeline_version_reference"]["pipeline_version_id"] == version_id
    assert created.body["runtime_config"]["parameters"] == {"epochs": 1}
    assert recurring_run_id in kfp_server.recurring_runs

    schedule(client, package, "cxr-train", "cxr", "0 0 4 * * *", "catching-up", catchup=True)
    assert kfp_server.requests_to("POST", "/recurringruns")[1].body["no_catchup"] is False


def test_a_five_field_unix_cron_is_refused_before_any_request(kfp_server, client, package):
    before = len(kfp_server.requests)
    with pytest.raises(ValueError) as refused:
        schedule(client, package, "cxr-train", "cxr", "0 3 * * *", "nightly")
    message = str(refused.value)
    assert "six fields" in message and "seconds first" in message and "'0 0 3 * * *'" in message
    assert "five-field Unix cron; prepend the seconds, e.g. '0 0 3 * * *'" in message
    assert len(kfp_server.requests) == before


@pytest.mark.parametrize("expression, field", [
    ("x 0 3 * * *", "seconds"),
    ("0 60 3 * * *", "minutes"),
    ("0 */0 3 * * *", "minutes"),
    ("0 0 24 * * *", "hours"),
    ("0 0 5-2 * * *", "hours"),
    ("0 0 3 0 * *", "day of month"),
    ("0 0 3 * 13 *", "month"),
    ("0 0 3 * FOO *", "month"),
    ("0 0 3 * * 7", "day of week"),
    ("0 0 3 * * MON-", "day of week"),
])
def test_an_invalid_cron_field_is_named(expression, field):
    with pytest.raises(ValueError, match=f"Invalid {field} field") as refused:
        validate_cron(expression)
    assert "seconds first" in str(refused.value)


@pytest.mark.parametrize("expression", [
    "0 0 3 * * *", "0 0 9 ? * 2-6", "*/30 0-59/15 1,13 1-31/2 JAN-jun MON,fri", "59 59 23 31 DEC SAT", "5/10 * * * * ?",
])
def test_valid_six_field_crons_are_accepted_and_stripped(expression):
    assert validate_cron(f"  {expression}\n") == expression


def test_list_schedules_returns_what_was_created_across_pages(kfp_server, client, package, monkeypatch):
    for index in range(5):
        schedule(client, package, "cxr-train", "cxr", f"0 {index} 3 * * *", f"s{index}", max_concurrency=index + 1)
    monkeypatch.setattr(kfp_client, "_SCHEDULE_PAGE_SIZE", 2)
    before = len(kfp_server.requests)

    schedules = list_schedules(client)

    assert [(s.name, s.cron, s.status, s.max_concurrency) for s in schedules] == [
        (f"s{i}", f"0 {i} 3 * * *", "ENABLED", i + 1) for i in range(5)]
    assert [s.id for s in schedules] == list(kfp_server.recurring_runs)
    assert [s.pipeline_version_id for s in schedules] == [
        r["pipeline_version_reference"]["pipeline_version_id"] for r in kfp_server.recurring_runs.values()]
    pages = kfp_server.requests[before:]
    assert [(r.method, r.path, r.query["page_token"], r.query["page_size"]) for r in pages] == [
        ("GET", "/apis/v2beta1/recurringruns", token, "2") for token in ("", "offset-2", "offset-4")]

    table = schedules_table(schedules).splitlines()
    assert table[0].split()[:2] == ["NAME", "CRON"] and len(table) == 6
    assert table[3].split()[:7] == ["s2", "0", "2", "3", "*", "*", "*"]
    assert schedules_table([]) == "No schedules."


def test_list_schedules_of_one_experiment_asks_by_experiment_id(kfp_server, client, package):
    schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "nightly")
    schedule(client, package, "cxr-train", "other", "0 0 4 * * *", "elsewhere")

    assert [s.name for s in list_schedules(client, experiment="other")] == ["elsewhere"]
    [other_id] = [e for e, doc in kfp_server.experiments.items() if doc["display_name"] == "other"]
    assert kfp_server.requests_to("GET", "/recurringruns")[-1].query["experiment_id"] == other_id


def test_unschedule_by_name_or_id_deletes_that_recurring_run(kfp_server, client, package):
    keep = schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "nightly")
    gone = schedule(client, package, "cxr-train", "cxr", "0 0 4 * * *", "weekly")

    removed = unschedule(client, "weekly")

    assert removed.id == gone and removed.name == "weekly"
    assert [r.path for r in kfp_server.requests if r.method == "DELETE"] == [f"/apis/v2beta1/recurringruns/{gone}"]
    assert list(kfp_server.recurring_runs) == [keep]
    assert unschedule(client, keep).name == "nightly" and not kfp_server.recurring_runs


def test_unscheduling_an_unknown_name_names_the_existing_schedules(kfp_server, client, package):
    schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "nightly")
    schedule(client, package, "cxr-train", "cxr", "0 0 4 * * SUN", "weekly")

    with pytest.raises(ValueError, match="'daily'.*existing schedules: nightly, weekly"):
        unschedule(client, "daily")
    assert not [r for r in kfp_server.requests if r.method == "DELETE"]


def test_a_name_shared_by_two_schedules_asks_for_the_id(kfp_server, client, package):
    first = schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "nightly")
    [version] = [v for v in kfp_server.versions.values() if v["display_name"] != "cxr-train"]
    second = client.create_recurring_run(next(iter(kfp_server.experiments)), "nightly", cron_expression="0 0 5 * * *",
                                         pipeline_id=version["pipeline_id"],
                                         version_id=version["pipeline_version_id"]).recurring_run_id

    with pytest.raises(ValueError, match=f"2 schedules are named 'nightly' \\(ids {first}, {second}\\); pass the id"):
        unschedule(client, "nightly")
    assert not [r for r in kfp_server.requests if r.method == "DELETE"]
    assert unschedule(client, second).id == second


def test_schedule_refuses_a_name_already_in_use_without_uploading(kfp_server, client, package):
    schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "nightly")
    uploads = len(kfp_server.requests_to("POST", "/pipelines/upload_version"))

    with pytest.raises(ValueError, match="named 'nightly' already exists.*unschedule it first"):
        schedule(client, package, "cxr-train", "cxr", "0 0 4 * * *", "nightly")
    assert len(kfp_server.requests_to("POST", "/pipelines/upload_version")) == uploads
    assert len(kfp_server.recurring_runs) == 1


def test_the_token_and_cookies_reach_the_server_on_every_request(kfp_server, package):
    client = connect(Connection(host=kfp_server.url, token="s3cret-token", cookies="authservice_session=abc"))
    submit(client, package, "cxr-train", "cxr", PARAMS)
    schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "nightly")
    unschedule(client, "nightly")

    assert {r.method for r in kfp_server.requests} == {"GET", "POST", "DELETE"}
    assert {r.headers.get("authorization") for r in kfp_server.requests} == {"Bearer s3cret-token"}
    assert {r.headers.get("cookie") for r in kfp_server.requests} == {"authservice_session=abc"}


def test_without_a_token_or_cookies_no_credentials_are_sent(kfp_server, client, package):
    submit(client, package, "cxr-train", "cxr", PARAMS)
    assert not [r for r in kfp_server.requests if "authorization" in r.headers or "cookie" in r.headers]


@pytest.mark.parametrize("namespace", ["team-a", "kubeflow"])
def test_the_namespace_goes_with_experiment_lookup_and_creation_and_schedule_listing(package, namespace):
    with FakeKfpServer(multi_user=True) as kfp_server:
        client = connect(Connection(host=kfp_server.url, namespace=namespace))
        submit(client, package, "cxr-train", "cxr", PARAMS)
        schedule(client, package, "cxr-train", "cxr", "0 0 3 * * *", "nightly")
        assert [s.name for s in list_schedules(client)] == ["nightly"]

        assert {r.query["namespace"] for r in kfp_server.requests_to("GET", "/experiments")} == {namespace}
        [created] = kfp_server.requests_to("POST", "/experiments")
        assert created.body["namespace"] == namespace
        assert {r.query["namespace"] for r in kfp_server.requests_to("GET", "/recurringruns")} == {namespace}
        assert kfp_server.recurring_runs[next(iter(kfp_server.recurring_runs))]["namespace"] == namespace


def test_a_multi_user_server_refuses_experiments_without_a_namespace(package):
    with FakeKfpServer(multi_user=True) as kfp_server:
        client = connect(Connection(host=kfp_server.url))
        assert kfp_server.requests_to("GET", "/healthz"), "kfp.Client asks healthz when it has no namespace"
        with pytest.raises(kfp_server_api.ApiException) as refused:
            submit(client, package, "cxr-train", "cxr", PARAMS)
        assert refused.value.status == 400 and "namespace is required" in json.loads(refused.value.body)["message"]


def test_unknown_ids_are_answered_404_with_a_kfp_error_body(client):
    with pytest.raises(kfp_server_api.ApiException) as missing:
        client.delete_recurring_run("recurring-9999")
    assert missing.value.status == 404
    assert json.loads(missing.value.body) == {"error": "RecurringRun recurring-9999 not found: ResourceNotFoundError",
                                              "code": 5, "message": "RecurringRun recurring-9999 not found: "
                                                                    "ResourceNotFoundError", "details": []}


def _with_schema_version(package: str, tmp_path, version: str) -> str:
    with open(package) as f:
        documents = list(yaml.safe_load_all(f))
    documents[0]["schemaVersion"] = version
    path = tmp_path / f"schema-{version}.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def test_the_fake_server_refuses_a_spec_of_another_schema_version_as_kfp_does(kfp_server, client, package, tmp_path):
    with pytest.raises(kfp_server_api.ApiException) as refused:
        submit(client, _with_schema_version(package, tmp_path, "2.0.0"), "cxr-train", "cxr", PARAMS)
    assert refused.value.status == 400
    assert "KFP only supports schema version 2.1.0, but the pipeline spec has version 2.0.0" in refused.value.body
    assert kfp_server.pipelines == {} and kfp_server.runs == {}


def test_the_fake_server_refuses_a_run_without_a_required_parameter_as_kfp_does(kfp_server, client, tmp_path):
    @dsl.component(base_image="python:3.10-slim")
    def train(epochs: int):
        print(epochs)

    @dsl.pipeline(name="cxr-required")
    def required(epochs: int):
        train(epochs=epochs)

    compiler.Compiler().compile(required, str(tmp_path / "required.yaml"))
    with pytest.raises(kfp_server_api.ApiException) as refused:
        submit(client, str(tmp_path / "required.yaml"), "cxr-required", "cxr", {})
    assert "parameter epochs is not optional, yet has neither default value nor user provided value" in (
        refused.value.body)
    with pytest.raises(kfp_server_api.ApiException, match="not required by pipeline"):
        submit(client, str(tmp_path / "required.yaml"), "cxr-required", "cxr", {"epochs": 2, "seed": 1})
    assert kfp_server.runs == {}
    submit(client, str(tmp_path / "required.yaml"), "cxr-required", "cxr", {"epochs": 2})
    assert len(kfp_server.runs) == 1
