"""LoRA affinity on two real CPU vLLM replicas: with more adapters than one replica's slots, each adapter's
requests stay on the replica where it is resident (the `scored` policy, service.gateway.scoring)."""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.gateway import create_gateway
from service.gateway.core import GatewayCore
from service.gateway.server import gateway_in_thread
from tests.support.processes import RunningProcess, cpu_slot, free_port, vllm_server
from tests.support.serving import unload_all

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

DOMAINS = ["medical", "legal", "code", "customer_support"]
ALIASES = [f"slot_{d}" for d in DOMAINS]  # names of their own: the session server may hold others' adapters
NAMES = [f"{a}-v1" for a in ALIASES]
ROUNDS = 3


def _idle_scrape_after(core: GatewayCore, moment: float, timeout: float = 15.0) -> None:
    """Wait (bounded) until the gateway has read every replica's /metrics after `moment` and found it idle, so each
    choice below depends on where adapters are resident, not on when the last scrape happened to run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loads = [r.load for r in core.replicas]
        if all(x is not None and x.read_at > moment and x.running == x.waiting == 0 for x in loads):
            return
        time.sleep(0.05)
    raise AssertionError(f"no idle scrape of every replica within {timeout:.0f} s: {[r.load for r in core.replicas]}")


def _placements(text: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "exaone_gateway_replica_requests_total":
                out.setdefault(s.labels["version"], {})[s.labels["replica"]] = int(s.value)
    return out


def _phase(upstreams: list[str], admin_key: str, routing: str, log: Path) -> tuple[dict[str, dict[str, int]], int,
                                                                          dict[str, Any]]:
    """Every alias in turn, one request at a time, ROUNDS rounds, through a gateway with `routing`: the placements,
    the LoRA slot loads of the second replica (its DEBUG log) and the gateway's state at the end."""
    apps = create_gateway(upstreams, admin_key=admin_key, served_name="exaone", refresh_seconds=1.0, routing=routing)
    auth = {"Authorization": f"Bearer {admin_key}"}
    with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as gw:
        for a, name in zip(ALIASES, NAMES, strict=True):
            # No warm-up: it would put every version into the slots of both replicas behind the router's back.
            answer = httpx.put(f"{gw.admin_url}/admin/aliases/{a}", headers=auth, timeout=60,
                               json={"name": name, "warmup": False})
            assert answer.status_code == 200, answer.text
        loads_before = log.read_text().count("Activating LoRA")
        for _ in range(ROUNDS):
            for a in ALIASES:
                if routing == "scored":
                    _idle_scrape_after(apps.core, time.monotonic())
                answer = httpx.post(f"{gw.public_url}/v1/completions", timeout=120,
                                    json={"model": a, "prompt": "Hello", "max_tokens": 2})
                assert answer.status_code == 200, answer.text
        placed = _placements(httpx.get(f"{gw.admin_url}/metrics").text)
        state = httpx.get(f"{gw.admin_url}/admin/state", headers=auth).json()
    return placed, log.read_text().count("Activating LoRA") - loads_before, state


def test_requests_for_an_adapter_go_where_it_is_resident(vllm: RunningProcess, tiny_checkpoint: object, logs_dir: Path,
                                                         admin_key: str, tiny_adapters: dict[str, Path]) -> None:
    # Three of the four aliases have the second replica as their home (ties go there): where least-outstanding
    # sends one request at a time, and what it would cycle through that replica's two slots.
    assert [zlib.crc32(a.encode()) % 2 for a in ALIASES] == [0, 1, 1, 1]
    log = logs_dir / "vllm-routing-replica.log"
    # DEBUG: vLLM logs `Activating LoRA` each time it copies an adapter into one of its slots.
    with vllm_server(tiny_checkpoint.path, log, max_loras=2, max_cpu_loras=4, cpu=cpu_slot(1),  # type: ignore[attr-defined]
                     extra_env={"VLLM_LOGGING_LEVEL": "DEBUG"}) as second:
        upstreams = [vllm.url, second.url]
        try:
            for url in upstreams:
                for name, domain in zip(NAMES, DOMAINS, strict=True):
                    httpx.post(f"{url}/v1/load_lora_adapter", timeout=120,
                               json={"lora_name": name, "lora_path": str(tiny_adapters[domain])}).raise_for_status()
            placed, slot_loads, state = _phase(upstreams, admin_key, "scored", log)
            lo_placed, lo_slot_loads, _ = _phase(upstreams, admin_key, "least-outstanding", log)
        finally:
            unload_all(upstreams, NAMES)
    # Scored: every version stayed on one replica for all its requests, and each replica took two: its slots.
    assert state["routing"] == "scored"
    assert {n: sum(by.values()) for n, by in placed.items()} == dict.fromkeys(NAMES, ROUNDS), placed
    assert all(len(by) == 1 for by in placed.values()), placed
    homes = [next(iter(placed[n])) for n in NAMES]
    assert sorted(homes) == ["0", "0", "1", "1"], placed
    # The second replica loaded each of its two adapters into a slot once, and never swapped afterwards.
    assert slot_loads == 2, slot_loads
    assert [r["lora_slots"] for r in state["replicas"]] == [2, 2]
    assert sorted(state["replicas"][1]["recent_adapters"]) == sorted(n for n, h in zip(NAMES, homes, strict=True)
                                                                     if h == "1")
    # Least-outstanding, same requests: each alias at its home, three adapters through two slots, a swap nearly
    # every request there (the first round may find two of them still resident).
    assert lo_placed == {n: {str(zlib.crc32(a.encode()) % 2): ROUNDS} for a, n in zip(ALIASES, NAMES, strict=True)}
    assert lo_slot_loads >= 3 * ROUNDS - 2, lo_slot_loads
