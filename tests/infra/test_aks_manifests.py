"""Every object the AKS program registers, captured from Pulumi's mock runtime and checked against a schema:
core kinds against the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields fail),
the Gateway API, Inference Extension and KEDA kinds against the JSON schemas below.

The CRD schemas are written here by hand from the projects' documented APIs (required fields, types, enums,
ranges), not copied from their repositories: Gateway API v1 (`Gateway`, `HTTPRoute`), the Gateway API Inference
Extension v1.2 (`InferencePool` in inference.networking.k8s.io/v1, `InferenceModelRewrite` in
inference.networking.x-k8s.io/v1alpha2) and KEDA v2 (`ScaledObject` in keda.sh/v1alpha1). They close every object
they describe (`additionalProperties: false`) so a misspelt field fails here instead of being pruned by the API
server.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exaone_lora.spec import DeploymentSpec
from infra.common import InfraOptions
from infra.mocks import ProgramRun
from infra.preview import run_program
from tests.infra.conftest import ADAPTERS, variant

KUBERNETES_VERSION = "1.33.0"
TOOLS_IMAGE = "example.azurecr.io/exaone-lora:0.1.0@sha256:" + "d" * 64
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value on the wire

STR = {"type": "string"}
NAME = {"type": "string", "minLength": 1, "maxLength": 253}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def closed(properties: dict[str, Any], required: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False, **extra}


def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = closed({"name": NAME, "namespace": NAME, "labels": STR_MAP, "annotations": STR_MAP}, ("name",))
    return closed({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": metadata, "spec": spec},
                  ("apiVersion", "kind", "metadata", "spec"))


GROUP = {"type": "string", "maxLength": 253}
KIND = {"type": "string", "minLength": 1, "maxLength": 63}

INFERENCE_POOL = resource("inference.networking.k8s.io/v1", "InferencePool", closed({
    "selector": closed({"matchLabels": {**STR_MAP, "minProperties": 1}}, ("matchLabels",)),
    "targetPorts": {"type": "array", "minItems": 1, "maxItems": 1, "items": closed({"number": PORT}, ("number",))},
    "endpointPickerRef": closed({
        "group": GROUP, "kind": KIND, "name": NAME, "port": closed({"number": PORT}, ("number",)),
        "failureMode": {"enum": ["FailOpen", "FailClose"]},
    }, ("name",),
        # The API's rule: "port is required when kind is 'Service'" (kind defaults to Service).
        allOf=[{"if": {"not": {"properties": {"kind": {"not": {"const": "Service"}}}, "required": ["kind"]}},
                "then": {"required": ["port"]}}]),
}, ("selector", "targetPorts", "endpointPickerRef")))

INFERENCE_MODEL_REWRITE = resource("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite", closed({
    "poolRef": closed({"group": GROUP, "kind": KIND, "name": NAME}, ("name",)),
    "rules": {"type": "array", "items": closed({
        "matches": {"type": "array", "items": closed({
            "model": closed({"type": {"enum": ["Exact"]}, "value": {"type": "string", "minLength": 1}}, ("value",)),
        }, ("model",))},
        "targets": {"type": "array", "minItems": 1, "items": closed({
            "weight": {"type": "integer", "minimum": 1, "maximum": 1000000},
            "modelRewrite": {"type": "string", "minLength": 1},
        }, ("modelRewrite",))},
    })},
}, ("poolRef", "rules")))

GATEWAY = resource("gateway.networking.k8s.io/v1", "Gateway", closed({
    "gatewayClassName": NAME,
    "listeners": {"type": "array", "minItems": 1, "maxItems": 64, "items": closed({
        "name": NAME, "hostname": STR, "port": PORT,
        "protocol": {"type": "string", "minLength": 1},
        "allowedRoutes": closed({"namespaces": closed({"from": {"enum": ["All", "Same", "Selector"]},
                                                       "selector": {"type": "object"}})}),
        "tls": {"type": "object"},
    }, ("name", "port", "protocol"))},
    "infrastructure": closed({"annotations": STR_MAP, "labels": STR_MAP, "parametersRef": {"type": "object"}}),
    "addresses": {"type": "array"},
}, ("gatewayClassName", "listeners")))

BACKEND_REF = closed({"group": GROUP, "kind": KIND, "name": NAME, "namespace": NAME, "port": PORT,
                      "weight": {"type": "integer", "minimum": 0, "maximum": 1000000}, "filters": {"type": "array"}},
                     ("name",))
HTTP_ROUTE = resource("gateway.networking.k8s.io/v1", "HTTPRoute", closed({
    "parentRefs": {"type": "array", "maxItems": 32, "items": closed(
        {"group": GROUP, "kind": KIND, "name": NAME, "namespace": NAME, "sectionName": NAME, "port": PORT}, ("name",))},
    "hostnames": {"type": "array", "items": STR},
    "rules": {"type": "array", "maxItems": 16, "items": closed({
        "name": NAME,
        "matches": {"type": "array", "maxItems": 64, "items": closed({
            "path": closed({"type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                            "value": {"type": "string", "pattern": "^/", "maxLength": 1024}}),
            "headers": {"type": "array"}, "queryParams": {"type": "array"},
            "method": {"enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]},
        })},
        "filters": {"type": "array"},
        "backendRefs": {"type": "array", "items": BACKEND_REF},
        "timeouts": closed({"request": {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"},
                            "backendRequest": {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}}),
    })},
}))

SCALED_OBJECT = resource("keda.sh/v1alpha1", "ScaledObject", closed({
    "scaleTargetRef": closed({"apiVersion": STR, "kind": STR, "name": NAME, "envSourceContainerName": STR}, ("name",)),
    "minReplicaCount": {"type": "integer", "minimum": 0},
    "maxReplicaCount": {"type": "integer", "minimum": 0},
    "idleReplicaCount": {"type": "integer", "minimum": 0},
    "pollingInterval": {"type": "integer", "minimum": 1},
    "cooldownPeriod": {"type": "integer", "minimum": 0},
    "advanced": {"type": "object"}, "fallback": {"type": "object"},
    "triggers": {"type": "array", "minItems": 1, "items": closed({
        "type": {"type": "string", "minLength": 1}, "name": STR, "metadata": STR_MAP,
        "authenticationRef": closed({"name": NAME, "kind": STR}, ("name",)),
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]}, "useCachedMetrics": {"type": "boolean"},
    }, ("type", "metadata"))},
}, ("scaleTargetRef", "triggers")))

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    (s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"]): s
    for s in (INFERENCE_POOL, INFERENCE_MODEL_REWRITE, GATEWAY, HTTP_ROUTE, SCALED_OBJECT)
}


def unwrap(value: Any) -> Any:
    """Inputs as the API server would receive them: secrets revealed (they are test values), no nulls."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return unwrap(value["value"])
        return {k: unwrap(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def manifests(run: ProgramRun) -> list[dict[str, Any]]:
    return [unwrap(r.inputs) for r in run.resources if r.custom and r.type.startswith("kubernetes:")]


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    schema = CRD_SCHEMAS[(manifest["apiVersion"], manifest["kind"])]
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def is_core(manifest: dict[str, Any]) -> bool:
    return (manifest["apiVersion"], manifest["kind"]) not in CRD_SCHEMAS


def aks_spec(**aks: Any) -> DeploymentSpec:
    return variant("poc", target="aks", adapters=ADAPTERS, aks={"toolsImage": TOOLS_IMAGE, **aks})


VARIANTS = {
    "plain": aks_spec(),
    "canary-autoscaled": aks_spec(canaries=[{"alias": "medical", "version": 4, "blobPath": "medical/v4",
                                             "sha256": "c" * 64, "weight": 25}], autoscaling={"maxReplicas": 3}),
    "public-private-cluster": variant("pilot", target="aks", adapters=ADAPTERS, operatorCidr=None,
                                      aks={"toolsImage": TOOLS_IMAGE, "privateCluster": True}),
}


@functools.cache
def plain_manifests() -> tuple[dict[str, Any], ...]:
    return tuple(manifests(run_program(VARIANTS["plain"], InfraOptions(api_key="k" * 32))))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return manifests(run_program(VARIANTS[request.param], InfraOptions(api_key="test-key-" + "x" * 24)))


def test_every_core_manifest_passes_the_kubernetes_openapi_schema(rendered: list[dict[str, Any]]) -> None:
    core = [m for m in rendered if is_core(m)]
    kinds = {m["kind"] for m in core}
    assert {"Namespace", "Deployment", "DaemonSet", "Secret", "ServiceAccount", "ConfigMap", "Service", "Role",
            "RoleBinding", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for m in core:
        try:
            kubernetes_validate.validate(m, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{m['kind']}/{m['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_every_custom_resource_passes_its_schema(rendered: list[dict[str, Any]]) -> None:
    custom = [m for m in rendered if not is_core(m)]
    assert {"InferencePool", "InferenceModelRewrite", "Gateway", "HTTPRoute"} <= {m["kind"] for m in custom}
    for m in custom:
        assert not crd_errors(m), f"{m['kind']}/{m['metadata']['name']}: {crd_errors(m)}"


def test_core_validation_catches_a_broken_manifest() -> None:
    deployment = copy.deepcopy(next(m for m in plain_manifests()
                                    if m["kind"] == "Deployment" and m["metadata"]["name"] == "vllm"))
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["resource"] = typo["spec"]["template"]["spec"]["containers"][0].pop(
        "resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    no_selector = copy.deepcopy(deployment)
    del no_selector["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(no_selector, KUBERNETES_VERSION, strict=True)


MUTATIONS: dict[str, list[tuple[Any, ...]]] = {
    "InferencePool": [("spec", "targetPorts"), ("spec", "endpointPickerRef", "port"), ("spec", "selector")],
    "InferenceModelRewrite": [("spec", "poolRef"), ("spec", "rules", 0, "targets", 0, "modelRewrite"),
                              ("spec", "rules", 0, "matches", 0, "model", "value")],
    "HTTPRoute": [("spec", "parentRefs", 0, "name"), ("spec", "rules", 0, "backendRefs", 0, "name")],
    "Gateway": [("spec", "gatewayClassName"), ("spec", "listeners", 0, "port")],
}


@pytest.mark.parametrize(("kind", "path"), [(k, p) for k, paths in MUTATIONS.items() for p in paths])
def test_crd_schemas_refuse_a_missing_required_field(kind: str, path: tuple[Any, ...]) -> None:
    manifest = copy.deepcopy(next(m for m in plain_manifests() if m["kind"] == kind))
    assert not crd_errors(manifest)
    parent: Any = manifest
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    assert crd_errors(manifest), f"{kind} without {'.'.join(map(str, path))} passed the schema"


@settings(max_examples=60, deadline=None)
@given(weight=st.one_of(st.integers(max_value=0), st.integers(min_value=1_000_001), st.text(max_size=5),
                        st.floats().filter(lambda f: not f.is_integer())),
       field=st.sampled_from(["weigth", "model_rewrite", "split"]))
def test_rewrite_schema_refuses_bad_weights_and_unknown_fields(weight: Any, field: str) -> None:
    rewrite: dict[str, Any] = {"apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferenceModelRewrite",
               "metadata": {"name": "alias-medical", "namespace": "exaone-lora"},
               "spec": {"poolRef": {"group": "inference.networking.k8s.io", "name": "exaone-pool"},
                        "rules": [{"matches": [{"model": {"type": "Exact", "value": "medical"}}],
                                   "targets": [{"modelRewrite": "medical-v3", "weight": 100}]}]}}
    assert not crd_errors(rewrite)
    bad_weight = copy.deepcopy(rewrite)
    bad_weight["spec"]["rules"][0]["targets"][0]["weight"] = weight
    assert crd_errors(bad_weight)
    unknown = copy.deepcopy(rewrite)
    unknown["spec"]["rules"][0]["targets"][0][field] = 1
    assert crd_errors(unknown)


def test_the_picker_config_uses_only_declared_plugins(rendered: list[dict[str, Any]]) -> None:
    config_map = next(m for m in rendered if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "endpoint-picker")
    config = yaml.safe_load(next(iter(config_map["data"].values())))
    assert (config["apiVersion"], config["kind"]) == ("inference.networking.x-k8s.io/v1alpha1", "EndpointPickerConfig")
    declared = {p["type"] for p in config["plugins"]}
    used = {p["pluginRef"] for profile in config["schedulingProfiles"] for p in profile["plugins"]}
    assert used == declared and {"queue-scorer", "kv-cache-utilization-scorer", "lora-affinity-scorer"} <= declared
    epp = next(m for m in rendered if m["kind"] == "Deployment" and m["metadata"]["name"] == "endpoint-picker")
    container = epp["spec"]["template"]["spec"]["containers"][0]
    image = container["image"]
    assert image.startswith("registry.k8s.io/gateway-api-inference-extension/epp:v") and image.count(".") >= 3
    pool = next(m for m in rendered if m["kind"] == "InferencePool")
    args = container["args"]
    assert args[args.index("--pool-name") + 1] == pool["metadata"]["name"]
    assert pool["spec"]["endpointPickerRef"]["name"] == epp["metadata"]["name"]
