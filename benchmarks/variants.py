"""Serving configurations benchmarked side by side, each a variant of a real stack spec.

The server's argv always comes from `service.vllm_config.vllm_launch`, so what is measured is what the
deployment ships; a variant only changes spec fields (tier defaults, `server_args`) the way a stack file
could.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from exaone_lora.spec import DeploymentSpec, load_spec
from service.layout import HostLayout
from service.vllm_config import VllmLaunch, vllm_launch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Capture CUDA graphs only for the batch sizes the saturation levels hit (powers of two up to max_num_seqs)
# instead of vLLM's default ~70 sizes: most of the cold start is graph capture.
CAPTURE_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]

CAPTURE_ARGS: dict[str, str | int | float | bool] = {
    "compilation-config": json.dumps({"cudagraph_capture_sizes": CAPTURE_SIZES})}
DUAL_STREAM_ENV = {"VLLM_LORA_ENABLE_DUAL_STREAM": "1"}


def _reference(**fields: Any) -> dict[str, Any]:
    """The reference design's settings plus `fields`. The stack's own serverArgs/serverEnv are cleared, so a
    variant measures only what it names, whatever the poc stack ships at the time."""
    return {"gpu_memory_utilization": 0.9, "max_num_seqs": 256, "server_args": {}, "server_env": {}, **fields}


# name -> (stack, spec field updates, description)
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "poc-shipped": ("poc", {}, "Pulumi.poc.yaml exactly as shipped (tier poc defaults)"),
    # Issue 23's reference: the reference design's command (`--max-loras 4 --max-cpu-loras 8`, vLLM defaults
    # otherwise) plus `--max-num-seqs 256 --gpu-memory-utilization 0.9`, the KV capacity every variant here has.
    "reference": ("poc", _reference(),
                  "the reference design's command: --max-loras 4 --max-cpu-loras 8, vLLM defaults otherwise "
                  "(plus --max-num-seqs 256 --gpu-memory-utilization 0.9 like every variant)"),
    "seed": ("poc", _reference(),
             "the reference design's settings: utilization 0.9, 4 GPU LoRA slots, vLLM defaults otherwise"),
    "capture": ("poc", _reference(server_args=CAPTURE_ARGS),
                "seed + CUDA graphs captured only for powers of two up to 256 (the GPU stacks' serverArgs)"),
    "tuned": ("poc", _reference(server_args={
        "max-num-batched-tokens": 8192, "enable-prefix-caching": True, "async-scheduling": True, **CAPTURE_ARGS,
    }), "seed + capture sizes limited to powers of two, async scheduling, prefix caching, 8k batched tokens"),
    "tuned-interactive": ("poc", _reference(server_args={**CAPTURE_ARGS, "performance-mode": "interactivity"}),
                          "tuned capture sizes + vLLM 0.26's --performance-mode interactivity (latency-oriented "
                          "kernels/graphs)"),
    "fp8": ("poc", _reference(server_args={"quantization": "fp8", **CAPTURE_ARGS}),
            "tuned capture sizes + online FP8 weight quantization (H100): half the weight bytes per decode step"),
    "seed-dual-stream": ("poc", _reference(server_env=DUAL_STREAM_ENV),
                         "seed + vLLM's dual-stream LoRA: shrink/expand on a second CUDA stream, overlapping the "
                         "base GEMMs"),
    "capture-dual-stream": ("poc", _reference(server_args=CAPTURE_ARGS, server_env=DUAL_STREAM_ENV),
                            "capture + dual-stream LoRA (what Pulumi.poc.yaml ships, at the seed's utilization and "
                            "sequence count)"),
    # The same spec as capture-dual-stream: only its cache's lora-kernels folder differs, which
    # `device_run.sh tune` fills (as `fab tune-lora-kernels` does on a serving host).
    "capture-dual-stream-lora-tuned": (
        "poc", _reference(server_args=CAPTURE_ARGS, server_env=DUAL_STREAM_ENV),
        "capture-dual-stream + LoRA shrink/expand tiles tuned on this GPU for EXAONE's shapes "
        "(service.lora_kernels in the layout's cache/lora-kernels, read through VLLM_TUNED_CONFIG_FOLDER)"),
    # Issue 23's candidate: the poc config's LoRA levers (dual-stream, tuned tiles) on vLLM's default capture
    # sizes, in case the limited sizes are what costs base-only throughput under load.
    "dual-stream-lora-tuned": (
        "poc", _reference(server_env=DUAL_STREAM_ENV),
        "reference + dual-stream LoRA + LoRA tiles tuned on this GPU, vLLM's default CUDA-graph capture sizes"),
    # The LoRA replica of the merged-replica run (`python -m benchmarks.device hot`): half the GPU, the other
    # share goes to a merged replica of the hot adapter (service.merge) on the same GPU.
    "hot-lora": ("poc", _reference(gpu_memory_utilization=0.5, server_args=CAPTURE_ARGS),
                 "LoRA replica at utilization 0.5, sharing its GPU with a merged replica of the hot adapter"),
    "tuned-1slot": ("poc", _reference(max_loras=1, max_cpu_loras=8, server_args={
        "max-num-batched-tokens": 8192, "enable-prefix-caching": True, "async-scheduling": True, **CAPTURE_ARGS,
    }), "tuned with a single GPU LoRA slot (single-stream LoRA cost vs slot count)"),
}


def variant_spec(name: str, root: Path | str = REPO_ROOT) -> DeploymentSpec:
    """The stack spec of variant `name` (validated again after the updates)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    stack, updates, _ = VARIANTS[name]
    spec = load_spec(stack, root)
    merged = spec.model_dump() | updates
    return DeploymentSpec.model_validate(merged)


def device_layout(root: str, variant: str) -> HostLayout:
    """Host paths on the benchmark machine; each variant gets its own cache so its first start is truly cold."""
    base = PurePosixPath(root)
    return HostLayout(data=base / "data", app=base / "app", config=base / "etc", cache=base / "cache" / variant)


def variant_launch(name: str, model_path: str, root: str, port: int = 8081) -> VllmLaunch:
    spec = variant_spec(name)
    return vllm_launch(spec, device_layout(root, name), model_path=model_path, host="127.0.0.1", port=port)
