"""Tune vLLM's multi-LoRA Triton kernels (shrink and expand) for the served model's layer shapes on this GPU.

vLLM runs every LoRA-wrapped layer as two Triton kernels and picks their tile sizes from a fixed default
unless `VLLM_TUNED_CONFIG_FOLDER` holds per-GPU JSON files (vllm/lora/ops/triton_ops/README_TUNING.md). At
batch 1 those defaults leave most SMs idle, and a decode step of an adapter request runs 240 of these
kernels. This module searches the tiles for each layer shape and batch size and writes the files vLLM reads
(`fab tune-lora-kernels` runs it on a serving host; `python -m service.cli tune-lora-kernels` anywhere):

    python -m service.cli tune-lora-kernels --model-dir /data/models/m --out /var/cache/exaone-lora/lora-kernels

The search is coordinate descent from vLLM's own default, timed inside a CUDA graph (as the served model
runs them), over one distinct weight set per decoder layer. A candidate whose output differs from
the default's is rejected. Batch sizes left untuned when the budget runs out get vLLM's default written
explicitly, so the files never change a shape that was not measured.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaone_lora.model_shape import ModelShape

KernelConfig = dict[str, int | None]

# The batch sizes the GPU stacks capture CUDA graphs for, the ones that matter most first: single-stream
# adapter requests (1) and the mixed-adapter saturation target (128).
TUNED_BATCHES: tuple[int, ...] = (1, 128, 8, 32, 2, 4, 16, 64, 256)
# Prefill batches: vLLM's default is written for them so the nearest-key lookup never applies a decode tile.
PREFILL_BATCHES: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)

# Every value here is valid for any batch (the kernels mask), so a choice only changes speed.
CHOICES: dict[str, dict[str, tuple[int, ...]]] = {
    "shrink": {"block_m": (16, 32, 64), "block_n": (16, 32), "block_k": (32, 64, 128, 256),
               "split_k": (1, 2, 4, 8, 16, 32, 64), "num_warps": (1, 2, 4, 8), "num_stages": (1, 2, 3, 4)},
    "expand": {"block_m": (16, 32, 64), "block_n": (16, 32, 64, 128, 256), "block_k": (16, 32),
               "num_warps": (1, 2, 4, 8), "num_stages": (1, 2, 3)},
}


@dataclass(frozen=True)
class LoraOpShape:
    """One kernel shape as vLLM keys it: shrink maps in_features -> rank, expand maps rank -> outputs."""

    op: str
    layers: tuple[str, ...]
    in_features: int
    out_slices: tuple[int, ...]
    rank: int

    @property
    def num_slices(self) -> int:
        return len(self.out_slices)

    @property
    def k(self) -> int:
        return self.in_features if self.op == "shrink" else self.rank

    @property
    def n(self) -> int:
        return self.rank if self.op == "shrink" else max(self.out_slices)

    @property
    def key(self) -> tuple[str, int, int, int]:
        return self.op, self.num_slices, self.k, self.n


class NoCudaGpu(RuntimeError):
    """Tuning times Triton kernels on the GPU vLLM will use; without one there is nothing to tune."""


def model_shape_from_config(model_dir: Path) -> ModelShape:
    """The decoder shape of the checkpoint vLLM serves, from its config.json (EXAONE's key names, with the
    Llama-style alternatives)."""
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the model's config.json at {path}: {exc}") from None
    try:
        return ModelShape(
            name=str(config.get("_name_or_path") or model_dir.name),
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config.get("num_layers", config.get("num_hidden_layers"))),
            num_attention_heads=int(config["num_attention_heads"]),
            num_key_value_heads=int(config.get("num_key_value_heads", config["num_attention_heads"])),
            intermediate_size=int(config["intermediate_size"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} lacks a decoder shape key: {exc}") from None


def packed_layers(shape: ModelShape) -> dict[str, tuple[int, tuple[int, ...]]]:
    """vLLM packs q/k/v and the two gate projections, so a decoder layer makes four LoRA calls."""
    h, kv, inter = shape.hidden_size, shape.kv_dim, shape.intermediate_size
    return {"qkv_proj": (h, (h, kv, kv)), "o_proj": (h, (h,)), "gate_up_proj": (h, (inter, inter)),
            "down_proj": (inter, (h,))}


def op_shapes(shape: ModelShape, rank: int) -> list[LoraOpShape]:
    """The distinct kernel shapes of one decoder layer (o_proj and down_proj share their expand shape)."""
    by_key: dict[tuple[str, int, int, int], LoraOpShape] = {}
    for op in ("shrink", "expand"):
        for layer, (in_features, out_slices) in packed_layers(shape).items():
            candidate = LoraOpShape(op, (layer,), in_features, out_slices, rank)
            if (known := by_key.get(candidate.key)) is not None:
                by_key[candidate.key] = LoraOpShape(op, (*known.layers, layer), known.in_features,
                                                    known.out_slices, rank)
            else:
                by_key[candidate.key] = candidate
    return list(by_key.values())


def coordinate_descent(start: KernelConfig, choices: dict[str, tuple[int, ...]],
                       cost: Callable[[KernelConfig], float | None], passes: int = 2,
                       min_gain: float = 0.02) -> tuple[KernelConfig, float]:
    """Improve one parameter at a time; `cost` returns None for a rejected candidate. A change must gain
    `min_gain` (relative) to be taken, so timing noise does not wander the search."""
    best = dict(start)
    best_cost = cost(best)
    if best_cost is None:
        raise ValueError(f"the starting configuration {start} was rejected")
    for _ in range(passes):
        improved = False
        for name, values in choices.items():
            for value in values:
                if best.get(name) == value:
                    continue
                candidate = best | {name: value}
                measured = cost(candidate)
                if measured is not None and measured < best_cost * (1 - min_gain):
                    best, best_cost, improved = candidate, measured, True
        if not improved:
            break
    return best, best_cost


@dataclass
class TunedShape:
    shape: LoraOpShape
    batch: int
    default: KernelConfig
    default_us: float
    tuned: KernelConfig
    tuned_us: float
    evaluated: int
    rejected: int

    def row(self) -> dict[str, Any]:
        return {"op": self.shape.op, "layers": list(self.shape.layers), "num_slices": self.shape.num_slices,
                "k": self.shape.k, "n": self.shape.n, "batch": self.batch, "default_us": self.default_us,
                "tuned_us": self.tuned_us, "default": self.default, "tuned": self.tuned,
                "evaluated": self.evaluated, "rejected": self.rejected}


def config_file_names(gpu_name: str) -> dict[str, tuple[str, ...]]:
    """File names vLLM looks for (utils.load_lora_op_config); expand has one per `add_inputs` value (the
    dual-stream path writes to a separate buffer: add_inputs False). Both files get the tiles timed with the
    stack's own `add_inputs`; the other value runs only if the stack changes its dual-stream switch."""
    gpu = gpu_name.replace(" ", "_").replace("-", "_")
    return {"shrink": (f"{gpu}_SHRINK.json",), "expand": (f"{gpu}_EXPAND_TRUE.json", f"{gpu}_EXPAND_FALSE.json")}


def config_tables(entries: list[tuple[LoraOpShape, int, KernelConfig]], max_loras: int
                  ) -> dict[str, dict[str, Any]]:
    """{op: config_data[max_loras][num_slices][m][k][n]} in vLLM's layout. vLLM's kernels see max_loras + 1
    LoRA ids (slot -1 is "no adapter"), which is the key its lookup uses."""
    tables: dict[str, dict[str, Any]] = {}
    for shape, batch, config in entries:
        by_m = tables.setdefault(shape.op, {}).setdefault(str(max_loras + 1), {}).setdefault(
            str(shape.num_slices), {})
        by_m.setdefault(str(batch), {}).setdefault(str(shape.k), {})[str(shape.n)] = config
    return tables


def write_config_files(out: Path, gpu_name: str, tables: dict[str, dict[str, Any]]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for op, names in config_file_names(gpu_name).items():
        for name in names:
            path = out / name
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(tables.get(op, {}), indent=1, sort_keys=True))
            tmp.replace(path)  # vLLM never sees a half-written file
            written.append(path)
    return written


def step_estimate_us(results: list[TunedShape], batch: int, num_layers: int) -> dict[str, float]:
    """LoRA kernel time of one decode step at `batch`: every layer runs each of its shapes once."""
    default = tuned = 0.0
    for result in results:
        if result.batch == batch:
            calls = num_layers * len(result.shape.layers)
            default += calls * result.default_us
            tuned += calls * result.tuned_us
    return {"default_us": default, "tuned_us": tuned}


# ---- GPU part: needs CUDA, vLLM and Triton (a serving host's vLLM venv, or the benchmark machine) ----

@dataclass
class KernelBench:
    """Tensors for one (shape, batch): `num_layers` distinct weight sets so the graph does not re-read one."""

    shape: LoraOpShape
    batch: int
    max_loras: int
    num_layers: int
    add_inputs: bool
    tensors: dict[str, Any] = field(default_factory=dict)

    def build(self) -> None:
        import torch
        from vllm.lora.ops.triton_ops import utils
        from vllm.lora.ops.triton_ops.lora_kernel_metadata import LoRAKernelMeta

        # vLLM caches weight pointers and strides by data_ptr, assuming weights live forever; a new bench can
        # reuse a freed address with another shape.
        utils._LORA_A_PTR_DICT.clear()
        utils._LORA_B_PTR_DICT.clear()
        s, m, dev = self.shape, self.batch, "cuda"
        meta = LoRAKernelMeta.make(self.max_loras, m, device=dev)
        # One adapter for a single stream; batches mix all GPU slots, as the saturation suite does.
        mapping = torch.arange(m, device=dev, dtype=torch.int64) % min(self.max_loras, m)
        meta.prepare_tensors(mapping)
        self.tensors["meta"] = meta.meta_args(m, specialize_active_lora=False)
        gen = torch.Generator(device=dev).manual_seed(0)
        if s.op == "shrink":
            self.tensors["x"] = torch.randn(m, s.in_features, device=dev, dtype=torch.bfloat16, generator=gen)
            self.tensors["weights"] = [
                [torch.randn(self.max_loras, 1, s.rank, s.in_features, device=dev, dtype=torch.bfloat16,
                             generator=gen) * 0.02 for _ in s.out_slices] for _ in range(self.num_layers)]
            self.tensors["out"] = torch.zeros(s.num_slices, m, s.rank, device=dev, dtype=torch.float32)
        else:
            self.tensors["x"] = torch.randn(s.num_slices, m, s.rank, device=dev, dtype=torch.float32,
                                            generator=gen)
            self.tensors["weights"] = [
                [torch.randn(self.max_loras, 1, out, s.rank, device=dev, dtype=torch.bfloat16, generator=gen)
                 * 0.02 for out in s.out_slices] for _ in range(self.num_layers)]
            self.tensors["out"] = torch.zeros(m, sum(s.out_slices), device=dev, dtype=torch.bfloat16)

    def run_all_layers(self) -> None:
        from vllm.lora.ops.triton_ops import lora_expand_op, lora_shrink_op

        t = self.tensors
        for weights in t["weights"]:
            if self.shape.op == "shrink":
                lora_shrink_op._lora_shrink(t["x"], weights, t["out"], *t["meta"], 1.0)
            else:
                lora_expand_op._lora_expand(t["x"], weights, t["out"], *t["meta"], offset_start=0,
                                            add_inputs=self.add_inputs)

    def output(self) -> Any:
        out = self.tensors["out"]
        out.zero_()
        self.run_all_layers()
        return out.float().clone()


@contextmanager
def forced_config(op: str, config: KernelConfig) -> Iterator[None]:
    """vLLM reads kernel configs only from files through an lru_cache'd lookup; a search needs to set one
    per call, so the op module's lookup name is swapped for the duration."""
    from vllm.lora.ops.triton_ops import lora_expand_op, lora_shrink_op

    module: Any = lora_shrink_op if op == "shrink" else lora_expand_op
    saved = module.get_lora_op_configs
    module.get_lora_op_configs = lambda *args, **kwargs: config
    try:
        yield
    finally:
        module.get_lora_op_configs = saved


def vllm_default(shape: LoraOpShape, batch: int, max_loras: int) -> KernelConfig:
    from vllm.lora.ops.triton_ops.utils import get_lora_op_configs

    config = get_lora_op_configs(shape.op, max_loras=max_loras + 1, batch=batch,
                                 hidden_size=shape.in_features if shape.op == "shrink" else shape.n,
                                 rank=shape.rank, num_slices=shape.num_slices,
                                 add_inputs=None if shape.op == "shrink" else True)
    return dict(config)


def tune_shape(bench: KernelBench, passes: int) -> TunedShape:
    import torch
    from triton.testing import do_bench_cudagraph

    default = vllm_default(bench.shape, bench.batch, bench.max_loras)
    with forced_config(bench.shape.op, default):
        reference = bench.output()
    counts = {"evaluated": 0, "rejected": 0}
    cache: dict[str, float | None] = {}

    def cost(config: KernelConfig) -> float | None:
        key = json.dumps(config, sort_keys=True)
        if key in cache:
            return cache[key]
        counts["evaluated"] += 1
        result: float | None
        try:
            with forced_config(bench.shape.op, config):
                if not torch.allclose(bench.output(), reference, rtol=2e-2, atol=2e-2):
                    result = None
                else:
                    ms = do_bench_cudagraph(bench.run_all_layers, rep=10)
                    result = 1000.0 * ms / bench.num_layers
        except Exception:  # a tile Triton cannot compile for this GPU is just not a candidate
            result = None
        if result is None:
            counts["rejected"] += 1
        cache[key] = result
        return result

    default_us = cost(default)
    if default_us is None:
        raise RuntimeError(f"vLLM's default config failed for {bench.shape} at batch {bench.batch}")
    tuned, tuned_us = coordinate_descent(default, CHOICES[bench.shape.op], cost, passes=passes)
    return TunedShape(bench.shape, bench.batch, default, default_us, tuned, tuned_us, **counts)


def tune(out: Path, model: ModelShape, budget_s: float, rank: int, max_loras: int, dual_stream: bool = True,
         passes: int = 2, batches: tuple[int, ...] = TUNED_BATCHES, report: Path | None = None,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune every shape at every batch (most important first) until `budget_s`, then write the files."""
    import torch

    if not torch.cuda.is_available():
        raise NoCudaGpu("no CUDA GPU here: LoRA kernel tuning times the kernels on the GPU vLLM serves from; "
                        "vLLM keeps its default tiles")
    num_layers = model.num_layers

    # The kernels launch with programmatic dependent launch only under dual-stream LoRA (vLLM reads the switch
    # at call time): tune them the way the stack runs them.
    os.environ["VLLM_LORA_ENABLE_DUAL_STREAM"] = "1" if dual_stream else "0"
    # The defaults the search starts from must be vLLM's built-in ones, not an earlier run's files.
    os.environ.pop("VLLM_TUNED_CONFIG_FOLDER", None)
    gpu = torch.cuda.get_device_name()
    shapes = op_shapes(model, rank)
    started = time.monotonic()
    results: list[TunedShape] = []
    entries: list[tuple[LoraOpShape, int, KernelConfig]] = []
    untuned: list[dict[str, Any]] = []
    total = len(batches) * len(shapes)
    for index, (batch, shape) in enumerate(((b, s) for b in batches for s in shapes), start=1):
        if time.monotonic() - started > budget_s:
            untuned.append({"op": shape.op, "layers": list(shape.layers), "batch": batch})
            entries.append((shape, batch, vllm_default(shape, batch, max_loras)))
            continue
        bench = KernelBench(shape, batch, max_loras, num_layers, add_inputs=not dual_stream)
        bench.build()
        result = tune_shape(bench, passes)
        results.append(result)
        entries.append((shape, batch, result.tuned))
        log(f"[{index}/{total} {time.monotonic() - started:5.0f}s] {shape.op:6} {'+'.join(shape.layers):22} "
              f"m={batch:<4} {result.default_us:6.2f} -> {result.tuned_us:6.2f} us ({result.evaluated} tried, "
              f"{result.rejected} rejected) {result.tuned}")
    for batch in PREFILL_BATCHES:
        entries.extend((shape, batch, vllm_default(shape, batch, max_loras)) for shape in shapes)
    written = write_config_files(out, gpu, config_tables(entries, max_loras))
    summary = {
        "gpu": gpu, "model": model.name, "rank": rank, "max_loras": max_loras, "dual_stream": dual_stream,
        "layers_timed_per_graph": num_layers,
        "wall_s": time.monotonic() - started, "budget_s": budget_s, "files": [str(p) for p in written],
        # Only batches with every shape tuned: a partial sum would look like a gain.
        "per_step": {str(b): step_estimate_us(results, b, num_layers) for b in batches
                     if sum(r.batch == b for r in results) == len(shapes)},
        "shapes": [r.row() for r in results], "untuned": untuned,
        "search": {"choices": CHOICES, "passes": passes, "timing": "triton.testing.do_bench_cudagraph"},
    }
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary, indent=1))
    return summary
