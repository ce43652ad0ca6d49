"""deploy/kubernetes/ without a cluster: every manifest against the Kubernetes schemas (kubernetes-validate, strict:
unknown fields fail) and KEDA's (its own types, via @kubernetes-models/keda), and every value a manifest hands the
code (flags, env, ports, paths, probes, names) checked against what the code accepts and serves."""

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml

from serverless_sd.gateway.config import parse_args
from serverless_sd.settings import Settings
from testkit.processes import ROOT, TEST_KEY

FOLDER = ROOT / "deploy" / "kubernetes"


def kustomization() -> dict:
    return yaml.safe_load((FOLDER / "kustomization.yaml").read_text())


def resources() -> list[dict]:
    return [doc for name in kustomization()["resources"] for doc in yaml.safe_load_all((FOLDER / name).read_text())]


def find(kind: str, name: str) -> dict:
    [found] = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def container(deployment: str) -> dict:
    return find("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def test_every_file_in_the_folder_is_a_resource_of_the_kustomization():
    listed = set(kustomization()["resources"]) | {"kustomization.yaml"}
    assert {p.name for p in FOLDER.glob("*.yaml")} == listed


@pytest.mark.parametrize("resource", [r for r in resources() if not r["apiVersion"].startswith("keda.sh/")],
                         ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_kubernetes_resources_are_valid_against_the_kubernetes_schemas(resource):
    kubernetes_validate.validate(resource, kubernetes_validate.utils.latest_version(), strict=True)


def test_keda_resources_are_valid_against_kedas_schemas():
    keda = [r for r in resources() if r["apiVersion"].startswith("keda.sh/")]
    assert {r["kind"] for r in keda} == {"ScaledObject", "TriggerAuthentication"}
    result = subprocess.run(["node", "testkit/validate_keda.mjs"], input=json.dumps(keda), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = [{**keda[0], "spec": {**keda[0]["spec"], "minReplicaCount": "zero"}}]  # the check can fail
    assert subprocess.run(["node", "testkit/validate_keda.mjs"], input=json.dumps(broken), cwd=ROOT,
                          capture_output=True, text=True, timeout=60).returncode == 1


def test_services_select_their_pods_and_name_the_ports_the_containers_open():
    for service in (r for r in resources() if r["kind"] == "Service"):
        name = service["metadata"]["name"]
        workload = next(r for r in resources() if r["kind"] in ("Deployment", "StatefulSet")
                        and r["metadata"]["name"] == name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        opened = {p["name"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= opened


def test_the_gateway_command_parses_and_names_the_headless_service_and_redis(monkeypatch):
    gateway = container("sd-gateway")
    assert gateway["command"][:3] == ["python3", "-u", "gateway.py"]
    secret = gateway["env"][0]
    assert secret["name"] == "BANANA_API_KEYS" and "secretKeyRef" in secret["valueFrom"]
    monkeypatch.setenv("BANANA_API_KEYS", "k" * 16)
    config = parse_args(gateway["command"][3:])  # the parser gateway.py runs
    assert config.port == gateway["ports"][0]["containerPort"] and not config.loopback_only()
    [backend] = config.backends
    app_service = find("Service", urlsplit(backend).hostname)
    assert app_service["spec"]["clusterIP"] == "None"  # headless: one address per ready replica
    assert urlsplit(backend).port == app_service["spec"]["ports"][0]["port"]
    store = urlsplit(config.store)
    redis_service = find("Service", store.hostname)
    assert store.scheme == "redis" and store.port == redis_service["spec"]["ports"][0]["port"]
    assert find("Deployment", "sd-gateway")["spec"]["replicas"] == 2
    budget = find("PodDisruptionBudget", "sd-gateway")["spec"]
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"] == find("Deployment", "sd-gateway")["spec"]["selector"]["matchLabels"]


def test_the_apps_environment_is_settings_the_app_accepts_and_it_asks_for_a_gpu():
    app = container("sd-app")
    env = {e["name"]: e["value"] for e in app["env"]}
    assert set(env) <= {name.upper() for name in Settings.model_fields}
    settings = Settings.model_validate({name.lower(): value for name, value in env.items()})
    assert settings.port == app["ports"][0]["containerPort"] and settings.host == "0.0.0.0"
    assert app["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert find("Deployment", "sd-app")["spec"]["replicas"] == 0  # KEDA's to set


def test_the_apps_probes_and_drain_answer_as_the_manifest_expects(sd_app):
    """Each HTTP probe path answers 200 on a real replica; each exec probe exits 0 against it."""
    app = container("sd-app")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = app[probe]
        if "httpGet" in spec:
            assert httpx.get(sd_app.url + spec["httpGet"]["path"]).status_code == 200, probe
        else:
            command = spec["exec"]["command"]
            assert command[0] == "python3"
            env = {**os.environ, "PORT": str(sd_app.port)}
            assert subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, timeout=30).returncode == 0
    drain = app["lifecycle"]["preStop"]["exec"]["command"]
    env = {**os.environ, "PORT": str(sd_app.port), "DRAIN_IDLE_S": "0"}
    assert subprocess.run([sys.executable, *drain[1:]], cwd=ROOT, env=env, timeout=30).returncode == 0
    job_limit = parse_args(["--backend", "http://x"]).job_timeout
    grace = find("Deployment", "sd-app")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= job_limit + 15  # a running job ends, and the drain's idle wait, before the kill


def test_the_scaled_object_reads_the_gateways_scale_signal_with_its_key(start_gateway, sd_app):
    scaled = find("ScaledObject", "sd-app")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "sd-app" and scaled["minReplicaCount"] == 0
    [trigger] = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "metrics-api" and meta["activationTargetValue"] == "0" and meta["targetValue"] == "1"
    url = urlsplit(meta["url"])
    service, namespace = url.hostname.split(".")[:2]
    assert namespace == kustomization()["namespace"]
    assert (url.port or 80) == find("Service", service)["spec"]["ports"][0]["port"]
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]["secretTargetRef"][0]
    secret = container("sd-gateway")["env"][0]["valueFrom"]["secretKeyRef"]
    assert (auth["name"], auth["key"]) == (secret["name"], secret["key"]) and auth["parameter"] == "apiKey"
    # As KEDA asks it: the path, the key in the header the manifest names, the value where valueLocation says.
    gateway = start_gateway([sd_app.url], "--api-key", TEST_KEY)
    answer = httpx.get(gateway.url + url.path, headers={meta["keyParamName"]: TEST_KEY})
    assert answer.status_code == 200 and isinstance(answer.json()[meta["valueLocation"]], int)
    assert httpx.get(gateway.url + url.path).status_code == 401


def test_redis_keeps_an_append_only_file_on_a_persistent_volume():
    redis = find("StatefulSet", "sd-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    mounts = redis["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert any(m["mountPath"] == data_dir and m["name"] in claims for m in mounts)


def test_the_schema_check_fails_on_a_misspelt_field():
    deployment = find("Deployment", "sd-app")
    pod = deployment["spec"]["template"]["spec"]
    pod["terminationGracePeriod"] = pod.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.utils.latest_version(), strict=True)
