"""Quota preflight, cost table and cost per 1M output tokens (generated benchmark files), offline preview."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from exaone_lora.evidence import record_evidence
from exaone_lora.spec import load_spec
from infra.cli import app
from infra.costs import PRICES, NoListPrice, NoThroughput, estimated_hourly_cost, hourly_cost, refresh_command, token_cost
from infra.preview import policy_verdict, preview_stack
from infra.quota import quota_needs
from tests.infra.conftest import variant
from tests.support.processes import REPO


def test_quota_per_tier() -> None:
    assert [(n.family, n.vcpus) for n in quota_needs(load_spec("poc", REPO))] == [("StandardNCadsH100v5Family", 40)]
    assert [(n.family, n.vcpus) for n in quota_needs(load_spec("prod", REPO))] == [("StandardNCadsH100v5Family", 80)]
    assert [(n.family, n.vcpus) for n in quota_needs(variant("prod", tier="prod-large", nodeCount=3))] == [
        ("StandardNCadsH100v5Family", 240)]
    assert quota_needs(load_spec("dev", REPO)) == []


def test_cli_quota_prints_az_commands() -> None:
    result = CliRunner().invoke(app, ["quota", "--stack", "pilot", "--root", str(REPO)])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "StandardNCadsH100v5Family" in flat and "40" in flat
    assert "az vm list-usage --location koreacentral" in flat
    assert "az quota update --resource-name StandardNCadsH100v5Family" in flat


def _saturation(levels: dict[int, float], errors_at: tuple[int, ...] = ()) -> dict[str, Any]:
    runs: list[dict[str, Any]] = [{"concurrency": c, "requests": 4 * c, "ok": 4 * c, "errors": ["x"] if c in errors_at else [],
             "output_tokens": 512 * c, "aggregate_tok_s": tok_s} for c, tok_s in levels.items()]
    return {"saturation": {"levels": list(levels), "modes": {"mixed_adapters": runs,
                                                             "base_only": [{**r, "aggregate_tok_s": 2 * r["aggregate_tok_s"]}
                                                                           for r in runs]}}}


def _root(tmp_path: Path, region: str = "eastus") -> Path:
    for stack in ("dev", "poc", "pilot", "prod"):
        text = (REPO / f"Pulumi.{stack}.yaml").read_text().replace("region: koreacentral", f"region: {region}")
        (tmp_path / f"Pulumi.{stack}.yaml").write_text(text)
    return tmp_path


def _result_file(root: Path, name: str, utc: str, levels: dict[int, float]) -> Path:
    path = root / "benchmarks" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": {"utc": utc, "gpu": "test GPU"}, "suites": _saturation(levels)}))
    return path


def test_prices_are_keyed_by_region_and_an_unpriced_region_is_refused(tmp_path: Path) -> None:
    eastus = variant("prod", region="eastus")
    assert hourly_cost(eastus) > PRICES["eastus"].hourly_usd["Standard_NC80adis_H100_v5"]
    with pytest.raises(NoListPrice, match="no list prices for region koreacentral"):
        hourly_cost(load_spec("prod", REPO))  # never East US prices for a Korea Central stack
    assert estimated_hourly_cost(load_spec("prod", REPO)) is None
    assert hourly_cost(load_spec("dev", REPO)) == 0
    result = CliRunner().invoke(app, ["costs", "--stack", "poc", "--root", str(REPO)], env={"COLUMNS": "500"})
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "no list prices for region koreacentral" in flat
    assert refresh_command("koreacentral", "Standard_NC40ads_H100_v5") in flat


def test_refresh_command_is_one_shell_word_per_argument() -> None:
    # bash itself splits the command (a function named curl prints the words it was given, nothing is fetched).
    command = refresh_command("koreacentral", "Standard_NC40ads_H100_v5")
    shown = subprocess.run(["bash", "-c", 'curl() { printf "%s\\0" curl "$@"; }; ' + command], capture_output=True,
                           check=True, text=True).stdout
    assert shown.split("\0")[:-1] == ["curl", "-sG", "https://prices.azure.com/api/retail/prices", "--data-urlencode",
                     "$filter=armRegionName eq 'koreacentral' and armSkuName eq 'Standard_NC40ads_H100_v5' "
                     "and priceType eq 'Consumption'"]


@settings(max_examples=25, deadline=None)
@given(tok_s=st.lists(st.floats(min_value=1, max_value=1e5), min_size=5, max_size=5))
def test_cost_per_million_tokens_from_the_newest_results_file(tok_s: list[float]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _root(Path(tmp))
        levels = dict(zip((1, 8, 32, 128, 256), tok_s, strict=True))
        _result_file(root, "old.json", "2026-01-01T00:00:00Z", {c: 1.0 for c in levels})
        newest = _result_file(root, "new.json", "2026-02-01T00:00:00Z", levels)
        spec = load_spec("poc", root)  # maxNumSeqs 64: the highest measured level not above it is 32
        cost = token_cost(spec, root)
        assert cost.throughput.source == newest and cost.throughput.concurrency == 32
        assert cost.throughput.pins_match is None and "no evidence/poc/" in cost.throughput.origin
        assert cost.usd_per_million_output_tokens == pytest.approx(hourly_cost(spec) / (levels[32] * 3600) * 1e6)
        prod = token_cost(load_spec("prod", root), root, mode="base_only")  # 2 GPUs: 2 replicas, level 256
        assert prod.replicas == 2 and prod.stack_tokens_per_second == pytest.approx(2 * 2 * levels[256])


def test_stack_evidence_wins_over_results_and_says_whether_pins_match(tmp_path: Path) -> None:
    root = _root(tmp_path)
    _result_file(root, "r.json", "2099-01-01T00:00:00Z", {32: 9999.0})
    spec = load_spec("poc", root)
    suites = _saturation({8: 500.0, 32: 1500.0, 64: 2000.0})
    record_evidence(root, spec, "benchmark", True, {"meta": {"gpu": "H100 NVL"}, "suites": suites})
    # A newer failed run and a run without a saturation suite are no throughput evidence.
    record_evidence(root, spec, "benchmark", False, {"suites": _saturation({64: 1.0})})
    record_evidence(root, spec, "benchmark", True, {"tok_s": 300})
    cost = token_cost(spec, root)
    assert cost.throughput.origin == "evidence" and cost.throughput.pins_match is True
    assert (cost.throughput.concurrency, cost.throughput.tokens_per_second, cost.throughput.gpu) == (64, 2000.0, "H100 NVL")
    result = CliRunner().invoke(app, ["costs", "--stack", "poc", "--root", str(root)], env={"COLUMNS": "500"})
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert f"cost per 1M output tokens: {cost.usd_per_million_output_tokens:.4f} USD" in flat
    assert str(cost.throughput.source) in flat and "recorded with the stack's current pins" in flat
    assert "prices as of 2025-06-01" in flat and "eastus" in flat and "Standard_NC40ads_H100_v5" in flat


def test_no_usable_benchmark_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path)
    with pytest.raises(NoThroughput, match="no benchmark with a saturation suite"):
        token_cost(load_spec("poc", root), root)
    _result_file(root, "r.json", "2026-01-01T00:00:00Z", {128: 10.0, 256: 20.0})
    with pytest.raises(NoThroughput, match=r"no error-free mixed_adapters run at concurrency <= 64 \(measured: \[128, 256\]\)"):
        token_cost(load_spec("poc", root), root)
    result = CliRunner().invoke(app, ["costs", "--stack", "poc", "--root", str(root)], env={"COLUMNS": "500"})
    assert result.exit_code == 2 and "no error-free" in result.output


def test_preview_library_and_cli() -> None:
    table = preview_stack("poc", REPO)
    assert {"azure-native:compute:VirtualMachine", "azure-native:network:NetworkSecurityGroup"} <= {r.type for r in table}
    vm = next(r for r in table if r.type == "azure-native:compute:VirtualMachine")
    assert vm.settings["size"] == "Standard_NC40ads_H100_v5" and vm.settings["encryptionAtHost"] == "True"
    assert policy_verdict(table, load_spec("poc", REPO)).passed
    result = CliRunner().invoke(app, ["preview", "--stack", "poc", "--root", str(REPO)])
    assert result.exit_code == 0 and "all rules pass" in result.output and "VirtualMachine" in result.output


def test_cli_preview_refuses_a_bad_stack_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = (REPO / "Pulumi.poc.yaml").read_text() + "  exaone-lora:operatorCidr: 0.0.0.0/0\n"
    (tmp_path / "Pulumi.poc.yaml").write_text(text)
    result = CliRunner().invoke(app, ["preview", "--stack", "poc", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "0.0.0.0/0 would open SSH to the whole Internet" in " ".join(result.output.split())


def test_cli_preview_says_what_blocks_pulumi_up() -> None:
    """The shipped poc file previews (offline), and names every setting `pulumi up` will still refuse without."""
    result = CliRunner().invoke(app, ["preview", "--stack", "poc", "--root", str(REPO)], env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "`pulumi up -s poc` will refuse until these are set" in text
    for key in ("operatorCidr: not set", "sshPublicKey: not set", "acceptModelLicense exaone-3.5-nc"):
        assert key in text, key


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                     max_leaves=12)
_run = st.fixed_dictionaries({}, optional={"concurrency": _json | st.integers(-2, 300), "errors": _json,
                                           "aggregate_tok_s": _json | st.floats(allow_nan=True, allow_infinity=True)})


@settings(max_examples=80, deadline=None)
@given(runs=st.lists(_run | _json, max_size=6), modes_extra=st.dictionaries(st.text(max_size=8), _json, max_size=3),
       other=_json, as_evidence=st.booleans())
def test_any_benchmark_document_gives_a_usable_figure_or_a_clear_refusal(runs: list[Any], modes_extra: dict[str, Any],
                                                                          other: Any, as_evidence: bool) -> None:
    """Whatever a benchmark file or evidence record holds (including a foreign JSON document next to it): a positive
    finite tokens/s at a level within the tier, or NoThroughput naming a file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _root(Path(tmp))
        spec = load_spec("poc", root)
        document = {"suites": {"saturation": {"modes": {**modes_extra, "mixed_adapters": runs}}}}
        folder = root / "evidence" / "poc" if as_evidence else root / "benchmarks" / "results"
        folder.mkdir(parents=True)
        (folder / "benchmark-0-foreign.json").write_text(json.dumps(other))
        if as_evidence:
            path = record_evidence(root, spec, "benchmark", True, document)
        else:
            path = folder / "x.json"
            path.write_text(json.dumps(document))
        try:
            cost = token_cost(spec, root)
        except NoThroughput as exc:
            assert str(path) in str(exc)
            return
        assert 1 <= cost.throughput.concurrency <= spec.max_num_seqs
        assert 0 < cost.throughput.tokens_per_second < float("inf") and cost.usd_per_million_output_tokens > 0
