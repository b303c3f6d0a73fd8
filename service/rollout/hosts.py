"""How a rollout reaches the serving side: one gateway and its vLLM replicas, driven by an in-process reconciler.

`GatewayHosts` is what `exaone-lora adapters rollout` uses with `--gateway-admin` and `--engine` (locally, or
through SSH tunnels to a host's admin and replica ports); each entry of `hosts` is one gateway with the replicas
behind it, reconciled one after the other as `fab deploy-adapters` does host by host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.gateway.admin_client import GatewayAdmin
from service.reconciler import Reconciler, desired_from_registry
from service.registry import AdapterRegistry


class HostsError(RuntimeError):
    pass


@dataclass
class GatewayHost:
    admin: GatewayAdmin
    reconciler: Reconciler


@dataclass
class GatewayHosts:
    registry: AdapterRegistry
    hosts: list[GatewayHost]

    async def apply(self) -> None:
        desired = desired_from_registry(self.registry)
        for host in self.hosts:
            report = await host.reconciler.reconcile(desired)
            if not report["ok"]:
                raise HostsError(f"the reconciler of {host.admin.url} failed: {report['failed']}")

    async def metrics(self) -> list[str]:
        return list(await asyncio.gather(*(h.admin.metrics() for h in self.hosts)))
