"""One renderer for vLLM: the systemd unit and the Kubernetes container carry the same argv."""

from __future__ import annotations

import shlex

import pytest

from exaone_lora.spec import MANAGED_VLLM_ENV, build_spec, load_spec, read_config, stack_file
from service.vllm_config import kubernetes_container, systemd_unit, vllm_launch
from tests.support.processes import REPO


def flag(args: tuple[str, ...] | list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_poc_argv_carries_exaone_quirks_and_spec_values() -> None:
    spec = load_spec("poc", REPO)
    args = vllm_launch(spec).args
    assert "--trust-remote-code" in args and "--enable-lora" in args
    assert flag(args, "--max-lora-rank") == "32"  # vLLM's default is 16; EXAONE adapters are rank 32
    assert flag(args, "--gpu-memory-utilization") == "0.5"
    assert flag(args, "--dtype") == "bfloat16"
    assert (flag(args, "--host"), flag(args, "--port")) == ("127.0.0.1", "8081")  # behind the gateway


def test_runtime_lora_updates_only_in_dynamic_mode() -> None:
    spec = load_spec("poc", REPO)
    assert vllm_launch(spec).env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    static = spec.model_copy(update={"lora_mode": "static"})
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in vllm_launch(static).env


def test_static_adapters_use_immutable_names_behind_the_gateway() -> None:
    values = read_config(stack_file("poc", REPO)) | {
        "adapters": [{"alias": "medical", "version": 3, "blobPath": "medical/v3/", "sha256": "c" * 64}]}
    spec = build_spec("poc", values, "Pulumi.poc.yaml")
    assert flag(vllm_launch(spec).args, "--lora-modules") == "medical-v3=/data/lora-adapters/medical-v3"
    direct = spec.model_copy(update={"gateway": spec.gateway.model_copy(update={"enabled": False})})
    assert flag(vllm_launch(direct).args, "--lora-modules") == "medical=/data/lora-adapters/medical"


def test_server_args_render_as_flags() -> None:
    spec = load_spec("poc", REPO).model_copy(update={"server_args": {"enable-prefix-caching": True,
                                                                     "max-num-batched-tokens": 8192,
                                                                     "enable-chunked-prefill": False}})
    args = vllm_launch(spec).args
    assert "--enable-prefix-caching" in args and "--no-enable-chunked-prefill" in args
    assert flag(args, "--max-num-batched-tokens") == "8192"


def test_server_env_reaches_the_unit_the_container_and_merged_replicas() -> None:
    tuned = load_spec("poc", REPO)  # ships dual-stream LoRA
    assert tuned.server_env == {"VLLM_LORA_ENABLE_DUAL_STREAM": "1"}
    plain = vllm_launch(tuned.model_copy(update={"server_env": {}})).env
    assert vllm_launch(tuned).env == plain | {"VLLM_LORA_ENABLE_DUAL_STREAM": "1"}
    assert "Environment=VLLM_LORA_ENABLE_DUAL_STREAM=1" in systemd_unit(tuned).splitlines()
    assert {"name": "VLLM_LORA_ENABLE_DUAL_STREAM", "value": "1"} in kubernetes_container(tuned)["env"]
    assert "VLLM_LORA_ENABLE_DUAL_STREAM" not in plain


@pytest.mark.parametrize("stack", ["dev", "poc", "pilot", "prod"])
def test_every_vllm_variable_the_deployment_sets_is_protected_from_server_env(stack: str) -> None:
    spec = load_spec(stack, REPO)
    launch = vllm_launch(spec)
    assert {k for k in launch.env if k.startswith("VLLM_")} - set(spec.server_env) <= MANAGED_VLLM_ENV
    assert "VLLM_API_KEY" in MANAGED_VLLM_ENV  # the AKS container reads it from a Kubernetes secret


@pytest.mark.parametrize("stack", ["poc", "pilot", "prod"])
def test_systemd_and_kubernetes_share_the_argv(stack: str) -> None:
    spec = load_spec(stack, REPO)
    unit = systemd_unit(spec)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    container = kubernetes_container(spec)
    unit_args = shlex.split(exec_start.removeprefix("ExecStart="))[3:]
    k8s_args = container["args"]
    # Only the bind address differs: in a pod the kubelet's probes reach vLLM on the pod IP.
    assert flag(k8s_args, "--host") == "0.0.0.0" and flag(unit_args, "--host") == "127.0.0.1"
    assert [a for a in unit_args if a != "127.0.0.1"] == [a for a in k8s_args if a != "0.0.0.0"]
    assert container["image"] == f"vllm/vllm-openai:v{spec.vllm_version}"
    assert "Restart=always" in unit and "User=vllm" in unit


def test_each_gpu_of_prod_gets_its_own_replica() -> None:
    spec = load_spec("prod", REPO)
    first, second = vllm_launch(spec, replica=0), vllm_launch(spec, replica=1)
    assert (first.env["CUDA_VISIBLE_DEVICES"], second.env["CUDA_VISIBLE_DEVICES"]) == ("0", "1")
    assert first.port != second.port


def test_local_target_runs_the_cpu_build() -> None:
    launch = vllm_launch(load_spec("dev", REPO))
    assert "--gpu-memory-utilization" not in launch.args
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
