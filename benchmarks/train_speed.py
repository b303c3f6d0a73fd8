"""LoRA SFT speed: N optimizer steps of `training.sft.Trainer` on a checkpoint with given settings, as JSON.

    python -m benchmarks.train_speed --checkpoint /root/bench/model --steps 10 --micro-batch 4 --grad-accum 8
    python -m benchmarks.train_speed --make full --root /root/bench --micro-batch 16 --grad-accum 2 --chunked-ce --packing

With --packing, --micro-batch counts packed rows of --max-length tokens: to compare at the same effective
batch in samples, pick --max-length so that samples_per_step (in the output) matches the unpacked run.
Samples are synthetic conversations of about `--sample-tokens` tokens (a quarter prompt, the rest answer),
rendered through the real chat template and tokenizer, so the timed path is exactly the training path.
Warm-up steps (allocator, autotuning, torch.compile) are run first and not timed. Prints one JSON object:
samples/s, tokens/s, optimizer steps/s, peak GPU memory, loss at the first and last step, and MFU
(model matmul FLOPs only: 4 × (non-embedding + LM-head params) per token for frozen-weight LoRA training
- forward plus input gradients, +2 with gradient checkpointing - attention score FLOPs excluded).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

# Dense bf16 peak of an H100 SXM (NVL: ~835); pass --peak-tflops for another GPU.
H100_BF16_TFLOPS = 989.0


def synthetic_conversations(tokenizer: Any, count: int, sample_tokens: int, seed: int) -> list[Any]:
    """Conversations whose rendered length is about `sample_tokens` (±20%), from ordinary vocabulary tokens."""
    from training.data import Conversation, Turn

    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]

    def text(n: int) -> str:
        return str(tokenizer.decode([rng.choice(vocab) for _ in range(n)]))

    out = []
    for _ in range(count):
        total = int(sample_tokens * rng.uniform(0.8, 1.2))
        prompt = max(4, total // 4)
        out.append(Conversation((Turn("user", text(prompt)), Turn("assistant", text(total - prompt - 8)))))
    return out


def matmul_params(model: Any) -> int:
    """Parameters used in matmuls per token: every linear weight, plus the LM head (tied to the embedding)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total = 0
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            total += module.weight.numel()
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from training.sft import SFTConfig, Trainer

    if args.make:
        from exaone_lora.checkpoints import make_checkpoint

        device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint = make_checkpoint(Path(args.root) / f"model-{args.make}", args.make, device=device).path
    else:
        checkpoint = Path(args.checkpoint)
    for name, value in args.inductor:
        setattr(torch._inductor.config, name, value)
    config = SFTConfig(rank=args.rank, alpha=2 * args.rank, dropout=args.lora_dropout, micro_batch=args.micro_batch,
                       grad_accum=args.grad_accum, targets=args.targets, max_length=args.max_length,
                       seed=args.seed, eval_fraction=0.0,
                       packing=args.packing, padding_free=args.padding_free, chunked_ce=args.chunked_ce,
                       ce_chunk_tokens=args.ce_chunk_tokens,
                       bf16=None if args.bf16 is None else args.bf16 == "on", gradient_checkpointing=args.grad_ckpt,
                       torch_compile=args.compile, pad_multiple=args.pad_multiple,
                       max_steps=args.warmup_steps + args.steps, warmup_ratio=0.0)
    from transformers import AutoTokenizer

    # trust_remote_code: without it transformers prompts on stdin and the prompt lands in the JSON on stdout.
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=True)
    per_step = args.micro_batch * args.grad_accum
    # With --packing a micro-batch counts rows of --max-length tokens, each holding several samples.
    per_row = max(1, args.max_length // args.sample_tokens) if args.packing else 1
    samples_needed = per_step * per_row * (args.warmup_steps + args.steps)
    conversations = synthetic_conversations(tokenizer, samples_needed, args.sample_tokens, args.seed)
    started = time.perf_counter()
    trainer = Trainer(checkpoint, conversations, Path(args.root) / "train-speed-run", config, data_hash="synthetic")
    setup_s = time.perf_counter() - started
    cuda = trainer.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    trainer.model.train()
    for _ in trainer.train_steps(args.warmup_steps):
        pass
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    samples = tokens = 0
    step_ms = []
    t0 = began = time.perf_counter()
    # The training loop's own pipelining (one step in flight): a step's time is from one loss read to the next.
    for stats in trainer.train_steps(args.steps):
        now = time.perf_counter()
        step_ms.append(round((now - began) * 1000, 1))
        began = now
        samples, tokens = samples + stats.samples, tokens + stats.tokens
    sync()
    elapsed = time.perf_counter() - t0
    profile = profile_step(trainer) if args.profile and cuda else None
    flops_per_token = (4 + (2 if args.grad_ckpt else 0)) * matmul_params(trainer.model)
    achieved_tflops = flops_per_token * tokens / elapsed / 1e12
    curve = trainer.loss_curve
    return {
        "benchmark": "train_speed",
        "checkpoint": str(checkpoint),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "settings": {k: v for k, v in vars(args).items() if k not in ("root",)},
        "rows_per_step": per_step,
        "samples_per_step": round(samples / args.steps, 2),
        "steps_timed": args.steps,
        "warmup_steps": args.warmup_steps,
        "seconds": round(elapsed, 4),
        "setup_seconds": round(setup_s, 2),
        "samples_per_s": round(samples / elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 1),
        "steps_per_s": round(args.steps / elapsed, 4),
        "step_ms": step_ms,
        "mean_sample_tokens": round(trainer.train_tokens / max(trainer.n_train, 1), 1),
        "rows_per_epoch": len(trainer.rows),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "loss_first": curve[0]["loss"] if curve else None,
        "loss_last": curve[-1]["loss"] if curve else None,
        "loss_curve": [round(c["loss"], 4) for c in curve],
        "matmul_tflops": round(achieved_tflops, 2),
        "mfu": round(achieved_tflops / args.peak_tflops, 4) if cuda else None,
        "profile": profile,
    }


def profile_step(trainer: Any, top: int = 20) -> dict[str, Any]:
    """Two more optimizer steps: one under torch.profiler (GPU time by kernel, host time by operator, biggest
    first), one under CUDA's sync debug mode (where the host waits for the GPU).

    `gpu_idle_ms` is the step's wall time minus its summed kernel time (one stream, so kernels do not
    overlap): time the GPU waited for the host (launches, Python, synchronisation).
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        trainer.train_step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - started) * 1000
    events = prof.key_averages()
    # One more step with CUDA's sync debug mode: every host-device synchronisation, by source line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = Counter(f"{Path(w.filename).name}:{w.lineno}: {str(w.message)[:80]}" for w in caught
                    if "synchroniz" in str(w.message))
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and e.device_time_total > 0]
    total_us = sum(e.device_time_total for e in kernels)
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    host = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: e.self_cpu_time_total,
                  reverse=True)
    return {
        "wall_ms": round(wall_ms, 2),
        "gpu_ms": round(total_us / 1000, 2),
        "gpu_idle_ms": round(wall_ms - total_us / 1000, 2),
        "top": [{"kernel": e.key[:160], "ms": round(e.device_time_total / 1000, 2), "calls": e.count,
                 "share": round(e.device_time_total / total_us, 4)} for e in kernels[:top]],
        "synchronisations": dict(syncs.most_common(top)),
        "host_top": [{"op": e.key[:120], "self_ms": round(e.self_cpu_time_total / 1000, 2), "calls": e.count}
                     for e in host[:top]],
    }


def inductor_setting(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` for torch._inductor.config, VALUE as JSON (true, 1, "x"); unknown names are refused."""
    import torch._inductor.config as inductor

    name, sep, value = text.partition("=")
    if not sep or not hasattr(inductor, name):
        raise argparse.ArgumentTypeError(f"not a torch._inductor.config setting: {text!r} (want NAME=VALUE)")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: value {value!r} is not JSON ({exc.msg})") from None


def parser() -> argparse.ArgumentParser:
    from training.sft import SFTConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an EXAONE-format checkpoint directory")
    source.add_argument("--make", choices=["tiny", "full"], help="write a random-weight checkpoint under --root first")
    p.add_argument("--root", default="/tmp/train-speed", help="scratch directory (checkpoint, run state)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=8)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--targets", default="all-linear")
    p.add_argument("--lora-dropout", type=float, default=SFTConfig.dropout,
                   help="the reference's 0.05 unless told; other values only to measure what dropout costs")
    p.add_argument("--inductor", type=inductor_setting, action="append", default=[], metavar="NAME=VALUE",
                   help="set torch._inductor.config.NAME (repeatable; VALUE parsed as JSON, e.g. cpp_wrapper=true)")
    p.add_argument("--sample-tokens", type=int, default=400)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--padding-free", action="store_true", help="one row per micro-batch, variable-length attention")
    p.add_argument("--chunked-ce", action="store_true")
    p.add_argument("--ce-chunk-tokens", type=int, default=1024)
    p.add_argument("--bf16", choices=["on", "off"], default=None, help="default: on for GPU, off for CPU")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--pad-multiple", type=int, default=1, help="round batch widths up (e.g. 64 with --compile)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--profile", action="store_true", help="profile one extra step; GPU time by kernel in the JSON")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS)
    return p


def main(argv: list[str] | None = None) -> int:
    result = run(parser().parse_args(argv))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
