"""The commands as operators and systemd run them: `python -m service.cli gateway ...` and `reconcile`."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.support.processes import REPO, RunningProcess, free_port, run_process
from tests.support.serving import unload_all

pytestmark = pytest.mark.vllm


def test_gateway_process_and_reconcile_command(vllm: RunningProcess, medical_versions: dict[str, Path],
                                               logs_dir: Path) -> None:
    key = secrets.token_urlsafe(24)
    port, admin_port = free_port(), free_port()
    # The flags provisioning's exaone-gateway.service passes; the key comes from secrets.env there.
    cmd = [sys.executable, "-m", "service.cli", "gateway", "--host", "127.0.0.1", "--port", str(port),
           "--admin-port", str(admin_port), "--served-name", "exaone", "--upstream", vllm.url]
    env = {"EXAONE_GATEWAY_ADMIN_KEY": key}
    try:
        with run_process(cmd, logs_dir / "gateway-cli.log", f"http://127.0.0.1:{port}/health", 60, env=env, cwd=REPO):
            runner = CliRunner()
            args = ["reconcile", "--engine", vllm.url, "--gateway-admin", f"http://127.0.0.1:{admin_port}",
                    "--desired", "medical=1", "--adapter", f"medical-v1={medical_versions['medical-v1']}",
                    "--max-cpu-loras", "4"]
            dry = runner.invoke(app, [*args, "--dry-run"], env=env)
            assert dry.exit_code == 0, dry.output
            planned = json.loads(dry.stdout)
            assert [a["kind"] for a in planned["planned"]] == ["load", "warmup", "switch"] and planned["done"] == []
            result = runner.invoke(app, args, env=env)
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["ok"] is True
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                                json={"model": "medical", "prompt": "x", "max_tokens": 1})
            assert answer.status_code == 200 and answer.headers["x-exaone-adapter-version"] == "medical-v1"
            again = runner.invoke(app, args, env=env)
            assert json.loads(again.stdout)["planned"] == []
            wrong = runner.invoke(app, args, env={"EXAONE_GATEWAY_ADMIN_KEY": "not-the-key-not-the-key"})
            assert wrong.exit_code == 1 and "401" in json.loads(wrong.stdout)["error"]
    finally:
        unload_all([vllm.url], ["medical-v1"])


def test_gateway_command_refuses_unsafe_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXAONE_GATEWAY_ADMIN_KEY", raising=False)
    runner = CliRunner()
    no_key = runner.invoke(app, ["gateway", "--upstream", "http://127.0.0.1:9"])
    assert no_key.exit_code == 2 and "no admin key" in _flat(no_key.output)
    public_admin = runner.invoke(app, ["gateway", "--upstream", "http://127.0.0.1:9", "--admin-host", "8.8.8.8"],
                                 env={"EXAONE_GATEWAY_ADMIN_KEY": "k" * 32})
    assert public_admin.exit_code == 2 and "loopback or a private address" in _flat(public_admin.output)
    short = runner.invoke(app, ["gateway", "--upstream", "http://127.0.0.1:9"], env={"EXAONE_GATEWAY_ADMIN_KEY": "short"})
    assert short.exit_code == 2 and "at least 16 characters" in _flat(short.output)
    policy = runner.invoke(app, ["gateway", "--upstream", "http://127.0.0.1:9", "--routing", "random"],
                           env={"EXAONE_GATEWAY_ADMIN_KEY": "k" * 32})
    assert policy.exit_code == 2 and "unknown routing policy 'random': one of scored, least-outstanding" in _flat(
        policy.output)


def _flat(output: str) -> str:
    """Rich wraps error boxes at the terminal width: compare words, not lines."""
    return " ".join(output.replace("│", " ").split())
