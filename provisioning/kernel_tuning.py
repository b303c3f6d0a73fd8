"""`tune-lora-kernels`: tune vLLM's LoRA kernel tiles on a serving host's GPU, into the folder its units read.

The tuner (`service.lora_kernels`, run with the host's vLLM venv) writes into a fresh folder that replaces the
old one only when it finished, so an interrupted run leaves the previous tiles (or vLLM's defaults) in place.
vLLM reads the files when it starts: the new tiles apply at the next `fab restart`.
"""

from __future__ import annotations

import json
import shlex

from fabric import Connection

from exaone_lora.spec import DeploymentSpec
from provisioning.remote import RemoteError, replace_dir, sh
from provisioning.results import Change
from provisioning.units import ensure_gateway_app, gateway_src
from service.layout import DEFAULT_LAYOUT, HostLayout

# service.cli tune-lora-kernels exits with this when the host has no CUDA GPU.
EXIT_NO_GPU = 3


def tune_command(spec: DeploymentSpec, layout: HostLayout, out: str, budget_s: float) -> str:
    src = gateway_src(layout)
    args = ["--out", out, "--model-dir", spec.model.path, "--rank", str(spec.max_lora_rank),
            "--max-loras", str(spec.max_loras), "--budget-s", str(budget_s),
            "--dual-stream" if spec.server_env_on("VLLM_LORA_ENABLE_DUAL_STREAM") else "--no-dual-stream"]
    return (f"cd {src} && PYTHONPATH={src} {layout.vllm_python} -m service.cli tune-lora-kernels "
            + " ".join(map(shlex.quote, args)))


def tune_lora_kernels(c: Connection, spec: DeploymentSpec, *, layout: HostLayout = DEFAULT_LAYOUT,
                      budget_s: float = 300.0) -> list[Change]:
    changes = [ensure_gateway_app(c, layout)]
    final = str(layout.lora_kernels)
    fresh = f"{final}.new"
    result = sh(c, f"rm -rf {fresh} && {tune_command(spec, layout, fresh, budget_s)}", check=False,
                timeout=budget_s + 900)
    if result.exited != 0:
        sh(c, f"rm -rf {fresh}")
        if result.exited == EXIT_NO_GPU:
            raise RemoteError(f"{c.host} has no CUDA GPU: nothing was tuned and vLLM keeps its default LoRA tiles")
        raise RemoteError(f"LoRA kernel tuning failed on {c.host} (exit {result.exited}); the previous tiles are "
                          f"unchanged:\n{(result.stdout + result.stderr).strip()[-3000:]}")
    summary = json.loads(result.stdout)
    sh(c, f"{replace_dir(fresh, final)} && chown -R {layout.service_user}: {final}")
    steps = summary["lora_kernel_us_per_step"]
    single = steps.get("1", {})
    gain = (f"; LoRA kernel time per decode step at batch 1: {single['default_us']:.0f} -> {single['tuned_us']:.0f} us"
            if single else "")
    changes.append(Change("lora kernels", True, f"{summary['tuned_shapes']} shapes tuned on {summary['gpu']} into "
                                                f"{final}{gain}; vLLM reads them at its next start (fab restart)"))
    return changes
