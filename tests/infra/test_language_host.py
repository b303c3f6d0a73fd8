"""`pulumi up -s poc` on a fresh machine, replayed: the language host's venv from requirements.txt alone, then the
real entry point (infra/__main__.py) under the mock runtime with the operator's settings as `pulumi config set`
leaves them, and refused without them before any resource exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from exaone_lora.rehearsal.pulumi_cli import (
    PulumiReplayError,
    config_set,
    install_language_host,
    run_program,
    stack_output_json,
)
from provisioning.outputs import HIDDEN_SECRET, StackOutputs
from tests.support.operator import operator_settings
from tests.support.processes import REPO

pytestmark = pytest.mark.slow
API_KEY = {"ops:apiKey": "k" * 32}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh checkout: the files git has (tracked, or new and not ignored), nothing installed."""
    dest = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        path = REPO / name.decode()
        if path.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name.decode())
    return dest


@pytest.fixture(scope="module")
def python(project: Path) -> Path:
    return install_language_host(project, project / "language-host.log")


def test_the_language_host_installs_the_program(python: Path) -> None:
    probe = ("import importlib.metadata as m, pulumi_azure_native, exaone_lora, infra.program; "
             "print(m.version('pulumi'))")
    version = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    pinned = (REPO / "pyproject.toml").read_text()
    assert f'"pulumi=={version}"' in pinned, f"the venv got pulumi {version}, not the pinned one"


def test_up_refuses_unset_operator_settings_before_any_resource(python: Path, project: Path) -> None:
    with pytest.raises(PulumiReplayError) as err:
        run_program(python, project, "poc", API_KEY)
    text = str(err.value)
    for key in ("operatorCidr: not set", "sshPublicKey: not set", "acceptModelLicense"):
        assert key in text, text
    assert "pulumi config set -s poc" in text


@pytest.mark.parametrize(("key", "value", "message"), [
    ("exaone-lora:operatorCidr", "203.0.113.7/32", "documentation range"),
    ("exaone-lora:sshPublicKey", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleReplaceWithYourOwnPublicKeyXXXXXXXXXXXX x",
     "not valid base64"),
])
def test_up_refuses_example_values(python: Path, project: Path, tmp_path: Path, key: str, value: str, message: str) -> None:
    stack = project / "Pulumi.poc.yaml"
    original = stack.read_text()
    try:
        config_set(stack, {**operator_settings(tmp_path), key: value})
        with pytest.raises(PulumiReplayError, match=message):
            run_program(python, project, "poc", API_KEY)
    finally:
        stack.write_text(original)


def test_up_with_operator_settings_writes_the_outputs_fabric_reads(python: Path, project: Path, tmp_path: Path) -> None:
    stack = project / "Pulumi.poc.yaml"
    original = stack.read_text()
    try:
        config_set(stack, operator_settings(tmp_path))
        with pytest.raises(PulumiReplayError, match="ops:apiKey: not set"):
            run_program(python, project, "poc", {})
        result = run_program(python, project, "poc", API_KEY)
    finally:
        stack.write_text(original)
    assert result["resources"] > 5
    (tmp_path / "out.json").write_text(stack_output_json(result["outputs"]))
    outputs = StackOutputs.load(tmp_path / "out.json")
    assert outputs.hosts() and outputs.values["sshUser"] == "azureuser"
    assert str(outputs.require("storageBlobUrl")).startswith("https://")
    assert outputs.values["apiKey"] == HIDDEN_SECRET and outputs.secret("apiKey") is None
