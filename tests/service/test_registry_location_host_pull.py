"""The host's reconciler pulls adapters with the host's own identity: `python -m service.cli reconcile` reading
/etc/exaone-lora/registry.env, as the systemd unit runs it, against HTTPS+OAuth Azurite and a real CPU vLLM."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.local.identity import TokenEndpoint
from exaone_lora.model_shape import EXAONE_TINY
from service.registry_location import RegistrySettings, render_env_file
from tests.support.processes import REPO, Azurite, RunningProcess
from tests.support.registry import HOST_CLIENT_ID, as_operator, host_process_env

pytestmark = [pytest.mark.vllm, pytest.mark.azurite]


def test_reconcile_pulls_with_the_host_identity(vllm: RunningProcess, azurite_oauth: Azurite,
                                                operator_identity: TokenEndpoint, host_identity: TokenEndpoint,
                                                tiny_adapters: dict[str, Path], tiny_checkpoint: Checkpoint,
                                                clean_azure_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    container, domain = f"host-{uuid.uuid4().hex[:10]}", "hostpull"
    operator = as_operator(clean_azure_env, operator_identity, azurite_oauth, container)
    manifest = operator.publish(domain, tiny_adapters["medical"], base_model_name=EXAONE_TINY.name,
                                base_model_revision="0" * 40, max_rank=8)
    operator.set_alias(domain, manifest.version)

    # Everything the host knows comes from its env file: the registry, its identity, and (only here) the stand-in.
    env_file = tmp_path / "registry.env"
    env_file.write_text(render_env_file(
        RegistrySettings(azurite_oauth.account_url, container, HOST_CLIENT_ID, azurite_oauth.ca_file),
        identity_endpoint=host_identity.url, identity_header=host_identity.header))
    cache = tmp_path / "lora-adapters"
    cmd = [sys.executable, "-m", "service.cli", "reconcile", "--engine", vllm.url, "--registry-env-file", str(env_file),
           "--cache-dir", str(cache), "--base-config", str(tiny_checkpoint.path), "--max-rank", "8",
           "--max-cpu-loras", "4"]
    name = f"{domain}-v{manifest.version}"
    try:
        done = subprocess.run(cmd, env=host_process_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] and {(a["kind"], a["name"]) for a in report["done"]} >= {("load", name), ("switch", name)}
        models = httpx.get(f"{vllm.url}/v1/models", timeout=30).json()["data"]
        assert name in {m["id"] for m in models}
    finally:
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)
    assert host_identity.issued and {t.client_id for t in host_identity.issued} == {HOST_CLIENT_ID}
    for file, digest in manifest.files.items():
        assert hashlib.sha256((cache / name / file).read_bytes()).hexdigest() == digest.sha256
