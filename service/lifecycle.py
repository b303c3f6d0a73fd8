"""The seed's 8-step adapter lifecycle and the swap-latency benchmark, against a running vLLM server.

Both return JSON-able dicts (the CLI prints them; the benchmark report and promotion evidence read
them). They talk to vLLM directly, because they test the engine's own dynamic LoRA surface; they
clean up after themselves even when a step fails, and use names of their own (a run id) so they
never touch adapters that are serving traffic.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

PROMPT = "The patient reports a mild headache and"


def _models(client: httpx.Client, url: str) -> tuple[list[str], list[str]]:
    data = client.get(f"{url}/v1/models").raise_for_status().json()["data"]
    return [m["id"] for m in data if not m.get("parent")], sorted(m["id"] for m in data if m.get("parent"))


def _load(client: httpx.Client, url: str, name: str, path: Path) -> httpx.Response:
    return client.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(Path(path).resolve())})


def _unload(client: httpx.Client, url: str, name: str) -> httpx.Response:
    return client.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name})


def _query(client: httpx.Client, url: str, model: str, max_tokens: int = 4) -> httpx.Response:
    return client.post(f"{url}/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                                                       "temperature": 0, "return_token_ids": True})


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


class _Steps:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def record(self, title: str, start: float, passed: bool, **details: Any) -> bool:
        self.steps.append({"step": len(self.steps) + 1, "name": title, "passed": passed,
                           "seconds": round(time.perf_counter() - start, 4), "details": details})
        return passed


def run_lifecycle(url: str, adapters: Mapping[str, Path], *, served_name: str = "exaone", api_key: str | None = None,
                  run_id: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """initial state; load all; list; query each; unload one; query it (404/400); reload as v2; clean up."""
    if not adapters:
        raise ValueError("the lifecycle needs at least one adapter directory")
    run_id = run_id or secrets.token_hex(3)
    names = {domain: f"lc{run_id}-{domain}-v1" for domain in adapters}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    loaded: set[str] = set()
    s = _Steps()
    started = time.perf_counter()
    first_domain = next(iter(adapters))
    with httpx.Client(timeout=timeout, headers=headers) as client:
        try:
            t = time.perf_counter()
            base, initial = _models(client, url)
            s.record("initial state", t, served_name in base, base=base, adapters=initial)

            t = time.perf_counter()
            loads: dict[str, Any] = {}
            for domain, name in names.items():
                t1 = time.perf_counter()
                response = _load(client, url, name, adapters[domain])
                loads[name] = {"status": response.status_code, "seconds": round(time.perf_counter() - t1, 4)}
                if response.status_code == 200:
                    loaded.add(name)
                else:
                    loads[name]["error"] = _error(response)
            s.record(f"load {len(names)} adapters", t, loaded == set(names.values()), loads=loads)

            t = time.perf_counter()
            _, listed = _models(client, url)
            s.record("list adapters", t, set(names.values()) <= set(listed), listed=listed)

            t = time.perf_counter()
            answers: dict[str, Any] = {}
            for name in names.values():
                t1 = time.perf_counter()
                response = _query(client, url, name)
                ok = response.status_code == 200 and bool(response.json().get("choices"))
                choice = response.json()["choices"][0] if ok else {}
                answers[name] = {"status": response.status_code, "seconds": round(time.perf_counter() - t1, 4),
                                 "token_ids": choice.get("token_ids"), "model": response.json().get("model") if ok else None}
            distinct = len({tuple(a["token_ids"] or ()) for a in answers.values()})
            s.record("query each adapter", t, all(a["status"] == 200 for a in answers.values()), answers=answers,
                     distinct_outputs=distinct)

            t = time.perf_counter()
            victim = names[first_domain]
            response = _unload(client, url, victim)
            if response.status_code == 200:
                loaded.discard(victim)
            _, after = _models(client, url)
            s.record("unload one adapter", t, response.status_code == 200 and victim not in after, unloaded=victim)

            t = time.perf_counter()
            response = _query(client, url, victim)
            message = _error(response)
            s.record("query the unloaded adapter", t, response.status_code in (400, 404) and victim in message,
                     status=response.status_code, error=message)

            t = time.perf_counter()
            new_name = f"lc{run_id}-{first_domain}-v2"
            response = _load(client, url, new_name, adapters[first_domain])
            if response.status_code == 200:
                loaded.add(new_name)
            answer = _query(client, url, new_name)
            s.record("reload as a new version", t, response.status_code == 200 and answer.status_code == 200,
                     name=new_name, load_status=response.status_code, query_status=answer.status_code)
        finally:
            t = time.perf_counter()
            failures = {}
            for name in sorted(loaded):
                response = _unload(client, url, name)
                if response.status_code != 200:
                    failures[name] = _error(response)
            try:
                _, final = _models(client, url)
            except httpx.HTTPError as exc:
                final = [f"unreachable: {exc}"]
            leftover = sorted(set(final) & (set(names.values()) | {f"lc{run_id}-{first_domain}-v2"}))
            s.record("clean up", t, not failures and not leftover, unloaded=sorted(loaded), failures=failures,
                     leftover=leftover)
    return {"kind": "lifecycle", "url": url, "run_id": run_id, "passed": len(s.steps) == 8 and all(x["passed"] for x in s.steps),
            "steps": s.steps, "seconds": round(time.perf_counter() - started, 3)}


def _has_choice(line: str) -> bool:
    if not line.startswith("data:") or line.endswith("[DONE]"):
        return False
    return bool(json.loads(line[5:]).get("choices"))


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]
    return {"mean": round(statistics.fmean(ordered), 4), "p50": round(pct(0.5), 4), "p95": round(pct(0.95), 4),
            "max": round(ordered[-1], 4)}


def swap_benchmark(url: str, adapter: Path, *, cycles: int = 5, api_key: str | None = None, max_tokens: int = 4,
                   run_id: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """N cycles of: load a fresh immutable name, stream until the first token, unload. Seconds per phase."""
    if not 1 <= cycles <= 1000:
        raise ValueError("cycles must be between 1 and 1000")
    run_id = run_id or secrets.token_hex(3)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for i in range(cycles):
            name = f"swap{run_id}-v{i + 1}"
            t0 = time.perf_counter()
            response = _load(client, url, name, adapter)
            load_s = time.perf_counter() - t0
            if response.status_code != 200:
                errors.append(f"{name}: load {response.status_code} {_error(response)}")
                continue
            try:
                t1 = time.perf_counter()
                first_token_s = None
                body = {"model": name, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
                with client.stream("POST", f"{url}/v1/completions", json=body) as stream:
                    for line in stream.iter_lines():
                        if first_token_s is None and _has_choice(line):
                            first_token_s = time.perf_counter() - t1
                    status = stream.status_code
                total_s = time.perf_counter() - t1
            finally:
                t2 = time.perf_counter()
                unloaded = _unload(client, url, name)
                unload_s = time.perf_counter() - t2
            if status != 200 or first_token_s is None or unloaded.status_code != 200:
                errors.append(f"{name}: generate {status}, unload {unloaded.status_code}")
                continue
            results.append({"cycle": i + 1, "load_s": round(load_s, 4), "first_token_s": round(first_token_s, 4),
                            "generate_s": round(total_s, 4), "unload_s": round(unload_s, 4),
                            "swap_to_first_token_s": round(load_s + first_token_s, 4)})
    summary = {key: _summary([r[key] for r in results])
               for key in ("load_s", "first_token_s", "unload_s", "swap_to_first_token_s")} if results else {}
    return {"kind": "swap-benchmark", "url": url, "adapter": str(adapter), "cycles": cycles, "completed": len(results),
            "passed": not errors and len(results) == cycles, "errors": errors, "summary": summary, "cycles_detail": results}
