"""GPU check of padding-free attention: the CUDA variable-length kernel against per-sample SDPA, as JSON.

    python -m benchmarks.varlen_check            (on the device machine; needs CUDA)

CI runs the CPU side of padding-free training (`tests/training/test_padding_free.py`: SDPA under the
block-diagonal mask); the FlashAttention kernel only exists on CUDA, so this script holds it to the same
answer there: EXAONE 2.4B's head layout (32 query heads, 8 K/V heads, head dim 80), bf16, causal within each
sample, forward output and input gradients compared with SDPA run on each sample alone, eager and compiled.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any


def reference(q: Any, k: Any, v: Any, bounds: list[int]) -> Any:
    import torch
    import torch.nn.functional as F

    parts = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True, enable_gqa=True)
             for a, b in itertools.pairwise(bounds)]
    return torch.cat(parts, dim=2)


def compare(fn: Any, lengths: list[int], heads: int = 32, kv_heads: int = 8, dim: int = 80) -> dict[str, Any]:
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    total = sum(lengths)
    q, k, v = (torch.randn(1, h, total, dim, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
    grad = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = fn(q, k, v, cu, max(lengths))
    got = (out, *torch.autograd.grad(out, (q, k, v), grad))
    ref_out = reference(q, k, v, bounds)
    want = (ref_out, *torch.autograd.grad(ref_out, (q, k, v), grad))
    errors = {name: float((a.float() - b.float()).abs().max()) for name, a, b in zip(("out", "dq", "dk", "dv"), got, want,
                                                                                       strict=True)}
    scale = {name: float(b.float().abs().max()) for name, b in zip(("out", "dq", "dk", "dv"), want, strict=True)}
    return {"lengths": lengths, "max_abs_error": errors, "max_abs_reference": scale,
            "ok": all(errors[n] <= 0.02 * max(scale[n], 1.0) for n in errors)}


def main() -> int:
    import importlib

    import torch

    # By name: the modeling code is the checkpoints' remote code, outside the type-checked packages.
    modeling_exaone = importlib.import_module("exaone_lora.checkpoints.remote_code.modeling_exaone")

    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    fn = modeling_exaone._varlen_attention
    kernel = modeling_exaone._VARLEN
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "kernel": None if kernel is None else {"name": f"{kernel[0].__module__}.{kernel[0].__name__}",
                                               "options": {k: str(v) for k, v in kernel[1].items()}},
        "eager": [compare(fn, lengths) for lengths in ([7], [5, 64, 1, 300], [408, 350, 490, 333])],
    }
    compiled = torch.compile(fn, dynamic=True)
    result["compiled"] = [compare(compiled, lengths) for lengths in ([5, 64, 1, 300], [408, 350, 490, 333, 17])]
    result["ok"] = kernel is not None and all(c["ok"] for c in result["eager"] + result["compiled"])
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
