"""Pulumi's mock runtime for this program: plausible Azure outputs, and a monitor that records every resource
(URN, type, inputs) so the tests and `infra preview` can inspect the graph and run the policy rules on it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, Mocks
from pulumi.runtime.sync_await import _ensure_event_loop

SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
TENANT = "00000000-0000-0000-0000-0000000000aa"
MOCK_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: mock, cluster: {server: 'https://mock-aks.invalid:443'}}]
contexts: [{name: mock, context: {cluster: mock, user: mock}}]
current-context: mock
users: [{name: mock, user: {token: mock}}]
"""


# The input that sets a resource's Azure name (its `name` output); others get the logical name.
NAME_INPUTS = {"ResourceGroup": "resourceGroupName", "VirtualMachine": "vmName", "BlobContainer": "containerName",
               "LoadBalancer": "loadBalancerName", "StorageAccount": "accountName", "Disk": "diskName",
               "PrivateZone": "privateZoneName"}
STACK_REFERENCE = "pulumi:pulumi:StackReference"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RecordedResource:
    urn: str
    type: str
    name: str
    inputs: dict[str, Any]
    custom: bool
    protect: bool = False


def _uuid(seed: str) -> str:
    h = hashlib.sha256(seed.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _azure_id(args: MockResourceArgs) -> str:
    inputs = args.inputs
    rg = inputs.get("resourceGroupName", "rg")
    kind = args.typ.split(":")[-1]
    if kind == "ResourceGroup":
        return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{inputs.get('resourceGroupName', args.name)}"
    if kind == "StorageAccount":
        return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/"
                f"{inputs.get('accountName', args.name)}")
    if kind == "BlobContainer":
        return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/"
                f"{inputs.get('accountName')}/blobServices/default/containers/{inputs.get('containerName', args.name)}")
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/mock/{kind}/{args.name}"


def registry_reference(name: str, root: Path) -> dict[str, Any]:
    """A StackReference to the registry stack answers with the outputs that stack's program produces for the
    stack file in `root` (`infra.registry.registry_outputs`, which a test checks against the program itself)."""
    from infra.registry import load_registry_config, registry_outputs

    stack = name.rsplit("/", 1)[-1]
    return {"name": name, "outputs": registry_outputs(load_registry_config(stack, root), SUBSCRIPTION),
            "secretOutputNames": []}


class AzureMocks(Mocks):
    """Outputs Azure would compute (ids, principal ids, IPs, issuer URL); everything else echoes the inputs."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        if args.typ == STACK_REFERENCE:
            name = str(args.inputs.get("name") or args.resource_id or args.name)
            return name, registry_reference(name, self.root)
        if not args.custom:
            return None, {}
        state = dict(args.inputs)
        kind = args.typ.split(":")[-1]
        if args.typ.startswith("azure-native:"):
            rid = _azure_id(args)
            name_key = NAME_INPUTS.get(kind)
            state["name"] = args.inputs.get(name_key) if name_key and args.inputs.get(name_key) else args.name
            if kind == "UserAssignedIdentity":
                state |= {"principalId": _uuid("principal" + args.name), "clientId": _uuid("client" + args.name),
                          "tenantId": TENANT}
            elif kind == "PublicIPAddress":
                octet = int(hashlib.sha256(args.name.encode()).hexdigest()[:2], 16) % 250 + 1
                label = (args.inputs.get("dnsSettings") or {}).get("domainNameLabel")
                state["ipAddress"] = f"20.41.0.{octet}"
                if label:
                    state["dnsSettings"] = {"domainNameLabel": label, "fqdn": f"{label}.koreacentral.cloudapp.azure.com"}
            elif kind == "VirtualMachine":
                identity = dict(args.inputs.get("identity") or {})
                # Azure answers the list of identity ids as a map id -> {principalId, clientId}.
                ids = identity.get("userAssignedIdentities", [])
                identity["userAssignedIdentities"] = {i: {"principalId": _uuid("p" + i), "clientId": _uuid("c" + i)} for i in ids}
                state["identity"] = identity
            elif kind == "ManagedCluster":
                state["oidcIssuerProfile"] = {"enabled": True, "issuerURL": f"https://oidc.mock.invalid/{_uuid(args.name)}/"}
                state["fqdn"] = f"{args.name}.hcp.koreacentral.azmk8s.io"
            elif kind == "StorageAccount":
                state["name"] = args.inputs.get("accountName") or f"{args.name}mock1234"
            elif kind == "LoadBalancer":
                state["frontendIPConfigurations"] = [
                    {**f, "privateIPAddress": "10.42.1.100"} for f in args.inputs.get("frontendIPConfigurations", [])]
            return rid, state
        if kind == "Service" and args.typ.startswith("kubernetes:"):
            state["status"] = {"loadBalancer": {"ingress": [{"ip": "10.42.1.200"}]}}
        return f"{args.name}-id", state

    def call(self, args: MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        if args.token == "azure-native:authorization:getClientConfig":
            return {"clientId": _uuid("cli"), "objectId": _uuid("operator"), "subscriptionId": SUBSCRIPTION,
                    "tenantId": TENANT}
        if args.token == "azure-native:containerservice:listManagedClusterUserCredentials":
            value = base64.b64encode(MOCK_KUBECONFIG.encode()).decode()
            return {"kubeconfigs": [{"name": "clusterUser", "value": value}]}
        return {}


class RecordingMonitor(MockMonitor):
    """The mock monitor, keeping each registration's URN and inputs in order."""

    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.recorded: list[RecordedResource] = []
        self.references: list[str] = []
        self._lock = threading.Lock()

    def ReadResource(self, request: Any) -> Any:
        # Reads are lookups, not resources the stack creates: keep only which stacks it references.
        if request.type == STACK_REFERENCE:
            with self._lock:
                self.references.append(request.id)
        return super().ReadResource(request)

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            _ensure_event_loop()
            inputs = rpc.deserialize_properties(request.object)
            with self._lock:
                self.recorded.append(RecordedResource(response.urn, request.type, request.name, dict(inputs),
                                                      bool(request.custom), bool(request.protect)))
        return response


@dataclass
class ProgramRun:
    resources: list[RecordedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    stack_references: list[str] = field(default_factory=list)

    def of_type(self, resource_type: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == resource_type]

    def one(self, resource_type: str) -> RecordedResource:
        found = self.of_type(resource_type)
        if len(found) != 1:
            raise AssertionError(f"expected exactly one {resource_type}, found {len(found)}")
        return found[0]


def run_under_mocks(project: str, stack: str, program: Any, root: Path = ROOT) -> ProgramRun:
    """Run `program()` (returns a dict of outputs) under the mock runtime; waits for every registration.

    `root` holds the stack files a StackReference (the registry stack) is answered from."""
    # Pulumi's runtime asks asyncio for the thread's current loop; an earlier `asyncio.run()` in the same
    # process (a CLI command, another test) leaves none set, so give it a fresh one for this run.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = AzureMocks(root)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    run = ProgramRun()

    def body() -> pulumi.Output[None]:
        outputs = program()
        keys = list(outputs)
        resolved = pulumi.Output.all(*[outputs[k] for k in keys])
        return resolved.apply(lambda values: run.outputs.update(zip(keys, values, strict=True)))

    try:
        pulumi.runtime.test(body)()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    run.resources = list(monitor.recorded)
    run.stack_references = list(monitor.references)
    return run
