"""The TF Serving deployment files agree with each other, with TF Serving and with the pipeline.

The config files are parsed into TF Serving's own protos, as the server parses them, and the
Kubernetes files are read as kustomize reads them: a port, path or file name that drifts in
one file and not in the others fails here rather than in a pod that never becomes ready.
"""
import os
import shutil
import subprocess

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from cxr import cli
from cxr.pipeline.config import PipelineConfig, load_config
from cxr.serving.server_settings import ProxySettings

SERVING = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "serving")
CPU_ENTRY = SERVING
GPU_ENTRY = os.path.join(SERVING, "gpu")
CONFIG_MAP = "cxr-serving-config"
MODELS_CLAIM = "cxr-models"
CONTAINER = "tensorflow-serving"
TF_SERVING_IMAGE = "tensorflow/serving"


def _tf_serving_messages():
    """MonitoringConfig and BatchingParameters, which tensorflow-serving-api does not ship.

    Field for field as in tensorflow/serving 2.16.1 (config/monitoring_config.proto and
    servables/tensorflow/session_bundle_config.proto), so text_format rejects what the
    server would reject: an unknown field, or `max_batch_size: 32` for a wrapper field.
    """
    f = descriptor_pb2.FieldDescriptorProto
    optional, repeated = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    messages = {
        "PrometheusConfig": [("enable", 1, f.TYPE_BOOL, None, optional),
                             ("path", 2, f.TYPE_STRING, None, optional)],
        "MonitoringConfig": [("prometheus_config", 1, f.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig",
                              optional)],
        "BatchingParameters": [
            ("max_batch_size", 1, f.TYPE_MESSAGE, ".google.protobuf.Int64Value", optional),
            ("batch_timeout_micros", 2, f.TYPE_MESSAGE, ".google.protobuf.Int64Value", optional),
            ("max_enqueued_batches", 3, f.TYPE_MESSAGE, ".google.protobuf.Int64Value", optional),
            ("num_batch_threads", 4, f.TYPE_MESSAGE, ".google.protobuf.Int64Value", optional),
            ("thread_pool_name", 5, f.TYPE_MESSAGE, ".google.protobuf.StringValue", optional),
            ("allowed_batch_sizes", 6, f.TYPE_INT64, None, repeated),
            ("pad_variable_length_inputs", 7, f.TYPE_BOOL, None, optional),
            ("enable_large_batch_splitting", 8, f.TYPE_MESSAGE, ".google.protobuf.BoolValue", optional),
            ("max_execution_batch_size", 9, f.TYPE_MESSAGE, ".google.protobuf.Int64Value", optional),
        ],
    }
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="cxr_tests/tf_serving_config.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers.name])
    for name, fields in messages.items():
        message = file_proto.message_type.add(name=name)
        for field_name, number, kind, type_name, label in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(file_proto)
    factory = message_factory.MessageFactory(pool)
    return [factory.GetPrototype(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in ("MonitoringConfig", "BatchingParameters")]


MonitoringConfig, BatchingParameters = _tf_serving_messages()


# --- reading the files ---------------------------------------------------------------------

def load_yaml(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def kustomization(directory):
    (doc,) = load_yaml(os.path.join(directory, "kustomization.yaml"))
    return doc


def kustomization_dirs(entry):
    """The entry's kustomization folder and every folder it pulls in as a resource, depth first."""
    found = [os.path.normpath(entry)]
    for resource in kustomization(entry).get("resources", []):
        path = os.path.join(entry, resource)
        if os.path.isdir(path):
            found += kustomization_dirs(path)
    return found


def resource_docs(entry):
    """Every manifest the entry's kustomizations list as files, as parsed documents."""
    docs = []
    for directory in kustomization_dirs(entry):
        for resource in kustomization(directory).get("resources", []):
            path = os.path.join(directory, resource)
            if os.path.isfile(path):
                docs += load_yaml(path)
    return docs


# The serving workload's objects; the DICOM node's (serving/k8s/dicom-node, cxr-dicom-node) sit beside them
# in the same kustomization and are checked in tests/test_manifests.py.
SERVING_APP = "cxr-serving"


def the_one(docs, kind, name=None):
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def generated_config_files(entry):
    """{file name in the ConfigMap: path on disk} for the generator of CONFIG_MAP under entry."""
    generators = [(directory, g) for directory in kustomization_dirs(entry)
                  for g in kustomization(directory).get("configMapGenerator", []) if g["name"] == CONFIG_MAP]
    assert len(generators) == 1, f"{entry}: expected one generator of {CONFIG_MAP}, found {len(generators)}"
    directory, generator = generators[0]
    return {os.path.basename(f): os.path.join(directory, f) for f in generator["files"]}


def parse_pbtxt(path, message_class):
    with open(path) as f:
        return text_format.Parse(f.read(), message_class())


def deployment(entry=CPU_ENTRY):
    return the_one(resource_docs(entry), "Deployment", SERVING_APP)


def service():
    return the_one(resource_docs(CPU_ENTRY), "Service", SERVING_APP)


def pod_spec(deploy):
    return deploy["spec"]["template"]["spec"]


def container(deploy):
    """The TF Serving container of a Deployment (or of a patch of one)."""
    (found,) = [c for c in pod_spec(deploy)["containers"] if c["name"] == CONTAINER]
    return found


def flags(args):
    """{'--port': '8500', ...} from ['--port=8500', ...]; each flag once."""
    parsed = dict(arg.split("=", 1) for arg in args)
    assert len(parsed) == len(args), f"a flag is given twice or without a value: {args}"
    return parsed


def server_flags(deploy=None):
    return flags(container(deploy or deployment())["args"])


def container_port(port_or_name, c=None):
    """A container port number, from a number or the name of one of the container's ports."""
    c = c or container(deployment())
    if isinstance(port_or_name, int):
        return port_or_name
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port_or_name]
    return number


def rest_port():
    return int(server_flags()["--rest_api_port"])


def grpc_port():
    return int(server_flags()["--port"])


def mount_path(volume_name_or_claim, deploy=None):
    """The mount path of the volume with that name, or of the volume that holds that claim."""
    deploy = deploy or deployment()
    volumes = pod_spec(deploy)["volumes"]
    (volume,) = [v for v in volumes if v["name"] == volume_name_or_claim
                 or v.get("persistentVolumeClaim", {}).get("claimName") == volume_name_or_claim]
    (mount,) = [m for m in container(deploy)["volumeMounts"] if m["name"] == volume["name"]]
    return mount


def model_config():
    config = parse_pbtxt(generated_config_files(CPU_ENTRY)["model_config.pbtxt"], ModelServerConfig)
    (model,) = config.model_config_list.config
    return model


def monitoring_config():
    return parse_pbtxt(generated_config_files(CPU_ENTRY)["monitoring_config.pbtxt"], MonitoringConfig)


def gpu_patch():
    (patch_entry,) = kustomization(GPU_ENTRY)["patches"]
    (patch,) = load_yaml(os.path.join(GPU_ENTRY, patch_entry["path"]))
    return patch


def image_version(image):
    repository, tag = image.rsplit(":", 1)
    return repository, tag


# --- the model -------------------------------------------------------------------------------

def test_the_served_model_is_the_one_the_pipeline_pushes():
    model = model_config()
    assert model.name == PipelineConfig().model_name
    assert model.model_platform == "tensorflow"


def test_the_base_path_is_the_pushers_model_folder_on_the_models_volume():
    # Pusher: <serving_dir>/<model_name>/<version>/saved_model.pb, serving_dir being the claim.
    mount = mount_path(MODELS_CLAIM)
    assert model_config().base_path == mount["mountPath"] + "/" + PipelineConfig().model_name
    assert mount["readOnly"] is True
    claim = the_one(resource_docs(CPU_ENTRY), "PersistentVolumeClaim", MODELS_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # the Kubeflow pipeline's Pusher writes to it


def test_the_kubeflow_example_pushes_onto_the_claim_tf_serving_reads_at_the_same_path():
    example = load_config("study", os.path.join(os.path.dirname(SERVING), "kubeflow", "cluster.example.yaml"))
    assert example.kubeflow.mounts()[example.serving_dir] == MODELS_CLAIM
    assert model_config().base_path == f"{example.serving_dir}/{example.model_name}"


def test_every_version_label_points_at_a_served_version():
    model = model_config()
    versions = set(model.model_version_policy.specific.versions)
    labels = dict(model.version_labels)
    assert {"stable", "canary"} <= set(labels)
    assert set(labels.values()) <= versions, f"labels {labels} point outside the served versions {versions}"
    assert labels["stable"] != labels["canary"]
    assert all(v > 0 for v in versions)


def test_a_fresh_server_may_assign_the_labels_before_its_versions_load():
    # Without the flag TF Serving rejects a label on a version not yet AVAILABLE, which at
    # start-up is every version: the pod would exit on its own config.
    assert model_config().version_labels
    for deploy in (deployment(), gpu_patch()):
        assert server_flags(deploy).get("--allow_version_labels_for_unavailable_models") == "true"


# --- ports, probes, metrics ------------------------------------------------------------------

def test_the_container_declares_the_ports_the_server_listens_on():
    ports = {p["name"]: p["containerPort"] for p in container(deployment())["ports"]}
    assert ports == {"grpc": grpc_port(), "http": rest_port()}
    assert (grpc_port(), rest_port()) == (8500, 8501)


def test_the_service_reaches_the_model_through_the_front_only():
    svc = service()
    assert svc["spec"]["type"] == "ClusterIP"
    targets = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert list(targets) == ["https"]  # no gRPC: it would skip the front's limits, TLS and log
    proxy = proxy_container()
    (proxy_port,) = [p["containerPort"] for p in proxy["ports"] if p["name"] == targets["https"]]
    assert proxy_port == proxy_settings().port


def test_the_network_policy_lets_in_the_front_s_port_only():
    policy = the_one(resource_docs(CPU_ENTRY), "NetworkPolicy", SERVING_APP)
    assert policy["spec"]["podSelector"]["matchLabels"] == pod_spec_labels()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [proxy_settings().port]
    assert rule["from"] and all("namespaceSelector" in source or "podSelector" in source for source in rule["from"])
    assert grpc_port() not in [p["port"] for p in rule["ports"]] and rest_port() not in [p["port"] for p in rule["ports"]]


def pod_spec_labels():
    return deployment()["spec"]["template"]["metadata"]["labels"]


def test_the_front_takes_mutual_tls_from_a_secret_only_its_user_reads():
    settings = proxy_settings()
    assert settings.tls_cert_file and settings.tls_key_file and settings.tls_client_ca_file
    (mount,) = [m for m in proxy_container()["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] and all(path.startswith(mount["mountPath"] + "/") for path in (
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file))
    (volume,) = [v for v in pod_spec(deployment())["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["defaultMode"] == 0o400


def test_the_proxy_runs_cxr_s_own_command_line_against_tf_serving_in_the_same_pod():
    """Its arguments are parsed by the parser `cxr log-proxy` uses, so a flag that drifts fails here."""
    settings = proxy_settings()
    assert settings.upstream == f"http://localhost:{rest_port()}" and settings.host == "0.0.0.0"
    request_log = settings.request_log()
    assert request_log.label_rates == {"canary": 1.0} and 0 < request_log.sample_rate < 1
    (volume,) = [v for v in pod_spec(deployment())["volumes"] if v["name"] == "request-logs"]
    (mount,) = [m for m in proxy_container()["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == settings.request_log_root and not mount.get("readOnly")
    assert volume["persistentVolumeClaim"]["claimName"] in {
        doc["metadata"]["name"] for doc in resource_docs(CPU_ENTRY) if doc["kind"] == "PersistentVolumeClaim"}
    assert proxy_container()["securityContext"]["runAsNonRoot"] is True


def test_the_proxy_is_probed_on_its_own_port_and_drains_within_the_grace_period():
    proxy, settings = proxy_container(), proxy_settings()
    (port,) = [p for p in proxy["ports"] if p["containerPort"] == settings.port]
    # The kubelet has no client certificate for the mutual-TLS port: the probes open it without HTTP.
    assert proxy["readinessProbe"]["tcpSocket"]["port"] == port["name"]
    assert proxy["livenessProbe"]["tcpSocket"]["port"] == port["name"]
    pre_stop = proxy["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert float(pre_stop[1]) + settings.drain_seconds < pod_spec(deployment())["terminationGracePeriodSeconds"]


def proxy_container():
    (found,) = [c for c in pod_spec(deployment())["containers"] if c["name"] == "request-log-proxy"]
    return found


def proxy_settings():
    proxy = proxy_container()
    assert proxy["command"] == ["cxr", "log-proxy"]
    return cli._settings_from(ProxySettings, cli._parser().parse_args(proxy["command"][1:] + proxy["args"]))


def test_the_service_and_the_deployment_select_the_deployments_pods():
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    for selector in (service()["spec"]["selector"], deployment()["spec"]["selector"]["matchLabels"]):
        assert selector and selector.items() <= pod_labels.items()


def test_the_probes_ask_tf_serving_for_the_model_status():
    c = container(deployment())
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == f"/v1/models/{PipelineConfig().model_name}"
        assert container_port(get["port"]) == rest_port()
    assert c["livenessProbe"]["initialDelaySeconds"] > c["readinessProbe"]["initialDelaySeconds"]


def test_prometheus_scrapes_the_path_and_port_the_server_exports_metrics_on():
    prometheus = monitoring_config().prometheus_config
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert prometheus.enable
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == prometheus.path
    assert int(annotations["prometheus.io/port"]) == rest_port()


def test_every_container_runs_restricted_and_has_resource_limits():
    """Kubernetes' "restricted" Pod Security Standard: non-root, no privilege escalation, every capability
    dropped, the runtime's seccomp profile; a read-only root with /tmp on an emptyDir; no API token."""
    spec = pod_spec(deployment())
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"]:
        security = c["securityContext"]
        assert security["runAsNonRoot"] is True and security.get("runAsUser", 1000) != 0, c["name"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
        assert security["seccompProfile"]["type"] == "RuntimeDefault" and security["readOnlyRootFilesystem"] is True
        (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume, c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    models = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == "models"]
    assert models and all(m["readOnly"] for m in models)  # only the Pusher's task writes the models


# --- config files and kustomize --------------------------------------------------------------

def test_the_server_reads_its_config_files_from_the_mounted_config_map():
    deploy = deployment()
    (volume,) = [v for v in pod_spec(deploy)["volumes"] if v.get("configMap", {}).get("name") == CONFIG_MAP]
    mount = mount_path(volume["name"])
    assert mount["readOnly"] is True
    generated = generated_config_files(CPU_ENTRY)
    for flag in ("--model_config_file", "--monitoring_config_file"):
        path = server_flags()[flag]
        assert os.path.dirname(path) == mount["mountPath"]
        assert os.path.basename(path) in generated


def test_every_file_the_kustomizations_list_exists():
    for entry in (CPU_ENTRY, GPU_ENTRY):
        for directory in kustomization_dirs(entry):
            k = kustomization(directory)
            listed = (k.get("resources", []) + [p["path"] for p in k.get("patches", [])]
                      + [f for g in k.get("configMapGenerator", []) for f in g["files"]])
            for name in listed:
                path = os.path.join(directory, name)
                assert os.path.isfile(path) or os.path.isfile(os.path.join(path, "kustomization.yaml")), path
    # serving's and the DICOM node's: a claim or two, the Deployment, the Service, the NetworkPolicy, each
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in resource_docs(CPU_ENTRY))
    assert kinds == sorted((d["kind"], d["metadata"]["name"]) for d in resource_docs(GPU_ENTRY))
    assert kinds == sorted([(kind, app) for kind in ("Deployment", "Service", "NetworkPolicy")
                            for app in (SERVING_APP, "cxr-dicom-node")]
                           + [("PersistentVolumeClaim", c) for c in ("cxr-models", "cxr-request-logs",
                                                                      "cxr-dicom-node-queue")])


def test_the_config_files_parse_as_tf_serving_reads_them():
    # text_format raises on any field the server's proto does not have.
    for name, message_class in [("model_config.pbtxt", ModelServerConfig),
                                ("monitoring_config.pbtxt", MonitoringConfig),
                                ("batching_parameters.pbtxt", BatchingParameters)]:
        parsed = parse_pbtxt(generated_config_files(CPU_ENTRY)[name], message_class)
        assert parsed.ByteSize() > 0, name
    batching = parse_pbtxt(generated_config_files(CPU_ENTRY)["batching_parameters.pbtxt"], BatchingParameters)
    assert batching.max_batch_size.value == 32
    assert batching.batch_timeout_micros.value == 2000
    assert batching.num_batch_threads.value >= 1
    assert batching.max_enqueued_batches.value >= 1


def test_a_wrapper_field_written_as_a_plain_number_is_rejected():
    # The copy of BatchingParameters is strict the way the server is.
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size: 32", BatchingParameters())


# --- the GPU overlay -------------------------------------------------------------------------

def test_the_gpu_patch_targets_the_base_deployment_and_container():
    patch = gpu_patch()
    base = deployment()
    assert (patch["kind"], patch["metadata"]["name"]) == (base["kind"], base["metadata"]["name"])
    assert container(patch)  # by name, else the patch adds a second container


def test_the_gpu_variant_runs_the_gpu_image_of_the_same_tf_serving_release():
    base_repository, base_tag = image_version(container(deployment())["image"])
    gpu_repository, gpu_tag = image_version(container(gpu_patch())["image"])
    assert base_repository == gpu_repository == TF_SERVING_IMAGE
    assert gpu_tag == base_tag + "-gpu"


def test_the_gpu_variant_keeps_every_base_arg_and_turns_batching_on():
    base = server_flags()
    gpu = server_flags(gpu_patch())
    assert {k: gpu.get(k) for k in base} == base
    assert set(gpu) - set(base) == {"--enable_batching", "--batching_parameters_file"}
    assert gpu["--enable_batching"] == "true"
    batching_file = gpu["--batching_parameters_file"]
    assert os.path.dirname(batching_file) == os.path.dirname(base["--model_config_file"])
    assert os.path.basename(batching_file) in generated_config_files(GPU_ENTRY)


def test_the_gpu_variant_requests_a_gpu_and_lands_on_a_gpu_node():
    spec = pod_spec(gpu_patch())
    assert int(container(gpu_patch())["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("entry", [CPU_ENTRY, GPU_ENTRY], ids=["cpu", "gpu"])
def test_kustomize_builds_a_deployment_that_mounts_the_generated_config_map(entry):
    built = subprocess.run(["kubectl", "kustomize", entry], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    config_map = the_one(docs, "ConfigMap")
    deploy = the_one(docs, "Deployment", SERVING_APP)
    assert config_map["metadata"]["name"].startswith(CONFIG_MAP + "-")  # the hash suffix
    assert set(config_map["data"]) == set(generated_config_files(entry))
    (volume,) = [v for v in pod_spec(deploy)["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    expected = deployment() if entry == CPU_ENTRY else gpu_patch()
    built_container, expected_container = container(deploy), container(expected)
    assert (built_container["image"], built_container["args"]) == (expected_container["image"],
                                                                  expected_container["args"])


def _largest_served_request_bytes() -> float:
    """The most memory one request the limits let through added, from bench/RESULTS.md (Serving memory)."""
    results = os.path.join(os.path.dirname(SERVING), "bench", "RESULTS.md")
    with open(results, encoding="utf-8") as f:
        section = f.read().split("# Serving memory (`bench/serving_memory.py`)", 1)[1].split("\n# ", 1)[0]
    added = [float(cells[-2]) for cells in (line.split("|")[1:-1] for line in section.splitlines())
             if len(cells) == 5 and cells[2].strip() == "served"]
    assert len(added) >= 8, "the Serving memory table lost its rows"
    return max(added) * 1e6


def test_the_memory_limit_covers_the_model_and_the_largest_requests_at_once():
    largest_request_bytes = _largest_served_request_bytes()  # 450 MB: four 43 MB RGB images
    flags_ = server_flags()
    # REST requests reach TF Serving through the front only; its gRPC port is off the Service and the
    # NetworkPolicy, so its threads take no request from outside the pod.
    concurrent = int(flags_["--rest_api_num_threads"])
    limit = container(deployment())["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    runtime_and_two_versions = 1.0e9
    assert runtime_and_two_versions + concurrent * largest_request_bytes <= int(limit[:-2]) * 2**30


def test_the_proxy_s_memory_limit_covers_its_measured_peak_with_its_queue_full():
    results = os.path.join(os.path.dirname(SERVING), "bench", "RESULTS.md")
    with open(results, encoding="utf-8") as f:
        section = f.read().split("# Log proxy memory (`bench/proxy_memory.py`)", 1)[1].split("\n# ", 1)[0]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in section.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) >= 3, "the Log proxy memory table lost its rows"
    peak_bytes = max(float(row[3]) + float(row[4]) for row in rows) * 1e6
    limit = proxy_container()["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and peak_bytes * 1.25 <= int(limit[:-2]) * 2**30
