"""Promotion copies tested pins between stack files, and refuses without evidence or on pin mismatch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exaone_lora.evidence import (
    Engine,
    Measured,
    passing_evidence,
    pins,
    pins_fingerprint,
    read_evidence,
    record_evidence,
)
from exaone_lora.naming import MANIFEST_FILE, version_name
from exaone_lora.spec import DeploymentSpec, load_spec
from infra.cli import app
from infra.promotion import PromotionError, promote
from tests.support.processes import REPO

ADAPTERS_YAML = """  exaone-lora:adapters:
    - alias: medical
      version: 3
      blobPath: medical/v3
      sha256: {sha}
  exaone-lora:serverArgs:
    enable-prefix-caching: true
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for stack in ("poc", "prod"):
        shutil.copy(REPO / f"Pulumi.{stack}.yaml", tmp_path)
    poc = tmp_path / "Pulumi.poc.yaml"
    # The poc stack was tested with one adapter pinned, a newer vLLM and prefix caching (and ships dual-stream LoRA).
    text = poc.read_text().replace("vllmVersion: 0.26.0", "vllmVersion: 0.27.1")
    # The shipped file has no serverArgs (vLLM's defaults won side by side); a second key YAML would let win.
    assert "exaone-lora:serverArgs:" not in text, "Pulumi.poc.yaml ships serverArgs again; update this fixture"
    poc.write_text(text + ADAPTERS_YAML.format(sha="c" * 64))
    return tmp_path


def served_as_pinned(spec: DeploymentSpec) -> Measured:
    """A measurement of a GPU server that serves exactly the spec's pins (the tools write these; see
    test_promotion_evidence.py for records the real commands wrote)."""
    names = {a.alias: version_name(a.alias, a.version) for a in spec.adapters}
    return Measured(base_models=[spec.model.served_name], adapters=sorted(names.values()),
                    max_model_len=spec.max_model_len,
                    adapter_files={names[a.alias]: {MANIFEST_FILE: a.sha256} for a in spec.adapters},
                    engine=Engine(spec.vllm_version, "cuda", f"vllm {spec.vllm_version}"),
                    model_revision=spec.model.revision, commit="0" * 40)


def tested(root: Path, stack: str = "poc") -> None:
    spec = load_spec(stack, root)
    record_evidence(root, spec, "lifecycle", True, {"tests": 12}, served_as_pinned(spec))
    record_evidence(root, spec, "benchmark", True, {"tok_s": 300}, served_as_pinned(spec))


def test_evidence_records_carry_the_pins_fingerprint(root: Path) -> None:
    spec = load_spec("poc", root)
    path = record_evidence(root, spec, "benchmark", False, {"why": "slow"})
    assert path.parent == root / "evidence" / "poc" and path.name.startswith("benchmark-")
    record = read_evidence(path)
    assert record["fingerprint"] == pins_fingerprint(spec) and record["passed"] is False
    assert record["pins"]["adapters"] == [{"alias": "medical", "version": 3, "sha256": "c" * 64}]
    assert record["pins"]["server"]["server_args"] == {"enable-prefix-caching": True}
    assert record["pins"]["server"]["server_env"] == {"VLLM_LORA_ENABLE_DUAL_STREAM": "1"}
    # A stack without serverEnv keeps the fingerprint it had before the field existed.
    assert "server_env" not in pins(load_spec("prod", root))["server"]
    assert passing_evidence(root, spec) == {}, "a failed run is no evidence"
    tested(root)
    assert set(passing_evidence(root, spec)) == {"lifecycle", "benchmark"}
    with pytest.raises(ValueError, match="evidence kind"):
        record_evidence(root, spec, "vibes", True, {})


def test_promotion_copies_pins_and_keeps_the_target(root: Path) -> None:
    tested(root)
    before = load_spec("prod", root)
    result = promote("poc", "prod", root)
    assert result.written and "+  exaone-lora:vllmVersion: 0.27.1" in result.diff
    after = load_spec("prod", root)
    assert pins(after) == pins(load_spec("poc", root)), "the target must carry exactly the tested pins"
    for key in ("tier", "vm_sku", "region", "operator_cidr", "api", "tags", "gpus_per_node"):
        assert getattr(after, key) == getattr(before, key), f"promotion changed the target's {key}"
    text = (root / "Pulumi.prod.yaml").read_text()
    assert text.startswith("# Production: Standard_NC80adis_H100_v5"), "comments must survive"
    assert text.index("exaone-lora:tier") < text.index("exaone-lora:vllmVersion") < text.index("exaone-lora:tags")
    assert not list(root.glob(".Pulumi.*tmp")), "no temp file left behind"
    assert not promote("poc", "prod", root).changed, "promoting again is a no-op"


def test_refused_without_evidence_and_target_untouched(root: Path) -> None:
    original = (root / "Pulumi.prod.yaml").read_bytes()
    record_evidence(root, load_spec("poc", root), "lifecycle", True, {})
    with pytest.raises(PromotionError, match="no passing benchmark evidence for stack poc"):
        promote("poc", "prod", root)
    assert (root / "Pulumi.prod.yaml").read_bytes() == original


def test_refused_on_pin_mismatch_and_target_untouched(root: Path) -> None:
    tested(root)
    poc = root / "Pulumi.poc.yaml"
    # Someone bumps the adapter after the tests ran: the evidence no longer covers these pins.
    poc.write_text(poc.read_text().replace("version: 3", "version: 4").replace("medical/v3", "medical/v4"))
    original = (root / "Pulumi.prod.yaml").read_bytes()
    with pytest.raises(PromotionError) as refused:
        promote("poc", "prod", root)
    message = str(refused.value)
    assert "pin mismatch" in message and "adapters" in message
    assert (root / "Pulumi.prod.yaml").read_bytes() == original
    assert not list(root.glob(".Pulumi.*tmp"))


def test_refused_when_the_target_does_not_load(root: Path) -> None:
    poc = root / "Pulumi.poc.yaml"
    poc.write_text(poc.read_text().replace("maxLoraRank: 32", "maxLoraRank: 64"))
    tested(root)
    prod = root / "Pulumi.prod.yaml"
    # The target's own settings clash with the pins (an adapter above the target's rank is impossible here, so
    # make the target's gateway ports collide instead): validation fails, nothing is written.
    prod.write_text(prod.read_text() + "  exaone-lora:gateway:\n    enginePort: 8080\n")
    original = prod.read_bytes()
    with pytest.raises(PromotionError, match="cannot promote"):
        promote("poc", "prod", root)
    assert prod.read_bytes() == original


def test_cli_promote_dry_run_and_refusal(root: Path) -> None:
    runner = CliRunner()
    original = (root / "Pulumi.prod.yaml").read_bytes()
    refused = runner.invoke(app, ["promote", "--from", "poc", "--to", "prod", "--root", str(root)])
    assert refused.exit_code == 1 and "no passing lifecycle evidence" in refused.output
    tested(root)
    dry = runner.invoke(app, ["promote", "--from", "poc", "--to", "prod", "--dry-run", "--root", str(root)])
    assert dry.exit_code == 0, dry.output
    assert "+  exaone-lora:vllmVersion: 0.27.1" in dry.output and "dry run: nothing written" in dry.output
    assert (root / "Pulumi.prod.yaml").read_bytes() == original
    done = runner.invoke(app, ["promote", "--from", "poc", "--to", "prod", "--root", str(root)])
    assert done.exit_code == 0 and "wrote" in done.output
    assert load_spec("prod", root).vllm_version == "0.27.1"


def test_refused_when_evidence_records_no_measurement(root: Path) -> None:
    spec = load_spec("poc", root)
    # What records written before the measurement existed (or by hand) look like: the pins alone prove nothing.
    record_evidence(root, spec, "lifecycle", True, {"tests": 12})
    record_evidence(root, spec, "benchmark", True, {"tok_s": 300}, served_as_pinned(spec))
    with pytest.raises(PromotionError, match=r"lifecycle evidence .* records no measurement of the server"):
        promote("poc", "prod", root)


def test_refused_when_the_server_served_another_adapter_version(root: Path) -> None:
    spec = load_spec("poc", root)
    served = served_as_pinned(spec)
    other = Measured(**{**served.__dict__, "adapters": ["medical-v2"],
                        "adapter_files": {"medical-v2": {MANIFEST_FILE: "d" * 64}}})
    record_evidence(root, spec, "lifecycle", True, {}, other)
    record_evidence(root, spec, "benchmark", True, {}, served)
    with pytest.raises(PromotionError) as refused:
        promote("poc", "prod", root)
    message = str(refused.value)
    assert "adapters.medical: pinned medical-v3, /v1/models served ['medical-v2']" in message
    assert f"adapters.medical.sha256: pinned {'c' * 64!r}, the host's medical-v3/manifest.json has None" in message
    assert "benchmark" not in message, "the benchmark's measurement matched: only the lifecycle is named"


def test_a_stand_in_proves_neither_the_engine_nor_the_model_pin(root: Path) -> None:
    spec = load_spec("poc", root)
    # Everything matches on paper, even the build and the marker: but the record says it was a stand-in.
    stand_in = Measured(**{**served_as_pinned(spec).__dict__, "stand_in": "rehearsal test host"})
    record_evidence(root, spec, "lifecycle", True, {}, stand_in)
    record_evidence(root, spec, "benchmark", True, {}, served_as_pinned(spec))
    with pytest.raises(PromotionError) as refused:
        promote("poc", "prod", root)
    message = str(refused.value)
    assert "vllmVersion: pinned '0.27.1' (cuda build)" in message and "stand-in: rehearsal test host" in message
    assert "model.revision" in message and message.count("no proof of this pin") == 2
    result = promote("poc", "prod", root, accept_stand_in=True)
    assert result.written and len(result.unproven) == 2 and all(u.startswith("lifecycle: ") for u in result.unproven)
