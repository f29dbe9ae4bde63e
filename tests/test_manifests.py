"""Every Kubernetes manifest the repository ships, validated against Kubernetes' own OpenAPI schemas, as the
API server validates an object (kubernetes-validate, its strict schemas: an unknown field is refused, as
`kubectl apply --validate=strict` refuses it). Checked against the oldest Kubernetes the deployment guide
supports and the newest the package knows, with the GPU overlay's patch merged onto its base the way
kustomize's strategic merge does for these fields (lists of named items merged by name)."""
import copy
import glob
import os
import shutil
import subprocess

import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# kubernetes-validate lies beside the environment, off its path (requirements-schemas.in says why).
SCHEMAS = os.path.join(ROOT, ".venv", "k8s-schemas")
if SCHEMAS not in sys.path:
    sys.path.append(SCHEMAS)
import kubernetes_validate  # noqa: E402
OLDEST_SUPPORTED = "1.29"
VERSIONS = (OLDEST_SUPPORTED, kubernetes_validate.latest_version())
KUSTOMIZE_KINDS = {"Kustomization"}  # kustomize's own files, not Kubernetes objects
PATCHES = {os.path.join("serving", "gpu", "deployment-gpu-patch.yaml"): os.path.join("serving", "k8s", "deployment.yaml")}
MERGE_KEYS = ("name", "mountPath", "containerPort")  # the patchMergeKey of containers, volumes, env, mounts, ports


def _documents(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def manifest_files():
    """Every YAML file of the repository holding a Kubernetes object (kind and apiVersion)."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True)):
        relative = os.path.relpath(path, ROOT)
        if relative.split(os.sep)[0] in (".venv", "demo", "build", "tests"):
            continue
        if any("apiVersion" in doc and "kind" in doc and doc["kind"] not in KUSTOMIZE_KINDS
               for doc in _documents(path) if isinstance(doc, dict)):
            found.append(relative)
    return found


def strategic_merge(base, patch):
    """kustomize's strategic merge for what the overlays patch: maps merged key by key, lists of named items
    merged by their merge key, other lists replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and patch and all(isinstance(i, dict) for i in base + patch):
        key = next((k for k in MERGE_KEYS if all(k in item for item in base + patch)), None)
        if key is not None:
            merged = [copy.deepcopy(item) for item in base]
            for item in patch:
                at = [i for i, old in enumerate(merged) if old[key] == item[key]]
                if at:
                    merged[at[0]] = strategic_merge(merged[at[0]], item)
                else:
                    merged.append(copy.deepcopy(item))
            return merged
    return copy.deepcopy(patch)


def objects(relative):
    """The file's Kubernetes objects; a patch merged onto the object it patches."""
    docs = [d for d in _documents(os.path.join(ROOT, relative)) if d.get("kind") not in KUSTOMIZE_KINDS]
    if relative in PATCHES:
        bases = _documents(os.path.join(ROOT, PATCHES[relative]))
        return [strategic_merge(next(b for b in bases if (b["kind"], b["metadata"]["name"]) ==
                                     (d["kind"], d["metadata"]["name"])), d) for d in docs]
    return docs


def test_the_repository_s_manifests_are_found():
    found = manifest_files()
    for expected in ("serving/k8s/deployment.yaml", "serving/k8s/service.yaml", "serving/k8s/network-policy.yaml",
                     "serving/k8s/models-pvc.yaml", "serving/k8s/request-logs-pvc.yaml",
                     "serving/gpu/deployment-gpu-patch.yaml", "kubeflow/data-pvc.yaml",
                     "serving/k8s/dicom-node/deployment.yaml", "serving/k8s/dicom-node/service.yaml",
                     "serving/k8s/dicom-node/network-policy.yaml", "serving/k8s/dicom-node/queue-pvc.yaml"):
        assert expected in found, found


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("relative", manifest_files())
def test_every_manifest_is_valid_against_the_kubernetes_schemas(relative, version):
    for obj in objects(relative):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.absolute_path)
            pytest.fail(f"{relative}: {obj['kind']}/{obj['metadata']['name']} at {path}: {error.message}")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(runAsNonroot=True),
     "runAsNonroot"),  # a misspelt field, which strict validation refuses
    (lambda d: d["spec"].update(replicas="two"), "'two' is not of type 'integer'"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "'name' is a required property"),
])
def test_the_validation_refuses_what_the_api_server_refuses(change, message):
    [deployment] = [d for d in objects("serving/k8s/deployment.yaml") if d["kind"] == "Deployment"]
    broken = copy.deepcopy(deployment)
    change(broken)
    with pytest.raises(kubernetes_validate.ValidationError) as refused:
        kubernetes_validate.validate(broken, OLDEST_SUPPORTED, strict=True)
    assert message in str(refused.value.message)


def test_the_merged_gpu_deployment_keeps_the_base_and_takes_the_patch():
    [merged] = objects("serving/gpu/deployment-gpu-patch.yaml")
    [base] = [d for d in _documents(os.path.join(ROOT, "serving/k8s/deployment.yaml")) if d["kind"] == "Deployment"]
    names = [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]]
    assert names == [c["name"] for c in base["spec"]["template"]["spec"]["containers"]]
    assert merged["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-gpu")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("entry", ["serving", "serving/gpu"])
def test_what_kustomize_builds_is_valid_too(entry):
    built = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, entry)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    for obj in (d for d in yaml.safe_load_all(built.stdout) if d):
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_dicom_node_pod_runs_flags_cxr_dicom_node_takes_and_no_serving_selector_picks_it():
    from cxr.cli import _parser
    [deployment] = [d for d in objects("serving/k8s/dicom-node/deployment.yaml") if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(container["command"][1:] + container["args"])
    assert (args.queue_dir, args.port) == ("/queue", 11112)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/queue", "/tls"} <= mounts and args.cert_file.startswith("/tls/")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for relative in ("serving/k8s/service.yaml", "serving/k8s/network-policy.yaml"):
        [obj] = objects(relative)
        selector = obj["spec"].get("selector") or obj["spec"]["podSelector"]["matchLabels"]
        assert not all(pod_labels.get(k) == v for k, v in selector.items()), relative
    [policy] = objects("serving/k8s/dicom-node/network-policy.yaml")
    [rule] = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [11112] and all("ipBlock" in f for f in rule["from"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_keeps_the_serving_and_the_dicom_node_pods_apart():
    built = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "serving")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built.stdout) if d}
    node_pod = docs[("Deployment", "cxr-dicom-node")]["spec"]["template"]["metadata"]["labels"]
    serving_pod = docs[("Deployment", "cxr-serving")]["spec"]["template"]["metadata"]["labels"]
    for name, pod, other in (("cxr-serving", serving_pod, node_pod), ("cxr-dicom-node", node_pod, serving_pod)):
        selector = docs[("Service", name)]["spec"]["selector"]
        assert all(pod.get(k) == v for k, v in selector.items())
        assert not all(other.get(k) == v for k, v in selector.items()), name


def test_the_dicom_node_s_memory_limit_covers_two_workers_converting_the_largest_image_the_rules_let_through():
    """From the node's measured memory (bench/RESULTS.md, "DICOM node"): its cost per pixel per worker, scaled
    to the largest image the conversion takes (contract's limits; 8 bits a pixel gives the most pixels)."""
    import re
    from cxr import contract
    from cxr.serving.dicom_node.settings import NodeSettings
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), encoding="utf-8") as f:
        line = next(l for l in f if l.startswith("Memory: `cxr dicom-node`"))
    size, rest, peak = (int(v) for v in re.search(
        r"images of (\d+) x \d+ px.*resident (\d+) MiB at rest, (\d+) MiB at peak", line).groups())
    workers = NodeSettings.__dataclass_fields__["workers"].default
    per_pixel = (peak - rest) * 2**20 / (workers * size * size)
    largest = min(contract.MAX_IMAGE_PIXELS, contract.MAX_IMAGE_BYTES)  # Bits Allocated 8: a byte a pixel
    needed = rest * 2**20 + workers * largest * per_pixel
    [deployment] = [d for d in objects("serving/k8s/dicom-node/deployment.yaml") if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert int(limit[:-2]) * 2**30 >= needed, (limit, needed / 2**30)
