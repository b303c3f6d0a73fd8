"""`exaone-lora rehearse --stack poc`, exactly as a user types it: the Azure VM path with the poc spec against the
stand-ins (mock runtime, systemd test host over SSH as `azureuser`, Azurite with Entra ID tokens, the host's own
identity, the CPU vLLM), on a clean working directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from exaone_lora.evidence import evidence_records
from exaone_lora.rehearsal.run import STAND_IN
from infra.promotion import PromotionError, promote
from tests.support.processes import REPO

pytestmark = [pytest.mark.slow, pytest.mark.testhost, pytest.mark.azurite, pytest.mark.vllm]
CLI = REPO / ".venv" / "bin" / "exaone-lora"


def test_rehearse_refuses_the_local_stack(tmp_path: Path) -> None:
    done = subprocess.run([str(CLI), "rehearse", "--stack", "dev", "--workdir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2 and "has target local" in done.stdout, done.stdout + done.stderr


def test_rehearse_poc_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run([str(CLI), "rehearse", "--stack", "poc", "--workdir", str(tmp_path), "--traffic-seconds", "30"],
                          cwd=REPO, capture_output=True, text=True, timeout=2400, env={**os.environ, "COLUMNS": "200"})
    output = done.stdout + done.stderr
    log = (tmp_path / "logs" / "fab.log").read_text() if (tmp_path / "logs" / "fab.log").exists() else ""
    assert done.returncode == 0, output[-6000:] + "\n--- fab.log ---\n" + log[-6000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True and [s["name"].split()[0] for s in report["steps"]] == [str(i) for i in range(1, 9)]
    traffic = report["facts"]["traffic"]
    assert not traffic["failed"] and sum(traffic["ok"].values()) > 0, traffic
    # The gateway served both versions of medical to the client loop while the deploy and the rollback ran.
    served = report["facts"]["gateway_series"]
    assert served["medical@medical-v1"] > 0 and served["medical@medical-v2"] > 0, served
    # Every Fabric task ran as the user types it: the poc stack, the outputs file, as the VM's admin user.
    ran = re.findall(r"^\$ fab (.*)$", log, flags=re.MULTILINE)
    for task in ("bootstrap", "install-service", "install-monitoring", "deploy-adapters"):
        assert any(f" {task} --stack poc --outputs " in f" {line}" for line in ran), (task, ran)
    # The host's key was remembered on first contact (the tasks refuse it if it changes).
    assert (tmp_path / "host" / "known_hosts").read_text().startswith("[127.0.0.1]:")
    # The GPU and Azure steps are named with the command they would run.
    skipped = "\n".join(report["facts"]["skipped"])
    assert "pulumi up -s poc" in skipped
    assert "apt-get install -y nvidia-driver-580-server-open" in skipped
    assert "pip install -c constraints/vllm-0.26.0.txt vllm==0.26.0" in skipped
    assert "VLLM_LORA_ENABLE_DUAL_STREAM" in skipped  # the poc stack's CUDA-only option, left out on the CPU
    # The rehearsal's evidence: what the host served, measured over SSH, marked as a stand-in's.
    (_, record), = evidence_records(tmp_path / "project", "poc", "rehearsal")
    measured = record["measured"]
    assert record["passed"] is True and measured["stand_in"] == STAND_IN
    assert measured["engine"]["build"] == "cpu" and measured["engine"]["version"] == "0.32.0"
    # After the rollback medical-v1 serves again (medical-v2 stays loaded for a quick switch, until evicted).
    assert {"medical-v1", "legal-v1"} <= set(measured["adapters"]) and measured["base_models"] == ["exaone"]
    for name in ("medical-v1", "legal-v1"):
        assert set(measured["adapter_files"][name]) == {"adapter_config.json", "adapter_model.safetensors",
                                                        "manifest.json"}
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", measured["commit"]), measured["commit"]
    # It proves the path, not the pins: promotion still asks for the lifecycle and benchmark evidence.
    shutil.copy(REPO / "Pulumi.prod.yaml", tmp_path / "project")
    with pytest.raises(PromotionError, match="no passing lifecycle evidence for stack poc"):
        promote("poc", "prod", tmp_path / "project")
