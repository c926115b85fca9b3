"""The Helm chart (helm/corral), checked with the real Helm v4 library on every change.

Lint in strict mode, render the value sets an operator starts from (defaults, GPU workers, high
availability, ingress, Gateway API, KEDA, monitoring, preload), validate every rendered object
against the Kubernetes schemas of the supported versions (custom resources: structurally, see
tests/helmchart.py), and assert what operators rely on. The no-drift test holds the chart to the
services' own settings classes: every variable a Corral container gets is one they read, and
every value parses as the service would parse it at start-up.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml
from pydantic_settings import BaseSettings

from corral.router.settings import RouterSettings
from corral.worker.settings import WorkerSettings
from tests.support.helmchart import (
    CHART,
    NAMESPACE,
    RELEASE,
    chart_metadata,
    containers,
    env_of,
    find,
    is_corral_image,
    matches,
    one,
    pod_spec,
    render,
    supported_kube_versions,
    validate,
)

# `helm install corral ./helm/corral`: a release named like the chart keeps its name alone.
FULL = RELEASE
APP_VERSION = chart_metadata()["appVersion"]

# Names the services' runtime reads besides their settings classes. Empty on purpose: the chart
# lets gunicorn's PROMETHEUS_MULTIPROC_DIR default to a fresh directory under /tmp.
RUNTIME_ENV: frozenset[str] = frozenset()
# What `corral pull` (the preload Job) reads: the admin key, as the ollama client sends it.
CLIENT_ENV = frozenset({"OLLAMA_API_KEY"})

HA_REDIS_URL = "redis://:s3cret@redis-ha.data.svc:6379/0"
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # The bundled Redis as a Sentinel group (test_helm_sentinel.py runs its pods' script).
    "sentinel": {"redis": {"sentinel": {"enabled": True}}},
    "gpu": {"workers": {"gpu": {"enabled": True, "runtimeClassName": "nvidia",
                                "nodeSelector": {"nvidia.com/gpu.present": "true"}, "labels": {"zone": "a"}}}},
    "ha": {
        "router": {"replicas": 3},
        "redis": {"enabled": False, "url": HA_REDIS_URL},
        "registry": {"replicas": 2, "httpSecret": "0123456789abcdef",
                     "s3": {"enabled": True, "bucket": "corral-models", "region": "eu-west-1",
                            "regionEndpoint": "http://minio.storage:9000", "secure": False,
                            "accessKey": "AKIAEXAMPLE", "secretKey": "wJalrXUtnFEMI"}},
    },
    "ingress": {"ingress": {"enabled": True, "host": "corral.example.com",
                            "tls": [{"secretName": "corral-tls", "hosts": ["corral.example.com"]}]}},
    "gateway": {"httpRoute": {"enabled": True, "hostnames": ["corral.example.com"],
                              "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}]}},
    "keda": {"workers": {"keda": {"enabled": True}, "gpu": {"enabled": True}},
             "monitoring": {"serviceMonitor": {"enabled": True}}},
    "monitoring": {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}},
    "preload": {"preload": {"models": ["smollm2:135m", "registry.local:5000/team/tiny:v1"], "insecure": True}},
    "auth": {"auth": {"enabled": True}, "preload": {"models": ["smollm2:135m"]}},
}


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request) -> tuple[str, list[dict], str]:
    objects, notes = render(VALUE_SETS[request.param])
    return request.param, objects, notes


def test_flash_attention_is_left_to_llama_cpp_unless_set() -> None:
    objects, _ = render()
    assert "OLLAMA_FLASH_ATTENTION" not in env_of(_container(one(objects, "Deployment", f"{FULL}-worker-cpu"), "worker"))
    for value, text in ((True, "true"), (False, "false")):
        objects, _ = render({"workers": {"flashAttention": value}})
        worker = _container(one(objects, "Deployment", f"{FULL}-worker-cpu"), "worker")
        assert env_of(worker)["OLLAMA_FLASH_ATTENTION"]["value"] == text


def _workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if pod_spec(o) is not None]


def _container(obj: dict, name: str) -> dict:
    (found,) = [c for c in containers(obj) if c["name"] == name]
    return found


def _secret_value(objects: list[dict], ref: dict) -> str:
    secret = one(objects, "Secret", ref["name"])
    return base64.b64decode(secret["data"][ref["key"]]).decode()


# -- lint and schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_strict(name: str) -> None:
    for version in supported_kube_versions():
        report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version=f"v{version}")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"helm lint --strict (Kubernetes {version}): {problems}"


def test_render_objects_valid_for_supported_kubernetes(rendered) -> None:
    name, objects, _ = rendered
    versions = supported_kube_versions()
    assert len(versions) >= 3
    for obj in objects:
        for version in versions:
            try:
                validate(obj, version)
            except Exception as exc:  # name the object and version in the failure
                pytest.fail(f"[{name}] {obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: {exc}")


def test_validation_catches_a_broken_object() -> None:
    # The checks above must be able to fail: a misspelt field, a wrong type, a CRD mistake.
    objects, _ = render(VALUE_SETS["keda"])
    deployment = copy.deepcopy(one(objects, "Deployment", f"{FULL}-router"))
    deployment["spec"]["replica"] = 2
    with pytest.raises(Exception, match="replica"):
        validate(deployment, supported_kube_versions()[-1])
    scaled = copy.deepcopy(find(objects, "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 4  # KEDA wants strings
    with pytest.raises(Exception, match="string"):
        validate(scaled, supported_kube_versions()[-1])


def _schema_at(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        node = root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node
    return schema


def _walk(values: Any, schema: dict, root: dict, path: str) -> list[str]:
    """Paths under `values` with no documented schema; objects must be closed (no unknown keys)."""
    schema = _schema_at(schema, root)
    problems = []
    if not schema.get("description") and path:
        problems.append(f"{path}: no description")
    props = schema.get("properties")
    if isinstance(values, dict) and props is not None:
        if schema.get("additionalProperties") is not False:
            problems.append(f"{path}: open object (additionalProperties must be false)")
        for key, value in values.items():
            if key not in props:
                problems.append(f"{path}.{key}: not in values.schema.json")
            else:
                problems += _walk(value, props[key], root, f"{path}.{key}")
    return problems


def test_every_value_documented_and_bound_to_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not _walk(values, schema, schema, "")
    # And the other way: nothing in the schema that values.yaml does not set (a dead option).
    def keys(node: dict, path: str) -> set[str]:
        node = _schema_at(node, schema)
        out = set()
        for key, sub in (node.get("properties") or {}).items():
            out.add(f"{path}.{key}")
            out |= keys(sub, f"{path}.{key}")
        return out

    def value_keys(node: Any, path: str) -> set[str]:
        out = set()
        if isinstance(node, dict):
            for key, sub in node.items():
                out.add(f"{path}.{key}")
                out |= value_keys(sub, f"{path}.{key}")
        return out

    # Free-form maps (annotations, resources, probes...) may hold anything; the schema's own
    # optional keys (global, httpRoute.timeouts.backendRequest, resources.requests) need no default.
    optional = {".global", ".httpRoute.timeouts.backendRequest"}
    missing = {k for k in keys(schema, "") - value_keys(values, "") - optional
               if not k.endswith((".requests", ".limits"))}
    assert not missing, f"in the schema but not in values.yaml: {sorted(missing)}"


@pytest.mark.parametrize("values, key", [
    ({"router": {"replica": 3}}, "replica"),
    ({"workers": {"cpu": {"gpusPerPod": 1}}}, "gpusPerPod"),  # a GPU-only setting on the CPU pool
    ({"config": {"keepAlive": "five minutes"}}, "keepAlive"),
    ({"workers": {"kvCacheType": "q5"}}, "kvCacheType"),
    ({"redis": {"url": "http://redis:6379"}}, "url"),
])
def test_schema_rejects_unknown_and_invalid_values(values: dict, key: str) -> None:
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
        with pytest.raises(helm.HelmValuesError, match=key):
            chart.validate_schema(merged)


# -- what each value set deploys ----------------------------------------------------------------


def test_defaults_deploy_the_whole_cpu_stack() -> None:
    objects, _ = render()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted([
        ("ServiceAccount", FULL),
        ("Service", FULL), ("Deployment", f"{FULL}-router"), ("PodDisruptionBudget", f"{FULL}-router"),
        ("Deployment", f"{FULL}-worker-cpu"),
        ("Service", f"{FULL}-redis"), ("StatefulSet", f"{FULL}-redis"),
        ("ConfigMap", f"{FULL}-registry"), ("Service", f"{FULL}-registry"), ("StatefulSet", f"{FULL}-registry"),
        *[("ConfigMap", name) for name in _dashboard_configmap_names()],
    ])
    endpoint = one(objects, "Service", FULL)
    assert endpoint["spec"]["ports"] == [{"name": "http", "port": 11434, "targetPort": "http", "protocol": "TCP"}]
    router = one(objects, "Deployment", f"{FULL}-router")
    assert router["spec"]["replicas"] == 2
    assert matches(endpoint["spec"] | {"matchLabels": endpoint["spec"]["selector"]},
                   router["spec"]["template"]["metadata"]["labels"])
    # Redis keeps its append-only file on a volume, as in compose (placements survive a restart).
    redis = one(objects, "StatefulSet", f"{FULL}-redis")
    assert "--appendonly" in (args := _container(redis, "redis")["args"]) and args[args.index("--appendonly") + 1] == "yes"
    assert [c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]] == ["data"]
    # The registry keeps models on a volume of its own.
    registry = one(objects, "StatefulSet", f"{FULL}-registry")
    (claim,) = registry["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    config = yaml.safe_load(one(objects, "ConfigMap", f"{FULL}-registry")["data"]["config.yml"])
    assert config["storage"]["filesystem"] == {"rootdirectory": "/var/lib/registry"}
    assert config["storage"]["delete"] == {"enabled": True}  # /api/delete needs it
    # Workers and routers find Redis and the registry through their Services.
    for deployment in (router, one(objects, "Deployment", f"{FULL}-worker-cpu")):
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["REDIS_URL"]["value"] == f"redis://{FULL}-redis:6379/0"
        assert env["CORRAL_REGISTRY_URL"]["value"] == f"http://{FULL}-registry:5000"


def _dashboard_configmap_names() -> list[str]:
    names = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        base = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")
        names.append(f"{FULL}-dashboard-{base}")
    return names


def test_api_keys_keep_workers_behind_the_routers() -> None:
    objects, _ = render(VALUE_SETS["auth"])
    secret = one(objects, "Secret", f"{FULL}-auth")
    admin_key = base64.b64decode(secret["data"]["admin-key"]).decode()
    token = base64.b64decode(secret["data"]["cluster-token"]).decode()
    assert len(admin_key) == 48 and len(token) == 48 and admin_key != token  # generated
    router = env_of(_container(one(objects, "Deployment", f"{FULL}-router"), "router"))
    assert router["CORRAL_AUTH"]["value"] == "keys"
    assert router["CORRAL_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULL}-auth", "key": "admin-key"}
    assert router["CORRAL_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULL}-auth", "key": "cluster-token"}
    worker = env_of(_container(one(objects, "Deployment", f"{FULL}-worker-cpu"), "worker"))
    assert worker["CORRAL_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "cluster-token"
    assert "CORRAL_ADMIN_KEY" not in worker  # a worker never holds the admin key
    preload = env_of(_container(one(objects, "Job", f"{FULL}-preload"), "preload"))
    assert preload["OLLAMA_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "admin-key"
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"][0] == {"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "corral", "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "router"}}}
    assert rule["from"][1]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # Given values: the admin key as set; an existing Secret instead of the chart's; too short fails.
    objects, _ = render({"auth": {"enabled": True, "adminKey": "a-given-admin-key-0123"}})
    assert base64.b64decode(one(objects, "Secret", f"{FULL}-auth")["data"]["admin-key"]) == b"a-given-admin-key-0123"
    objects, _ = render({"auth": {"enabled": True, "existingSecret": "my-keys", "networkPolicy": {"enabled": False}}})
    assert not find(objects, "Secret", f"{FULL}-auth") and not find(objects, "NetworkPolicy")
    router = env_of(_container(one(objects, "Deployment", f"{FULL}-router"), "router"))
    assert router["CORRAL_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "my-keys", "key": "admin-key"}
    with pytest.raises(Exception, match="auth/adminKey"):  # the values schema: 16+ printable characters
        render({"auth": {"enabled": True, "adminKey": "short"}})
    objects, _ = render()  # off by default: nothing of it
    router = env_of(_container(one(objects, "Deployment", f"{FULL}-router"), "router"))
    assert not find(objects, "NetworkPolicy") and "CORRAL_AUTH" not in router
    # No Corral nginx in front of the routers here: nothing may ask them to hand answers to one.
    assert router["CORRAL_DIRECT_STREAMING"]["value"] == "false"


def test_router_probes_mean_what_operators_expect() -> None:
    objects, _ = render()
    router = _container(one(objects, "Deployment", f"{FULL}-router"), "router")
    # Ready = can place requests (from Redis, or while it is away from the last known placements);
    # alive = the process answers.
    assert router["readinessProbe"]["httpGet"] == {"path": "/api/cluster/ready", "port": "http"}
    assert router["livenessProbe"]["httpGet"] == {"path": "/api/version", "port": "http"}
    worker = _container(one(objects, "Deployment", f"{FULL}-worker-cpu"), "worker")
    assert worker["readinessProbe"]["httpGet"]["path"] == "/api/version"
    # Configurable: values merge into the defaults (null removes one, as everywhere in Helm).
    objects, _ = render({"router": {"readinessProbe": {"periodSeconds": 2, "failureThreshold": None}}})
    router = _container(one(objects, "Deployment", f"{FULL}-router"), "router")
    assert router["readinessProbe"] == {"httpGet": {"path": "/api/cluster/ready", "port": "http"},
                                        "periodSeconds": 2, "timeoutSeconds": 3}


def test_gpu_workers_request_gpus_on_gpu_nodes() -> None:
    objects, _ = render(VALUE_SETS["gpu"])
    gpu = one(objects, "Deployment", f"{FULL}-worker-gpu")
    spec = gpu["spec"]["template"]["spec"]
    worker = _container(gpu, "worker")
    assert worker["image"] == f"ghcr.io/corral-llm/corral-worker-cuda:{APP_VERSION}"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert env_of(worker)["CORRAL_WORKER_LABELS"]["value"] == "pool=gpu,zone=a"
    # The CPU pool stays as it was, and never asks for a GPU; the two pools select apart.
    cpu = one(objects, "Deployment", f"{FULL}-worker-cpu")
    assert "nvidia.com/gpu" not in str(cpu)
    assert not matches(gpu["spec"]["selector"], cpu["spec"]["template"]["metadata"]["labels"])
    assert not matches(cpu["spec"]["selector"], gpu["spec"]["template"]["metadata"]["labels"])
    objects, _ = render({"workers": {"gpu": {"enabled": True, "gpusPerPod": 4}}})
    worker = _container(one(objects, "Deployment", f"{FULL}-worker-gpu"), "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "runtimeClassName" not in one(objects, "Deployment", f"{FULL}-worker-gpu")["spec"]["template"]["spec"]


def test_external_redis_replaces_the_bundled_one() -> None:
    objects, _ = render(VALUE_SETS["ha"])
    assert not [o for o in objects if "redis" in o["metadata"]["name"]]
    for name in (f"{FULL}-router", f"{FULL}-worker-cpu"):
        (container,) = one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        ref = env_of(container)["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert _secret_value(objects, ref) == HA_REDIS_URL  # the password stays in a Secret
    assert HA_REDIS_URL not in yaml.safe_dump([o for o in objects if o["kind"] != "Secret"])
    # An existing Secret instead: no Secret of ours, the reference points at it.
    objects, _ = render({"redis": {"enabled": False, "existingSecret": "team-redis", "existingSecretKey": "url"}})
    assert not find(objects, "Secret")
    router = one(objects, "Deployment", f"{FULL}-router")
    ref = env_of(router["spec"]["template"]["spec"]["containers"][0])["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "team-redis", "key": "url"}


def test_missing_external_settings_fail_with_a_message() -> None:
    for values, message in [
        ({"redis": {"enabled": False}}, "redis.url"),
        ({"registry": {"enabled": False}}, "registry.url"),
        ({"registry": {"replicas": 2}}, "registry.s3"),
        ({"registry": {"s3": {"enabled": True}}}, "bucket"),
        ({"workers": {"keda": {"enabled": True}}}, "monitoring.serviceMonitor"),
        ({"monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}, "not both"),
    ]:
        with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
            render(values)


def test_high_availability() -> None:
    objects, _ = render(VALUE_SETS["ha"])
    assert one(objects, "Deployment", f"{FULL}-router")["spec"]["replicas"] == 3
    pdb = one(objects, "PodDisruptionBudget", f"{FULL}-router")
    assert matches(pdb["spec"]["selector"], one(objects, "Deployment", f"{FULL}-router")["spec"]["template"]["metadata"]["labels"])
    registry = one(objects, "StatefulSet", f"{FULL}-registry")
    assert registry["spec"]["replicas"] == 2
    assert "volumeClaimTemplates" not in registry["spec"]  # the bucket holds the models
    config = yaml.safe_load(one(objects, "ConfigMap", f"{FULL}-registry")["data"]["config.yml"])
    assert "filesystem" not in config["storage"]
    assert config["storage"]["s3"] == {"bucket": "corral-models", "region": "eu-west-1",
                                       "regionendpoint": "http://minio.storage:9000", "secure": False}
    assert config["storage"]["redirect"] == {"disable": False}
    env = env_of(_container(registry, "registry"))
    assert _secret_value(objects, env["REGISTRY_STORAGE_S3_ACCESSKEY"]["valueFrom"]["secretKeyRef"]) == "AKIAEXAMPLE"
    assert _secret_value(objects, env["REGISTRY_STORAGE_S3_SECRETKEY"]["valueFrom"]["secretKeyRef"]) == "wJalrXUtnFEMI"
    assert _secret_value(objects, env["REGISTRY_HTTP_SECRET"]["valueFrom"]["secretKeyRef"]) == "0123456789abcdef"
    # Router autoscaling drops the fixed count (so an upgrade never fights the autoscaler).
    objects, _ = render({"router": {"autoscaling": {"enabled": True, "minReplicas": 3}}})
    assert "replicas" not in one(objects, "Deployment", f"{FULL}-router")["spec"]
    hpa = one(objects, "HorizontalPodAutoscaler", f"{FULL}-router")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULL}-router" and hpa["spec"]["minReplicas"] == 3


def test_external_registry() -> None:
    url = "https://robot:token@registry.example.com"
    objects, _ = render({"registry": {"enabled": False, "url": url}})
    assert not [o for o in objects if "registry" in o["metadata"]["name"]]
    router = one(objects, "Deployment", f"{FULL}-router")
    ref = env_of(router["spec"]["template"]["spec"]["containers"][0])["CORRAL_REGISTRY_URL"]["valueFrom"]["secretKeyRef"]
    assert _secret_value(objects, ref) == url


def test_ingress_keeps_streams_unbuffered_and_long_lived() -> None:
    objects, notes = render(VALUE_SETS["ingress"])
    ingress = one(objects, "Ingress", FULL)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "corral.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = one(objects, "Service", backend["name"])
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    assert "https://corral.example.com" in notes
    # The operator's own annotations win.
    objects, _ = render({"ingress": {"enabled": True, "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"}}})
    assert one(objects, "Ingress", FULL)["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"


def test_httproute_points_at_the_endpoint() -> None:
    objects, _ = render(VALUE_SETS["gateway"])
    route = one(objects, "HTTPRoute", FULL)
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways", "sectionName": "https"}]
    (rule,) = route["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    service = one(objects, "Service", backend["name"])
    assert backend["port"] == service["spec"]["ports"][0]["port"] == 11434
    assert rule["timeouts"] == {"request": "0s"}  # streams are not cut
    objects, _ = render({"httpRoute": {"enabled": True, "timeouts": None}})
    assert "timeouts" not in one(objects, "HTTPRoute", FULL)["spec"]["rules"][0]


def test_keda_scales_worker_pools_on_the_router_queue() -> None:
    objects, _ = render(VALUE_SETS["keda"])
    scaled = find(objects, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {f"{FULL}-worker-cpu", f"{FULL}-worker-gpu"}
    monitor = one(objects, "ServiceMonitor")
    (relabel,) = [r for r in monitor["spec"]["endpoints"][0]["relabelings"] if r.get("replacement")]
    for s in scaled:
        target = one(objects, "Deployment", s["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"]  # KEDA owns the count
        assert s["spec"]["minReplicaCount"] >= 1
        (trigger,) = s["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert "corral_router_queue_depth" in query
        # Selects this release's series by the label its monitor adds; every router reports the
        # same cluster-wide depth, so it takes the max per model, never the sum over routers.
        assert f'{relabel["targetLabel"]}="{relabel["replacement"]}"' in query
        assert "max by (model)" in query
        assert float(trigger["metadata"]["threshold"]) == 4


def test_monitors_select_routers_and_workers() -> None:
    objects, notes = render(VALUE_SETS["monitoring"])
    monitor = one(objects, "ServiceMonitor", FULL)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    services = [s for s in find(objects, "Service") if matches(monitor["spec"]["selector"], s["metadata"]["labels"])]
    port = monitor["spec"]["endpoints"][0]["port"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    scraped = set()
    for service in services:
        assert port in [p["name"] for p in service["spec"]["ports"]]
        for workload in _workloads(objects):
            if matches({"matchLabels": service["spec"]["selector"]}, workload["spec"]["template"]["metadata"]["labels"]):
                scraped.add(workload["metadata"]["name"])
    assert scraped == {f"{FULL}-router", f"{FULL}-worker-cpu"}
    assert "Prometheus is not told" not in notes
    # The job is the component (router, worker), as in compose's Prometheus: the dashboards
    # select on it.
    job = [r for r in monitor["spec"]["endpoints"][0]["relabelings"] if r.get("targetLabel") == "job"]
    assert job == [{"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "targetLabel": "job"}]
    components = {w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for w in _workloads(objects)
                  if w["metadata"]["name"] in scraped}
    for path in (CHART / "dashboards").glob("*.json"):
        for queried in re.findall(r'job=\\?"(\w+)', path.read_text()):
            assert queried in components, f"{path.name} queries job={queried!r}, which no monitor produces"
    objects, _ = render({"monitoring": {"podMonitor": {"enabled": True}}, "workers": {"gpu": {"enabled": True}}})
    pod_monitor = one(objects, "PodMonitor", FULL)
    scraped = {w["metadata"]["name"] for w in _workloads(objects)
               if matches(pod_monitor["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])}
    assert scraped == {f"{FULL}-router", f"{FULL}-worker-cpu", f"{FULL}-worker-gpu"}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"] == monitor["spec"]["endpoints"][0]["relabelings"]
    for workload in _workloads(objects):
        if workload["metadata"]["name"] in scraped:
            ports = [p["name"] for c in containers(workload) for p in c.get("ports", [])]
            assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports


def test_dashboards_one_configmap_per_file() -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    objects, _ = render(VALUE_SETS["monitoring"])
    dashboards = [c for c in find(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == len(files)
    by_content = {json.dumps(json.loads(next(iter(c["data"].values()))), sort_keys=True): c for c in dashboards}
    for path in files:
        assert json.dumps(json.loads(path.read_text()), sort_keys=True) in by_content, f"{path.name} not rendered"
    for c in dashboards:
        assert c["metadata"]["annotations"]["grafana_folder"] == "Corral"
    objects, _ = render({"grafana": {"dashboards": {"label": "my_dashboards", "labelValue": "yes"}}})
    assert len([c for c in find(objects, "ConfigMap") if c["metadata"]["labels"].get("my_dashboards") == "yes"]) == len(files)
    objects, _ = render({"grafana": {"dashboards": {"enabled": False}}})
    assert [c["metadata"]["name"] for c in find(objects, "ConfigMap")] == [f"{FULL}-registry"]


def test_preload_job_pulls_through_the_endpoint() -> None:
    objects, notes = render(VALUE_SETS["preload"])
    job = one(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/corral-llm/corral-router:{APP_VERSION}"
    command = container["command"]
    assert command[:2] == ["corral", "pull"]
    host = command[command.index("--host") + 1]
    assert host == f"http://{FULL}:11434" and one(objects, "Service", FULL)
    assert command[command.index("--wait") + 1] == "300"
    assert "--insecure" in command
    assert command[-2:] == ["smollm2:135m", "registry.local:5000/team/tiny:v1"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert "smollm2:135m" in notes
    assert not find(render()[0], "Job")  # no models, no Job


# -- conventions ---------------------------------------------------------------------------------


def test_no_drift_between_chart_and_services(rendered) -> None:
    """Every variable a Corral container gets is a field of the settings class of the service it
    runs, and the values parse as the service parses them at start-up."""
    name, objects, _ = rendered
    checked = set()
    for workload in _workloads(objects):
        for container in containers(workload):
            if not is_corral_image(container):
                continue
            env = env_of(container)
            if container["name"] == "preload":
                # `corral pull` takes everything on its command line.
                assert set(env) <= RUNTIME_ENV | CLIENT_ENV, f"[{name}] preload env: {sorted(env)}"
                continue
            settings_cls = {"router": RouterSettings, "worker": WorkerSettings}[container["name"]]
            unknown = set(env) - set(settings_cls.model_fields) - RUNTIME_ENV
            assert not unknown, f"[{name}] {workload['metadata']['name']} sets variables no service reads: {sorted(unknown)}"
            values = {}
            for var, entry in env.items():
                if "value" in entry:
                    values[var] = entry["value"]
                else:
                    values[var] = _secret_value(objects, entry["valueFrom"]["secretKeyRef"])
            _only_these(settings_cls)(**values)  # raises on a value the service would refuse
            checked.add(container["name"])
    assert checked == {"router", "worker"}


def _only_these(cls: type[BaseSettings]) -> type[BaseSettings]:
    """The settings class reading only the given values (not this test process's environment)."""
    class Isolated(cls):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):
            return (init_settings,)

    return Isolated


def test_no_drift_check_can_fail() -> None:
    objects, _ = render({"workers": {"numParallel": 1}})
    worker = one(objects, "Deployment", f"{FULL}-worker-cpu")
    values = {e["name"]: e.get("value", "") for e in _container(worker, "worker")["env"]}
    values["CORRAL_DRAIN_TIMEOUT"] = "-1s"  # the service refuses an unbounded drain
    with pytest.raises(ValueError, match="CORRAL_DRAIN_TIMEOUT"):
        _only_these(WorkerSettings)(**{k: v for k, v in values.items() if v})
    assert "OLLAMA_NUM_PARALEL" not in WorkerSettings.model_fields


def test_pods_run_locked_down(rendered) -> None:
    name, objects, _ = rendered
    workloads = _workloads(objects)
    assert workloads
    for workload in workloads:
        where = f"[{name}] {workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 10001, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in containers(workload):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert container["resources"].get("requests") and container["resources"].get("limits"), where
        # A read-only root needs every path the program writes mounted: check the env's dirs.
        mounts = [m["mountPath"] for c in containers(workload) for m in c.get("volumeMounts", [])]
        for container in containers(workload):
            for var in ("OLLAMA_MODELS", "CORRAL_SPOOL_DIR"):
                path = env_of(container).get(var, {}).get("value")
                if path:
                    assert any(path == m or path.startswith(m + "/") for m in mounts), f"{where}: {var} not on a volume"


def test_workers_drain_within_their_grace_period() -> None:
    for drain in (30, 600):
        objects, _ = render({"workers": {"drainTimeoutSeconds": drain, "gpu": {"enabled": True}}})
        for pool in ("cpu", "gpu"):
            worker = one(objects, "Deployment", f"{FULL}-worker-{pool}")
            env = {k: v["value"] for k, v in env_of(_container(worker, "worker")).items() if "value" in v}
            settings = _only_these(WorkerSettings)(**env)
            assert settings.drain_timeout_seconds == drain
            assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    # The routers: preStop sleep, then their own drain (gunicorn's graceful timeout).
    objects, _ = render({"router": {"preStopSleepSeconds": 10, "drainTimeoutSeconds": 300}})
    router = one(objects, "Deployment", f"{FULL}-router")
    env = {k: v["value"] for k, v in env_of(_container(router, "router")).items() if "value" in v}
    assert _only_these(RouterSettings)(**env).drain_timeout_seconds == 300
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 10 + 300
    assert _container(router, "router")["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
    assert router["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("resources, threads", [
    ({"requests": {"cpu": "2"}}, "2"),
    ({"requests": {"cpu": "4"}, "limits": {"cpu": "1500m"}}, "1"),
    ({"requests": {"cpu": 3}}, "3"),
    ({"requests": {"cpu": "250m"}}, "1"),
    ({"requests": {"cpu": None, "memory": "1Gi"}}, None),  # no CPU bound: the worker's own default
])
def test_worker_threads_follow_the_cpu_bound(resources: dict, threads: str | None) -> None:
    values = {"workers": {"cpu": {"resources": resources}}}
    objects, _ = render(values)
    env = env_of(_container(one(objects, "Deployment", f"{FULL}-worker-cpu"), "worker"))
    assert env.get("CORRAL_NUM_THREADS", {}).get("value") == threads
    values["workers"]["cpu"]["threads"] = 6
    objects, _ = render(values)
    env = env_of(_container(one(objects, "Deployment", f"{FULL}-worker-cpu"), "worker"))
    assert env["CORRAL_NUM_THREADS"]["value"] == "6"


def test_worker_cache_volume_and_bound() -> None:
    objects, _ = render({"workers": {"cache": {"sizeGiB": 20}}})
    worker = one(objects, "Deployment", f"{FULL}-worker-cpu")
    (cache,) = [v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"]
    assert cache["emptyDir"] == {"sizeLimit": "20Gi"}
    env = env_of(_container(worker, "worker"))
    bound = int(env["CORRAL_CACHE_MAX_BYTES"]["value"])
    assert 0 < bound < 20 * 2**30  # below the volume's size: the kubelet never evicts for the cache
    objects, _ = render({"workers": {"cache": {"type": "hostPath", "hostPath": "/mnt/corral"}}})
    worker = one(objects, "Deployment", f"{FULL}-worker-cpu")
    (cache,) = [v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"]
    assert cache["hostPath"] == {"path": "/mnt/corral", "type": "DirectoryOrCreate"}
    objects, _ = render({"workers": {"cache": {"type": "ephemeral", "storageClass": "local-nvme"}}})
    worker = one(objects, "Deployment", f"{FULL}-worker-cpu")
    (cache,) = [v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"]
    claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "local-nvme" and claim["resources"]["requests"]["storage"] == "50Gi"
    for version in supported_kube_versions():
        validate(worker, version)


def test_names_fit_kubernetes_limits() -> None:
    release = "a" * 20 + "-" + "b" * 32  # 53 characters, Helm's longest release name
    helm.validate_release_name(release)
    values = {"nameOverride": "c" * 40, "workers": {"gpu": {"enabled": True}}, "preload": {"models": ["m"]},
              "monitoring": {"serviceMonitor": {"enabled": True}}, "ingress": {"enabled": True}}
    objects, _ = render(values, release=release)
    by_kind: dict[str, list[str]] = {}
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name
        if obj["kind"] == "StatefulSet":
            # Pods carry controller-revision-hash "<name>-<10 characters>", a label value.
            assert len(name) <= 52, name
        by_kind.setdefault(obj["kind"], []).append(name)
        for labels in (obj["metadata"].get("labels", {}), (pod_spec(obj) and obj["spec"]["template"]["metadata"]["labels"]) or {}):
            for key, value in labels.items():
                assert len(str(value)) <= 63, f"{key}={value}"
    for kind, names in by_kind.items():
        assert len(names) == len(set(names)), f"{kind} names collide: {names}"
    assert len(by_kind["Deployment"]) == 3  # router, worker-cpu, worker-gpu: told apart after the cut
    for version in supported_kube_versions()[-1:]:
        for obj in objects:
            validate(obj, version)


def test_selectors_are_stable_and_select_their_pods(rendered) -> None:
    name, objects, _ = rendered
    for workload in _workloads(objects):
        if workload["kind"] == "Job":
            continue
        selector = workload["spec"]["selector"]
        assert not any("version" in key for key in selector["matchLabels"]), f"[{name}] {selector}"
        assert "helm.sh/chart" not in selector["matchLabels"]
        assert matches(selector, workload["spec"]["template"]["metadata"]["labels"])
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads(objects)]
    for service in find(objects, "Service"):
        assert any(matches({"matchLabels": service["spec"]["selector"]}, labels) for labels in pods), service["metadata"]["name"]
    # Two workloads never select each other's pods (a Deployment would fight over them).
    controllers = [w for w in _workloads(objects) if w["kind"] != "Job"]
    for a in controllers:
        for b in controllers:
            if a is not b:
                assert not matches(a["spec"]["selector"], b["spec"]["template"]["metadata"]["labels"])


def test_image_tags_default_to_the_app_version() -> None:
    objects, _ = render(VALUE_SETS["gpu"])
    images = {c["image"] for w in _workloads(objects) for c in containers(w) if is_corral_image(c)}
    assert images == {f"ghcr.io/corral-llm/{repo}:{APP_VERSION}" for repo in ("corral-router", "corral-worker", "corral-worker-cuda")}
    objects, _ = render({"image": {"registry": "registry.internal/mirror/"}, "router": {"image": {"tag": "0.1.1-rc1"}}})
    router = _container(one(objects, "Deployment", f"{FULL}-router"), "router")
    worker = _container(one(objects, "Deployment", f"{FULL}-worker-cpu"), "worker")
    assert router["image"] == "registry.internal/mirror/corral-router:0.1.1-rc1"
    assert worker["image"] == f"registry.internal/mirror/corral-worker:{APP_VERSION}"


def test_secret_changes_roll_the_pods() -> None:
    first, _ = render(VALUE_SETS["ha"])
    values = copy.deepcopy(VALUE_SETS["ha"])
    values["redis"]["url"] = "redis://:rotated@redis-ha.data.svc:6379/0"
    second, _ = render(values)
    for name in (f"{FULL}-router", f"{FULL}-worker-cpu"):
        a = one(first, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        b = one(second, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert a["checksum/secrets"] != b["checksum/secrets"]


def test_notes_tell_how_to_reach_the_endpoint_and_grafana() -> None:
    _, notes = render()
    assert f"svc/{FULL} 11434:11434" in notes
    assert f"http://{FULL}.{NAMESPACE}.svc:11434" in notes
    assert "Grafana" in notes and "grafana_dashboard=1" in notes
    assert "monitoring.serviceMonitor.enabled=true" in notes
    _, notes = render({"service": {"type": "LoadBalancer"}})
    assert "loadBalancer.ingress" in notes
