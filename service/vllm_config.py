"""The vLLM server, rendered once from the DeploymentSpec for systemd and for Kubernetes.

`vllm_launch` is the only place that knows vLLM's flags; the systemd unit and the Kubernetes container
both take their argv and environment from it, so the two can never drift apart. Per-model quirks are
explicit branches here (EXAONE needs remote code; rank 32 needs `--max-lora-rank`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from exaone_lora.spec import CUDA_ONLY_VLLM_ENV, DeploymentSpec, MergedReplicaSpec
from service.layout import DEFAULT_LAYOUT, HostLayout

VLLM_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class VllmLaunch:
    """How to start one vLLM replica: `python -m VLLM_MODULE *args` with `env`."""

    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8081

    def command(self, python: str) -> list[str]:
        return [python, "-m", VLLM_MODULE, *self.args]


def served_adapters(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> dict[str, str]:
    """Static `--lora-modules` for the stack's pins: immutable version names behind the gateway,
    the alias (a symlink switched by deploys) when clients talk to vLLM directly."""
    if spec.gateway.enabled:
        return {pin.name: str(layout.adapter_dir(pin.name)) for pin in spec.adapters}
    return {pin.alias: str(layout.adapter_dir(pin.alias)) for pin in spec.adapters}


def _flag(name: str, value: str | int | float | bool) -> list[str]:
    if value is True:
        return [f"--{name}"]
    if value is False:
        return [f"--no-{name}"]
    return [f"--{name}", str(value)]


def vllm_launch(
    spec: DeploymentSpec,
    layout: HostLayout = DEFAULT_LAYOUT,
    *,
    model_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    replica: int = 0,
    kv_cache_gib: int = 1,
) -> VllmLaunch:
    """argv and environment of replica `replica` (one per GPU) for this spec."""
    on_cpu = runs_on_cpu(spec, layout)
    if port is None:
        port = spec.replica_port(replica)
    if host is None:
        # Behind the gateway vLLM is only reachable from the host itself.
        host = "127.0.0.1" if spec.gateway.enabled or on_cpu else "0.0.0.0"
    args = _common_args(spec, model_path or spec.model.path, spec.model.served_name, spec.max_num_seqs, host, port)
    args += [
        "--enable-lora",
        "--max-lora-rank", str(spec.max_lora_rank),
        "--max-loras", str(spec.max_loras),
        "--max-cpu-loras", str(spec.max_cpu_loras),
    ]
    placement_args, placement_env = _placement(on_cpu, gpu_share=spec.gpu_memory_utilization,
                                               gpu=replica if spec.gpus_per_node > 1 else None,
                                               kv_cache_gib=kv_cache_gib)
    args += placement_args
    adapters = served_adapters(spec, layout)
    if adapters:
        args += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    for name, value in sorted(spec.server_args.items()):
        args += _flag(name, value)
    env = _environment(spec, layout)
    if spec.lora_mode == "dynamic":
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.update(placement_env)
    return VllmLaunch(args=tuple(args), env=env, host=host, port=port)


def merged_launch(spec: DeploymentSpec, merged: MergedReplicaSpec, *, version_name: str, model_path: str,
                  layout: HostLayout = DEFAULT_LAYOUT, kv_cache_gib: int = 1) -> VllmLaunch:
    """argv and environment of the merged replica of `merged.alias` serving `version_name` from `model_path`.

    Same flags as the LoRA replica (server_args included) minus LoRA, with the version name as the served
    model name: that is how the gateway recognises which version it serves. Its own compile caches, so
    its restarts never invalidate the LoRA replica's. On the local target (the CPU build of vLLM on the
    systemd test host) it takes a KV-cache size instead of a GPU share.
    """
    host = "127.0.0.1"
    placement_args, placement_env = _placement(runs_on_cpu(spec, layout), gpu_share=merged.gpu_memory_utilization,
                                               gpu=merged.gpu, kv_cache_gib=kv_cache_gib)
    args = _common_args(spec, model_path, version_name, merged.max_num_seqs, host, merged.port) + placement_args
    for name, value in sorted(spec.server_args.items()):
        args += _flag(name, value)
    env = _environment(spec, merged_cache_layout(layout, merged.alias)) | placement_env
    return VllmLaunch(args=tuple(args), env=env, host=host, port=merged.port)


def runs_on_cpu(spec: DeploymentSpec, layout: HostLayout) -> bool:
    """The CPU build of vLLM serves: the local stack, or a host without a GPU standing in for a GPU VM."""
    return spec.target == "local" or not layout.cuda


def cuda_only_options(spec: DeploymentSpec, layout: HostLayout) -> list[str]:
    """`serverEnv` options a CPU stand-in leaves out (the spec refuses them outright on the local stack)."""
    return sorted(CUDA_ONLY_VLLM_ENV & spec.server_env.keys()) if runs_on_cpu(spec, layout) else []


def _placement(on_cpu: bool, *, gpu_share: float, gpu: int | None,
               kv_cache_gib: int) -> tuple[list[str], dict[str, str]]:
    """Where one server computes, as (argv, environment): on the CPU build of vLLM a KV-cache size; on GPUs a
    share of the GPU's memory and, when `gpu` is given, which GPU."""
    if on_cpu:
        return [], {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
    return ["--gpu-memory-utilization", str(gpu_share)], {} if gpu is None else {"CUDA_VISIBLE_DEVICES": str(gpu)}


def merged_cache_layout(layout: HostLayout, alias: str) -> HostLayout:
    return replace(layout, cache=layout.cache / f"merged-{alias}")


def merged_model_dir(layout: HostLayout, version_name: str) -> PurePosixPath:
    """Where the merged weights of one version live on the host (`/data/models/merged/<domain>-vN`)."""
    return layout.models / "merged" / version_name


def _common_args(spec: DeploymentSpec, model_path: str, served_name: str, max_num_seqs: int, host: str,
                 port: int) -> list[str]:
    return [
        "--model", model_path,
        "--served-model-name", served_name,
        "--trust-remote-code",
        "--dtype", "bfloat16",
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(max_num_seqs),
        "--host", host,
        "--port", str(port),
        "--disable-uvicorn-access-log",
    ]


def _environment(spec: DeploymentSpec, layout: HostLayout) -> dict[str, str]:
    # The stack's own options first, so the deployment's variables win even over a name the spec check misses.
    dropped = cuda_only_options(spec, layout)
    return {k: v for k, v in sorted(spec.server_env.items()) if k not in dropped} | {
        # Offline: weights come from the local path, never from a hub at run time.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # Kept across restarts so torch.compile and CUDA graphs are not rebuilt from scratch.
        "VLLM_CACHE_ROOT": str(layout.cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(layout.cache / "inductor"),
        "TRITON_CACHE_DIR": str(layout.cache / "triton"),
        "HF_HOME": str(layout.cache / "hf"),
        # FlashInfer's JIT kernels land under XDG_CACHE_HOME: ~100 s of a first start on an H100 (docs/benchmarks.md).
        "XDG_CACHE_HOME": str(layout.cache / "xdg"),
        # Tiles from `fab tune-lora-kernels`; files are named after the GPU, so a folder without this GPU's
        # files (or none at all) leaves vLLM on its default tiles.
        "VLLM_TUNED_CONFIG_FOLDER": str(layout.lora_kernels),
    }


def systemd_unit(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT, replica: int = 0,
                 model_path: str | None = None) -> str:
    """The vLLM unit file (`exaone-vllm@N.service` instance N serves GPU N)."""
    launch = vllm_launch(spec, layout, model_path=model_path, replica=replica)
    return unit_text(launch, layout, layout.cache,
                     f"vLLM multi-LoRA server for {spec.model.name} (replica {replica}, stack {spec.stack})")


def unit_text(launch: VllmLaunch, layout: HostLayout, cache: PurePosixPath, description: str,
              unit_extra: str = "", env_files: tuple[str, ...] = ()) -> str:
    """A hardened systemd service running one rendered vLLM launch."""
    exec_start = " ".join(_quote(part) for part in launch.command(str(layout.vllm_python)))
    env_lines = "\n".join(f"Environment={_quote(f'{k}={v}')}" for k, v in sorted(launch.env.items()))
    cache_dirs = " ".join(str(cache.relative_to("/var/cache") / d) for d in ("vllm", "inductor", "triton", "hf", "xdg"))
    extra_env = "".join(f"\nEnvironmentFile={f}" for f in env_files)
    return f"""[Unit]
Description={description}
After=network-online.target
Wants=network-online.target{unit_extra}

[Service]
Type=exec
User={layout.service_user}
Group={layout.service_user}
WorkingDirectory={layout.data}
{env_lines}{extra_env}
ExecStart={exec_start}
Restart=always
RestartSec=5
TimeoutStartSec=900
TimeoutStopSec=60
KillSignal=SIGTERM
LimitNOFILE=65536
CacheDirectory={cache_dirs}
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full
ProtectHome=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
ReadWritePaths={layout.data}

[Install]
WantedBy=multi-user.target
"""


def kubernetes_container(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT,
                         api_key_secret: str = "exaone-lora-api-key") -> dict[str, Any]:
    """The vLLM container of the AKS Deployment: same argv and environment as the systemd unit, except that
    canary versions are served too and runtime LoRA loading is off (a deploy rolls pods through the validating
    init containers; no admin endpoint exists on the pod for a client to reach)."""
    launch = vllm_launch(spec, layout, host="0.0.0.0")
    args = list(launch.args)
    if spec.aks.canaries:
        end = args.index("--lora-modules") + 1 + len(spec.adapters)
        args[end:end] = [f"{c.name}={layout.adapter_dir(c.name)}" for c in spec.aks.canaries]
    runtime_env = {k: v for k, v in launch.env.items() if k != "VLLM_ALLOW_RUNTIME_LORA_UPDATING"}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(runtime_env.items())]
    env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": api_key_secret, "key": "api-key"}}})
    probe = {"httpGet": {"path": "/health", "port": launch.port}, "periodSeconds": 10}
    return {
        "name": "vllm",
        "image": f"vllm/vllm-openai:v{spec.vllm_version}",
        "command": ["python3", "-m", VLLM_MODULE],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": launch.port}],
        # One GPU per pod; CPU and memory fit a GPU's share of both tiers' SKUs (NC40ads: 40 vCPU, 320 GiB per GPU;
        # NC80adis: 40 vCPU, 320 GiB per GPU), /dev/shm (16 GiB, memory-backed) included in the limit.
        "resources": {"requests": {"nvidia.com/gpu": 1, "cpu": "8", "memory": "48Gi"},
                      "limits": {"nvidia.com/gpu": 1, "cpu": "16", "memory": "96Gi"}},
        "readinessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 3},
        "startupProbe": {**probe, "failureThreshold": 90},
        "livenessProbe": {**probe, "failureThreshold": 6},
        "volumeMounts": [
            {"name": "models", "mountPath": str(layout.models)},
            {"name": "adapters", "mountPath": str(layout.adapters)},
            {"name": "cache", "mountPath": str(layout.cache)},
        ],
    }


def _quote(part: str) -> str:
    # systemd splits ExecStart= on whitespace and honours double quotes.
    if any(c in part for c in ' "\\'):
        return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return part
