"""A public API key by construction: a gateway that listens beyond loopback, or is told to require one, does not start
without a key of at least 16 characters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exaone_lora.local.processes import REPO, free_port, run_process
from service.gateway import create_gateway
from service.gateway.guards import MIN_KEY_CHARS, GuardError
from service.gateway.server import API_KEY_ENV, gateway_in_thread
from tests.support.gateway_replicas import admin_key, stand_in

UPSTREAM = "http://127.0.0.1:9"  # never dialled: every run below is refused before the gateway starts


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, "EXAONE_GATEWAY_ADMIN_KEY")}
    # Wide, so that Rich's error box does not wrap the message the assertions look for.
    return subprocess.run([sys.executable, "-m", "service.cli", "gateway", "--upstream", UPSTREAM, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**base, "COLUMNS": "500", "PYTHONPATH": str(REPO), **env})


def test_create_gateway_refuses_a_missing_or_short_key_when_required() -> None:
    with pytest.raises(GuardError, match=r"public API key \(\$EXAONE_API_KEY\) is required"):
        create_gateway([UPSTREAM], admin_key=admin_key(), require_api_key=True)
    with pytest.raises(GuardError, match="at least 16"):
        create_gateway([UPSTREAM], admin_key=admin_key(), api_key="short", require_api_key=True)
    apps = create_gateway([UPSTREAM], admin_key=admin_key(), api_key="k" * MIN_KEY_CHARS, require_api_key=True)
    assert apps.public_key


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=40))
def test_any_key_shorter_than_16_characters_is_refused(key: str) -> None:
    if len(key) < MIN_KEY_CHARS:
        with pytest.raises(GuardError, match=f"{len(key)} characters long"):
            create_gateway([UPSTREAM], admin_key=admin_key(), api_key=key)
    else:
        assert create_gateway([UPSTREAM], admin_key=admin_key(), api_key=key).public_key


def test_no_server_binds_a_public_app_without_a_key_beyond_loopback() -> None:
    apps = create_gateway([UPSTREAM], admin_key=admin_key())
    # The check runs before any socket is opened (nothing binds 0.0.0.0 here).
    with pytest.raises(GuardError, match="without an API key"), \
         gateway_in_thread(apps, ("0.0.0.0", free_port()), ("127.0.0.1", free_port())):
        pass


def test_cli_refuses_to_start_without_a_key() -> None:
    admin = {"EXAONE_GATEWAY_ADMIN_KEY": admin_key()}
    # What every VM stack renders: the public listener on all interfaces.
    public = cli("--host", "0.0.0.0", "--port", str(free_port()), env=admin)
    assert public.returncode == 2 and f"no public API key (--host 0.0.0.0 is not loopback): set ${API_KEY_ENV}" \
        in public.stderr, public.stderr
    flagged = cli("--require-api-key", env=admin)
    assert flagged.returncode == 2 and "no public API key (--require-api-key)" in flagged.stderr, flagged.stderr
    short = cli("--require-api-key", env={**admin, API_KEY_ENV: "fifteen-chars!!"})
    assert short.returncode == 2 and "is 15 characters long; at least 16 characters are required" in short.stderr, short.stderr


def test_cli_with_a_required_key_serves_only_with_it(tmp_path: Path) -> None:
    key = "k3y-" + "x" * 20
    with stand_in() as upstream:
        port, admin_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "service.cli", "gateway", "--upstream", upstream, "--port", str(port),
               "--admin-port", str(admin_port), "--require-api-key", "--alias", "medical=medical-v1"]
        env = {"EXAONE_GATEWAY_ADMIN_KEY": admin_key(), API_KEY_ENV: key, "PYTHONPATH": str(REPO)}
        with run_process(cmd, tmp_path / "gateway.log", f"http://127.0.0.1:{port}/health", 60, env=env, cwd=REPO):
            url = f"http://127.0.0.1:{port}/v1/models"
            assert httpx.get(url).status_code == 401
            assert httpx.get(url, headers={"Authorization": "Bearer wrong-key-wrong-key"}).status_code == 401
            assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
