"""The deployment spec: every stack file loads, and every bad value is refused naming the file and key."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exaone_lora.spec import (
    MODEL_LICENSE,
    MODEL_LICENSE_ACK,
    STACKS,
    SpecError,
    build_spec,
    load_spec,
    operator_cidr_problem,
    read_config,
    ssh_key_problem,
    stack_file,
)
from tests.support.operator import operator_settings
from tests.support.processes import REPO


def poc_values() -> dict[str, Any]:
    return read_config(stack_file("poc", REPO))


def refused(values: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        build_spec("poc", values, "Pulumi.poc.yaml")
    return str(info.value)


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_loads(stack: str) -> None:
    spec = load_spec(stack, REPO)
    assert spec.stack == stack
    assert spec.port == 8080
    assert spec.max_lora_rank >= max((p.rank for p in spec.adapters), default=0)
    assert spec.resource_tags()["stack"] == stack


def test_tier_defaults_come_from_the_tier_table() -> None:
    poc, pilot, prod = (load_spec(s, REPO) for s in ("poc", "pilot", "prod"))
    assert (poc.vm_sku, poc.gpus_per_node, poc.gpu_memory_utilization) == ("Standard_NC40ads_H100_v5", 1, 0.5)
    assert (pilot.vm_sku, pilot.gpu_memory_utilization) == ("Standard_NC40ads_H100_v5", 0.75)
    assert (prod.tier, prod.vm_sku, prod.gpus_per_node, prod.total_gpus) == ("prod-small", "Standard_NC80adis_H100_v5", 2, 2)
    assert load_spec("dev", REPO).target == "local"


def test_stack_file_overrides_tier_defaults() -> None:
    spec = build_spec("poc", poc_values() | {"gpuMemoryUtilization": 0.8, "maxLoras": 6}, "Pulumi.poc.yaml")
    assert (spec.gpu_memory_utilization, spec.max_loras, spec.max_cpu_loras) == (0.8, 6, 8)


def test_keys_are_namespaced_by_the_project(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.x.yaml").write_text(yaml.safe_dump({"config": {"tier": "poc"}}))
    with pytest.raises(SpecError, match=r"Pulumi.x.yaml: tier: config keys are namespaced, e.g. exaone-lora:tier"):
        load_spec("x", tmp_path)


def test_missing_stack_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such stack file"):
        load_spec("nope", tmp_path)


def test_secrets_do_not_belong_in_the_spec(tmp_path: Path) -> None:
    document = {"config": {"exaone-lora:tier": "poc", "exaone-lora:sshPublicKey": {"secure": "v1:abc"}}}
    (tmp_path / "Pulumi.s.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(SpecError, match="exaone-lora:sshPublicKey: secrets do not belong"):
        load_spec("s", tmp_path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tier": "huge"}, "Pulumi.poc.yaml: exaone-lora:tier: must be one of poc, pilot, prod-small, prod-large"),
        ({"gpuMemoryUtilization": 0.97}, "Pulumi.poc.yaml: exaone-lora:gpuMemoryUtilization: must be in (0, 0.95]"),
        ({"gpuMemoryUtilization": 0}, "exaone-lora:gpuMemoryUtilization: must be in (0, 0.95]"),
        ({"operatorCidr": "not-a-cidr"}, "exaone-lora:operatorCidr: 'not-a-cidr' is not a CIDR"),
        ({"operatorCidr": "0.0.0.0/0"}, "exaone-lora:operatorCidr: 0.0.0.0/0 would open SSH to the whole Internet"),
        ({"operatorCidr": "::/0"}, "would open SSH to the whole Internet"),
        ({"operatorCidr": "10.0.0.0/8"}, "exaone-lora:operatorCidr: 10.0.0.0/8 is broader than /16"),
        ({"maxLoraRank": 24}, "exaone-lora:maxLoraRank: must be one of vLLM's LoRA ranks"),
        ({"vllmVersion": ">=0.26"}, "exaone-lora:vllmVersion: must be an exact release"),
        ({"vmSku": "Standard_NC80adis_H100_v5"}, "vmSku: Standard_NC80adis_H100_v5 is not allowed for tier poc"),
        ({"maxLoras": 9, "maxCpuLoras": 4}, "maxCpuLoras: must be >= maxLoras (9)"),
        ({"api": {"exposure": "public"}}, "exaone-lora:api: exposure 'public' needs allowedCidrs"),
        ({"api": {"exposure": "public", "allowedCidrs": ["0.0.0.0/0"]}}, "exaone-lora:api.allowedCidrs: 0.0.0.0/0 opens the API"),
        ({"api": {"exposure": "public", "allowedCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}},
         "exaone-lora:api.allowedCidrs: sources cover the whole IPv4 Internet"),
        ({"gpuMemoryUtilizaton": 0.5}, "exaone-lora:gpuMemoryUtilizaton: unknown key (typo?)"),
        ({"model": {"revision": "main"}}, "exaone-lora:model.revision: must be a full 40-hex-digit commit id"),
        ({"serverEnv": {"CUDA_LAUNCH_BLOCKING": "1"}}, "exaone-lora:serverEnv: 'CUDA_LAUNCH_BLOCKING' is not a vLLM"),
        ({"serverEnv": {"VLLM_CACHE_ROOT": "/tmp"}}, "serverEnv: VLLM_CACHE_ROOT is set by the deployment itself"),
        ({"serverEnv": {"VLLM_API_KEY": "x"}}, "serverEnv: VLLM_API_KEY is set by the deployment itself"),
        ({"serverEnv": {"VLLM_HF_TOKEN": "x"}}, "serverEnv: VLLM_HF_TOKEN looks like a secret"),
        ({"target": "local", "serverEnv": {"VLLM_LORA_ENABLE_DUAL_STREAM": "1"}},
         "serverEnv: VLLM_LORA_ENABLE_DUAL_STREAM needs a CUDA GPU; target 'local' runs the CPU build"),
    ],
)
def test_bad_values_are_refused_with_file_and_key(change: dict[str, Any], expected: str) -> None:
    assert expected in refused(poc_values() | change)


def test_a_cuda_only_option_switched_off_is_allowed_on_the_local_target() -> None:
    values = poc_values() | {"target": "local", "serverEnv": {"VLLM_LORA_ENABLE_DUAL_STREAM": "0"}}
    assert build_spec("poc", values, "Pulumi.poc.yaml").server_env == {"VLLM_LORA_ENABLE_DUAL_STREAM": "0"}


def test_unset_operator_settings_load_but_block_a_deploy(tmp_path: Path) -> None:
    """The shipped stack files leave the operator's settings to `pulumi config set`: plans and previews work,
    `pulumi up` and bootstrap are told exactly what to set."""
    spec = build_spec("poc", {k: v for k, v in poc_values().items() if k not in ("operatorCidr", "sshPublicKey")},
                      "Pulumi.poc.yaml")
    blockers = "\n".join(spec.deploy_blockers())
    assert "exaone-lora:operatorCidr: not set" in blockers and "exaone-lora:sshPublicKey: not set" in blockers
    assert f"exaone-lora:acceptModelLicense {MODEL_LICENSE_ACK}" in blockers and MODEL_LICENSE in blockers
    ready = build_spec("poc", poc_values() | {k.split(":", 1)[1]: v for k, v in operator_settings(tmp_path).items()},
                       "Pulumi.poc.yaml")
    assert ready.deploy_blockers() == []
    assert load_spec("dev", REPO).deploy_blockers() == [], "the local stack needs no operator settings"


@pytest.mark.parametrize(("cidr", "problem"), [
    ("203.0.113.7/32", "documentation range"), ("198.51.100.0/28", "documentation range"),
    ("2001:db8::1/128", "documentation range"), ("127.0.0.1/32", "not a routable operator address"),
    ("169.254.10.1/32", "not a routable operator address"), ("240.0.0.1/32", "not a routable operator address"),
    ("20.41.6.7/32", None), ("10.20.0.0/16", None),
])
def test_operator_cidr_examples_and_reserved_ranges_block_a_deploy(cidr: str, problem: str | None) -> None:
    result = operator_cidr_problem(cidr)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def test_ssh_keys_must_parse(tmp_path: Path) -> None:
    real = operator_settings(tmp_path)["exaone-lora:sshPublicKey"]
    assert ssh_key_problem(real) is None
    kind, blob, *_ = real.split()
    assert "not valid base64" in (ssh_key_problem(f"{kind} {blob[:-3]}!!! x") or "")
    assert "starting with one of" in (ssh_key_problem(f"ssh-dss {blob}") or "")
    assert "does not match its type" in (ssh_key_problem(f"ssh-rsa {blob}") or "")
    example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleReplaceWithYourOwnPublicKeyXXXXXXXXXXXX operator@example"
    assert ssh_key_problem(example) is not None


SHELL_CHARACTERS = st.sampled_from(list(" ;|&$`'\"\\()<>*?!{}[]#~\n\t"))


@settings(max_examples=150, deadline=None)
@given(prefix=st.from_regex(r"/[a-z]{1,8}", fullmatch=True), bad=SHELL_CHARACTERS,
       rest=st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
def test_hostile_model_paths_are_refused_naming_the_key(prefix: str, bad: str, rest: str) -> None:
    values = poc_values() | {"model": {**poc_values()["model"], "path": prefix + bad + rest}}
    assert "exaone-lora:model.path: must be an absolute path of letters" in refused(values)


@settings(max_examples=100, deadline=None)
@given(name=st.text(min_size=1, max_size=40))
def test_admin_user_names_are_plain_linux_names(name: str) -> None:
    values = poc_values() | {"adminUsername": name}
    try:
        spec = build_spec("poc", values, "Pulumi.poc.yaml")
    except SpecError as exc:
        assert "exaone-lora:adminUsername:" in str(exc)
        return
    assert spec.admin_username == shlex.quote(spec.admin_username), "an accepted name needs no quoting in a shell"
    assert spec.admin_username not in ("root", "vllm")


def test_an_azure_vm_stack_serves_through_the_gateway() -> None:
    assert "exaone-lora:gateway.enabled: Azure VM stacks serve through the gateway" in refused(
        poc_values() | {"gateway": {"enabled": False}})


def pin(**overrides: Any) -> dict[str, Any]:
    return {"alias": "medical", "version": 3, "blobPath": "medical/v3/", "sha256": "a" * 64, **overrides}


@pytest.mark.parametrize(
    ("adapters", "expected"),
    [
        ([pin(rank=64)], "exaone-lora:adapters[0].rank: 64 is above maxLoraRank 32"),
        ([{k: v for k, v in pin().items() if k != "sha256"}], "exaone-lora:adapters[0].sha256: Field required"),
        ([pin(sha256="abc")], "exaone-lora:adapters[0].sha256: must be 64 lower-case hex digits"),
        ([pin(alias="../etc")], "exaone-lora:adapters[0].alias: must be lower-case letters"),
        ([pin(blobPath="../other/")], "exaone-lora:adapters[0].blobPath: must be a relative blob prefix"),
        ([pin(version=0)], "exaone-lora:adapters[0].version: Input should be greater than or equal to 1"),
        ([pin(), pin(version=4)], "exaone-lora:adapters[1].alias: medical is pinned twice"),
    ],
)
def test_adapter_pins_are_checked(adapters: list[dict[str, Any]], expected: str) -> None:
    assert expected in refused(poc_values() | {"adapters": adapters})


def test_a_valid_pin_names_its_immutable_version() -> None:
    spec = build_spec("poc", poc_values() | {"adapters": [pin()]}, "Pulumi.poc.yaml")
    assert spec.adapters[0].name == "medical-v3"
