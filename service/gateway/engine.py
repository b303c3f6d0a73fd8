"""An async client for one vLLM replica: the only code that calls vLLM's admin endpoints.

The gateway and the reconciler both use it; the public gateway app never forwards to these paths.
Loads and unloads are made idempotent here because a reconciler re-run after a crash must be able
to repeat any step: vLLM answers 400 "already been loaded" and 404 "not found" for those cases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx


class EngineError(RuntimeError):
    """vLLM refused an admin call or a warm-up request (status and vLLM's message kept)."""

    def __init__(self, url: str, action: str, status: int | None, message: str) -> None:
        super().__init__(f"{action} on {url} failed ({status}): {message}")
        self.url = url
        self.action = action
        self.status = status
        self.message = message


@dataclass(frozen=True)
class EngineModels:
    """What a replica serves now: its base model names and its LoRA adapters (name -> path)."""

    base: tuple[str, ...]
    adapters: dict[str, str] = field(default_factory=dict)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error)
    return str(body)[:500]


class EngineClient:
    def __init__(self, url: str, client: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def models(self) -> EngineModels:
        response = await self._client.get(f"{self.url}/v1/models", headers=self._headers, timeout=10)
        if response.status_code != 200:
            raise EngineError(self.url, "list models", response.status_code, _message(response))
        base: list[str] = []
        adapters: dict[str, str] = {}
        for entry in response.json().get("data", []):
            # vLLM lists adapters with `parent` = the base model's served name.
            if entry.get("parent"):
                adapters[str(entry["id"])] = str(entry.get("root", ""))
            else:
                base.append(str(entry["id"]))
        return EngineModels(tuple(base), adapters)

    async def metrics_text(self, timeout: float) -> str:
        """vLLM's Prometheus /metrics text (the scheduler's queue, KV-cache use, LoRA adapters in use)."""
        response = await self._client.get(f"{self.url}/metrics", headers=self._headers, timeout=timeout)
        if response.status_code != 200:
            raise EngineError(self.url, "read metrics", response.status_code, _message(response))
        return response.text

    async def load(self, name: str, path: str) -> bool:
        """Load adapter `name` from `path`; False when it was already loaded (nothing changed)."""
        response = await self._client.post(f"{self.url}/v1/load_lora_adapter", headers=self._headers,
                                           json={"lora_name": name, "lora_path": path}, timeout=120)
        if response.status_code == 200:
            return True
        message = _message(response)
        if response.status_code == 400 and "already been loaded" in message:
            return False
        raise EngineError(self.url, f"load {name}", response.status_code, message)

    async def unload(self, name: str) -> bool:
        """Unload adapter `name`; False when it was not loaded."""
        response = await self._client.post(f"{self.url}/v1/unload_lora_adapter", headers=self._headers,
                                           json={"lora_name": name}, timeout=60)
        if response.status_code == 200:
            return True
        message = _message(response)
        if response.status_code == 404 or "cannot be found" in message or "not found" in message.lower():
            return False
        raise EngineError(self.url, f"unload {name}", response.status_code, message)

    async def warmup(self, name: str, prompt: str = "Hello", max_tokens: int = 1) -> float:
        """One real generation through `name`; raises unless it answers 200 with a choice."""
        start = time.perf_counter()
        response = await self._client.post(
            f"{self.url}/v1/completions", headers=self._headers, timeout=120,
            json={"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        )
        if response.status_code != 200 or not response.json().get("choices"):
            raise EngineError(self.url, f"warm-up {name}", response.status_code, _message(response))
        return time.perf_counter() - start

    async def healthy(self) -> bool:
        try:
            return (await self._client.get(f"{self.url}/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False
