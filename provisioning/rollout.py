"""`fab rollout-adapters`: the rollout controller (service.rollout) driven over SSH, host by host.

The controller writes each step into the registry's alias (the desired state) with the operator's login, then,
exactly as `deploy-adapters` does, runs the host's reconciler over SSH (`reconcile_host`: the host pulls with its
own identity, validates, loads, warms up, and sets the canary split in its gateway). Each window's metrics are
the gateways' own `/metrics`, read on each host's loopback admin port over the same SSH connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from fabric import Connection

from exaone_lora.spec import DeploymentSpec
from provisioning.adapters import DeployError, host_request, reconcile_host
from service.gateway.server import ADMIN_KEY_ENV
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.registry_location import RegistrySettings
from service.rollout.controller import RolloutController, RolloutSettings
from service.rollout.record import RolloutRecord

Reporter = Callable[[str], None]


@dataclass
class SshHosts:
    """The controller's `Hosts` over Fabric connections (one gateway per host)."""

    connections: list[Connection]
    spec: DeploymentSpec
    ref: RegistrySettings
    layout: HostLayout = DEFAULT_LAYOUT
    report: Reporter = print

    async def apply(self) -> None:
        for conn in self.connections:
            host: str = conn.host

            def say(line: str, host: str = host) -> None:
                self.report(f"[{host}] {line}")

            # Fabric is blocking; a thread keeps the controller's event loop (and its Ctrl-C handling) free.
            await asyncio.to_thread(reconcile_host, conn, self.spec, self.ref, layout=self.layout, report=say)

    async def metrics(self) -> list[str]:
        texts = []
        for conn in self.connections:
            url = f"http://127.0.0.1:{self.spec.gateway.admin_port}/metrics"
            status, text = await asyncio.to_thread(host_request, conn, "GET", url, layout=self.layout,
                                                   key_var=ADMIN_KEY_ENV)
            if status != 200:
                raise DeployError(f"the gateway on {conn.host} answered {status} for /metrics: {text[:300]}")
            texts.append(text)
        return texts


def rollout_adapters(connections: list[Connection], spec: DeploymentSpec, ref: RegistrySettings, domain: str,
                     version: int, settings: RolloutSettings, *, layout: HostLayout = DEFAULT_LAYOUT,
                     report: Reporter = print) -> RolloutRecord:
    """Run one rollout to its end (promoted, rolled back); Ctrl-C/SIGTERM end the canary on every host first."""
    if spec.lora_mode == "static" or not spec.gateway.enabled:
        raise DeployError(f"stack {spec.stack}: a canary needs the gateway and runtime LoRA loading")
    pinned = {p.alias: p.version for p in spec.adapters}
    if domain in pinned:
        raise DeployError(f"stack {spec.stack} pins {domain} to v{pinned[domain]}: a pinned alias moves by promotion "
                          "of the pin (exaone-lora infra promote), not by a canary")
    hosts = SshHosts(connections, spec, ref, layout, report)
    controller = RolloutController(ref.open("operator"), domain, version, settings, hosts, say=report)
    return asyncio.run(controller.run())
