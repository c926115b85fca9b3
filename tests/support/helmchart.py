"""The Helm chart under test: rendering with the real Helm library, and checking what it renders.

``render`` runs Helm v4's own template engine (``helm-python-sdk``, no binary, no cluster) and
parses every manifest. ``validate`` checks one object: Kubernetes' own kinds against the
OpenAPI schemas ``kubernetes-validate`` ships (strict: an unknown field is an error), for each
supported Kubernetes version; the custom resources (Prometheus Operator, KEDA, Gateway API)
against the small structural schemas below, which list the fields of the upstream CRDs that
the chart uses (so a misspelt or misplaced field fails here instead of being pruned by the API
server) and the types the CRDs require (KEDA trigger metadata is strings only).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

CHART = Path(__file__).resolve().parents[2] / "helm" / "corral"
RELEASE, NAMESPACE = "corral", "llm"
CORRAL_IMAGES = ("corral-router", "corral-worker", "corral-worker-cuda")


def chart_metadata() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def supported_kube_versions() -> list[str]:
    """The oldest version Chart.yaml's kubeVersion admits and the newest three minors shipped by
    kubernetes-validate (Kubernetes supports its three newest minor releases)."""
    shipped = kubernetes_validate.utils.all_versions()
    floor = re.match(r">=\s*v?(\d+\.\d+)", chart_metadata()["kubeVersion"])
    assert floor, "Chart.yaml's kubeVersion must start with a >= bound"
    admitted = [v for v in shipped if Version(v) in SpecifierSet(f">={floor.group(1)}")]
    assert admitted, f"kubernetes-validate ships no schema admitted by kubeVersion {floor.group(1)}"
    return sorted({admitted[0], *shipped[-3:]}, key=Version)


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE,
           upgrade: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Every object the chart renders for ``values``, and the rendered NOTES.txt."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=release, namespace=namespace,
                                 is_install=not upgrade, is_upgrade=upgrade)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects, notes


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a workload, or None."""
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    return None


def containers(obj: dict) -> Iterator[dict]:
    spec = pod_spec(obj)
    if spec:
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def is_corral_image(container: dict) -> bool:
    return container["image"].rsplit("/", 1)[-1].split(":")[0] in CORRAL_IMAGES


def matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# -- structural schemas of the custom resources the chart renders ------------------------------

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": _STR_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
# Prometheus Operator's Duration and RelabelConfig.
_PROM_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {"action": {"type": "string"}, "modulus": {"type": "integer"}, "regex": {"type": "string"},
                   "replacement": {"type": "string"}, "separator": {"type": "string"},
                   "sourceLabels": {"type": "array", "items": {"type": "string"}},
                   "targetLabel": {"type": "string"}},
}
_SCRAPE_ENDPOINT = {
    "type": "object", "additionalProperties": False,
    "properties": {"port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]}, "path": {"type": "string"},
                   "scheme": {"enum": ["http", "https"]}, "interval": _PROM_DURATION, "scrapeTimeout": _PROM_DURATION,
                   "honorLabels": {"type": "boolean"},
                   "relabelings": {"type": "array", "items": _RELABEL},
                   "metricRelabelings": {"type": "array", "items": _RELABEL}},
}
_METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
    "labels": _STR_MAP, "annotations": _STR_MAP}}


def _crd(spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "metadata": _METADATA, "spec": spec}}


_GATEWAY_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd({
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {"selector": _LABEL_SELECTOR, "endpoints": {"type": "array", "minItems": 1, "items": _SCRAPE_ENDPOINT},
                       "jobLabel": {"type": "string"}, "namespaceSelector": {"type": "object"},
                       "targetLabels": {"type": "array", "items": {"type": "string"}},
                       "podTargetLabels": {"type": "array", "items": {"type": "string"}}},
    }),
    ("monitoring.coreos.com/v1", "PodMonitor"): _crd({
        "type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
        "properties": {"selector": _LABEL_SELECTOR,
                       "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _SCRAPE_ENDPOINT},
                       "jobLabel": {"type": "string"}, "namespaceSelector": {"type": "object"},
                       "podTargetLabels": {"type": "array", "items": {"type": "string"}}},
    }),
    ("keda.sh/v1alpha1", "ScaledObject"): _crd({
        "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                               "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                              "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}}},
            "minReplicaCount": {"type": "integer", "minimum": 0}, "maxReplicaCount": {"type": "integer", "minimum": 1},
            "idleReplicaCount": {"type": "integer"}, "pollingInterval": {"type": "integer"},
            "cooldownPeriod": {"type": "integer"}, "initialCooldownPeriod": {"type": "integer"},
            "advanced": {"type": "object"}, "fallback": {"type": "object"},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                "properties": {"type": {"type": "string"}, "name": {"type": "string"}, "useCachedMetrics": {"type": "boolean"},
                               "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                               "authenticationRef": {"type": "object"},
                               # Every trigger's metadata is a map of strings in KEDA's CRD.
                               "metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
                # The Prometheus scaler's required parameters.
                "if": {"properties": {"type": {"const": "prometheus"}}},
                "then": {"properties": {"metadata": {"required": ["serverAddress", "query", "threshold"]}}},
            }},
        },
    }),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _crd({
        "type": "object", "additionalProperties": False,
        "properties": {
            "parentRefs": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {"group": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string", "minLength": 1},
                               "namespace": {"type": "string"}, "sectionName": {"type": "string"},
                               "port": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "rules": {"type": "array", "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "matches": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                        "path": {"type": "object", "additionalProperties": False, "properties": {
                            "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]}, "value": {"type": "string"}}},
                        "headers": {"type": "array"}, "queryParams": {"type": "array"}, "method": {"type": "string"}}}},
                    "filters": {"type": "array"},
                    "backendRefs": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["name"],
                        "properties": {"group": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
                                       "namespace": {"type": "string"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                       "weight": {"type": "integer"}, "filters": {"type": "array"}}}},
                    "timeouts": {"type": "object", "additionalProperties": False, "properties": {
                        "request": _GATEWAY_DURATION, "backendRequest": _GATEWAY_DURATION}},
                },
            }},
        },
    }),
}


def validate(obj: dict, kube_version: str) -> None:
    """Raise if ``obj`` is not a valid object of its kind (see the module's docstring)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(obj)
        return
    kubernetes_validate.validate(obj, kube_version, strict=True)
