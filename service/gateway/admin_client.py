"""Client of the gateway's admin listener (used by the reconciler and the CLI)."""

from __future__ import annotations

from typing import Any

import httpx

from service.gateway.state import Split


class AdminError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"gateway admin answered {status}: {message}")
        self.status = status


class GatewayAdmin:
    """The alias side of reconciliation, over HTTP, against a running gateway's admin app."""

    def __init__(self, url: str, key: str, client: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self._client = client
        self._headers = {"Authorization": f"Bearer {key}"}

    async def _call(self, method: str, path: str, json: dict[str, Any] | None = None, timeout: float = 120) -> Any:
        response = await self._client.request(method, f"{self.url}{path}", json=json, headers=self._headers, timeout=timeout)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise AdminError(response.status_code, message)
        return response.json()

    async def state(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/admin/state"))

    async def aliases(self) -> dict[str, str]:
        return {alias: str(t["name"]) for alias, t in (await self.state())["aliases"].items()}

    async def last_used(self) -> dict[str, float]:
        return {k: float(v) for k, v in (await self.state())["last_used"].items()}

    async def refresh(self) -> None:
        await self._call("POST", "/admin/refresh")

    async def switch(self, alias: str, name: str) -> None:
        # The reconciler warmed the version up on every replica already.
        await self._call("PUT", f"/admin/aliases/{alias}", {"name": name, "warmup": False})

    async def drain(self, name: str, timeout: float = 60.0) -> None:
        await self._call("POST", f"/admin/versions/{name}/drain", {"timeout": timeout}, timeout=timeout + 10)

    async def splits(self) -> dict[str, Split]:
        canaries = (await self.state()).get("canaries", {})
        return {alias: Split(str(c["name"]), int(c["weight"]), int(c["shadow"]), c.get("sticky"))
                for alias, c in canaries.items()}

    async def set_split(self, alias: str, split: Split) -> None:
        await self._call("PUT", f"/admin/aliases/{alias}/canary", {"name": split.name, "weight": split.weight,
                                                                   "shadow": split.shadow, "sticky": split.sticky,
                                                                   "warmup": False})

    async def clear_split(self, alias: str) -> None:
        await self._call("DELETE", f"/admin/aliases/{alias}/canary")

    async def metrics(self) -> str:
        """The gateway's Prometheus text (on the admin listener, no key needed)."""
        response = await self._client.get(f"{self.url}/metrics", timeout=30)
        response.raise_for_status()
        return response.text
