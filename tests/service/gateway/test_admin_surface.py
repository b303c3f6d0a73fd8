"""Issue 20 item 7, gateway side: /metrics only on the admin listener, no host path in an answer to a client,
`/admin/versions` loads only from under the adapter root, an alias points only at its own domain's versions."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.gateway import create_gateway
from service.gateway.guards import GuardError, adapter_path
from tests.support.gateway_replicas import HOST_PATH, ScriptedReplica, admin_key, gateway, serving


def test_metrics_are_served_on_the_admin_listener_only() -> None:
    replica = ScriptedReplica()
    with serving(replica.handle) as upstream, gateway(upstream, admin_key(), api_key="p" * 20) as (gw, _), \
            httpx.Client(timeout=30) as client:
        public = client.get(f"{gw.public_url}/metrics", headers={"Authorization": f"Bearer {'p' * 20}"})
        assert public.status_code == 404 and public.json()["error"]["code"] == "http_404"
        # Prometheus on the host scrapes the admin listener without holding the admin key ...
        scraped = client.get(f"{gw.admin_url}/metrics")
        assert scraped.status_code == 200 and "# TYPE exaone_gateway_requests_total counter" in scraped.text
        # ... which still guards everything else there.
        assert client.get(f"{gw.admin_url}/admin/state").status_code == 401


@pytest.mark.parametrize(("prompt", "status"), [("path-400", 400), ("path-500", 500)])
def test_upstream_text_with_host_paths_stays_in_the_log(prompt: str, status: int, caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    replica = ScriptedReplica()
    caplog.set_level(logging.WARNING, logger="service.gateway")
    with serving(replica.handle) as upstream, gateway(upstream, admin_key()) as (gw, _), httpx.Client(timeout=30) as c:
        for path, body in (("/v1/completions", {"model": "medical", "prompt": prompt}),
                           ("/v1/completions", {"model": "exaone", "prompt": prompt})):
            answer = c.post(f"{gw.public_url}{path}", json=body)
            assert answer.status_code == status
            error = answer.json()["error"]
            assert "/data" not in answer.text and "lora-adapters" not in answer.text and "Traceback" not in answer.text
            assert error["request_id"] == answer.headers["x-request-id"] and error["request_id"] in error["message"]
            logged = [r.getMessage() for r in caplog.records if error["request_id"] in r.getMessage()]
            assert len(logged) == 1 and HOST_PATH in logged[0]


def test_a_plain_upstream_refusal_reaches_the_client_with_the_alias() -> None:
    replica = ScriptedReplica()
    with serving(replica.handle) as upstream, gateway(upstream, admin_key()) as (gw, _), httpx.Client(timeout=30) as c:
        answer = c.post(f"{gw.public_url}/v1/completions", json={"model": "medical", "prompt": "plain-400"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "max_tokens must be at least 1, got 0 (model medical)"


def test_versions_load_only_from_under_the_adapter_root(tmp_path: Path) -> None:
    root = tmp_path / "lora-adapters"
    (root / "medical-v2").mkdir(parents=True)
    (tmp_path / "elsewhere" / "medical-v3").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "medical-v3", root / "medical-v3")
    replica = ScriptedReplica()
    key = admin_key()
    auth = {"Authorization": f"Bearer {key}"}
    refused = {"/etc": "must be under the adapter root", str(tmp_path / "elsewhere" / "medical-v3"): "must be under",
               f"{root}/../elsewhere/medical-v3": "must not contain `..`", f"{root}/legal-v1": "must end in the version",
               "lora-adapters/medical-v2": "absolute", str(root / "medical-v3"): "through a symlink"}
    with serving(replica.handle) as upstream, gateway(upstream, key, adapter_root=str(root)) as (gw, _), \
            httpx.Client(timeout=30) as c:
        for path, reason in refused.items():
            name = "medical-v3" if "medical-v3" in path else "medical-v2"
            answer = c.post(f"{gw.admin_url}/admin/versions", json={"name": name, "path": path}, headers=auth)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_adapter_path", (path, answer.text)
            assert reason in answer.json()["error"]["message"], (path, answer.text)
        assert [b for _, p, b in replica.requests if p == "/v1/load_lora_adapter"] == []
        for body in ({"name": "medical-v2", "path": str(root / "medical-v2")}, {"name": "medical-v2"}):
            assert c.post(f"{gw.admin_url}/admin/versions", json=body, headers=auth).status_code == 200
    loads = [b for _, p, b in replica.requests if p == "/v1/load_lora_adapter"]
    assert loads == [{"lora_name": "medical-v2", "lora_path": str(root / "medical-v2")}] * 2


def test_without_an_adapter_root_the_admin_api_loads_nothing() -> None:
    replica = ScriptedReplica()
    key = admin_key()
    with serving(replica.handle) as upstream, gateway(upstream, key) as (gw, _), httpx.Client(timeout=30) as c:
        answer = c.post(f"{gw.admin_url}/admin/versions", json={"name": "medical-v2", "path": "/tmp/medical-v2"},
                        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 400 and "no --adapter-root" in answer.json()["error"]["message"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "", "medical-v2", "legal-v1", "x", "lora-adapters", "srv", "a/b", "~"]),
                max_size=6), st.booleans())
def test_an_accepted_path_is_always_under_the_root_and_named_after_the_version(parts: list[str], absolute: bool) -> None:
    root = "/srv/lora-adapters"
    path = ("/" if absolute else "") + "/".join(parts)
    try:
        accepted = adapter_path(root, "medical-v2", path)
    except GuardError:
        return
    assert accepted.startswith(root + "/") and accepted.rsplit("/", 1)[1] == "medical-v2", path
    assert ".." not in accepted.split("/")


def test_an_alias_points_only_at_its_own_domain() -> None:
    replica = ScriptedReplica()
    key = admin_key()
    auth = {"Authorization": f"Bearer {key}"}
    with pytest.raises(GuardError, match="own domain"):
        create_gateway(["http://127.0.0.1:9"], admin_key=key, initial_aliases={"medical": "legal-v2"})
    with serving(replica.handle) as upstream, gateway(upstream, key) as (gw, apps), httpx.Client(timeout=30) as c:
        # medical-v1 is loaded; `legal` may not point at it, nor `medical` at a version named for another domain.
        for alias, body in (("legal", {"name": "medical-v1", "warmup": False}),
                            ("medic", {"name": "medical-v1", "warmup": False}),
                            ("medical", {"name": "legal-v2", "warmup": False})):
            answer = c.put(f"{gw.admin_url}/admin/aliases/{alias}", json=body, headers=auth)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "alias_domain_mismatch", answer.text
        assert set(apps.core.aliases.targets()) == {"medical"}
        ok = c.put(f"{gw.admin_url}/admin/aliases/medical", json={"version": 1, "warmup": False}, headers=auth)
        assert ok.status_code == 200 and ok.json()["current"] == "medical-v1"
