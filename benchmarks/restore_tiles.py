"""Write vLLM's LoRA tile files from a kept `tune-lora-kernels` report, without tuning again.

    python -m benchmarks.restore_tiles --report benchmarks/results/lora-tune-h200.json \\
        --model-dir /root/bench/model --out /root/bench/cache/capture-dual-stream-lora-tuned/lora-kernels

What a serving host does when its tuned tiles come back from the cache: the report holds every tuned tile by
shape and batch; a shape or batch the report did not reach (budget ran out) and the prefill batches get vLLM's
built-in tile, exactly as `service.lora_kernels.tune` writes them. The GPU the report was tuned on must be the
GPU here (tiles are per GPU model). Needs vLLM (its default tiles), no GPU time.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from service.lora_kernels import (
    PREFILL_BATCHES,
    TUNED_BATCHES,
    KernelConfig,
    LoraOpShape,
    config_tables,
    model_shape_from_config,
    op_shapes,
    vllm_default,
    write_config_files,
)


def restore(report: dict[str, object], model_dir: Path, out: Path, gpu_here: str) -> list[Path]:
    gpu = str(report["gpu"])
    if gpu != gpu_here:
        raise ValueError(f"the report's tiles were tuned on {gpu!r}, this GPU is {gpu_here!r}: tiles are per GPU model")
    rank, max_loras = int(str(report["rank"])), int(str(report["max_loras"]))
    tuned: dict[tuple[str, tuple[str, ...], int], KernelConfig] = {
        (row["op"], tuple(row["layers"]), int(row["batch"])): row["tuned"]
        for row in report["shapes"]  # type: ignore[attr-defined]
    }
    os.environ.pop("VLLM_TUNED_CONFIG_FOLDER", None)  # the fallback must be vLLM's built-in tile
    shapes = op_shapes(model_shape_from_config(model_dir), rank)
    entries: list[tuple[LoraOpShape, int, KernelConfig]] = []
    for batch in TUNED_BATCHES:
        for shape in shapes:
            entries.append((shape, batch, tuned.get((shape.op, shape.layers, batch))
                            or vllm_default(shape, batch, max_loras)))
    for batch in PREFILL_BATCHES:
        entries.extend((shape, batch, vllm_default(shape, batch, max_loras)) for shape in shapes)
    used = {(s.op, s.layers, b) for s, b, _ in entries}
    missing = set(tuned) - used
    if missing:
        raise ValueError(f"report shapes this model does not have: {sorted(missing)[:3]}")
    return write_config_files(out, gpu, config_tables(entries, max_loras))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpu", default=None, help="GPU name here (default: torch.cuda.get_device_name())")
    args = parser.parse_args(argv)
    gpu = args.gpu
    if gpu is None:
        import torch

        gpu = torch.cuda.get_device_name()
    for path in restore(json.loads(args.report.read_text()), args.model_dir, args.out, gpu):
        print(path)


if __name__ == "__main__":
    main()
