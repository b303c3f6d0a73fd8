"""The LoRA kernel tuner's shapes, search and files; the files are read back by vLLM's own lookup.

The timing itself needs an NVIDIA GPU and runs on the device machine (`benchmarks/device_run.sh tune`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.lora_tune import (
    CHOICES,
    PREFILL_BATCHES,
    LoraOpShape,
    TunedShape,
    config_file_names,
    config_tables,
    coordinate_descent,
    op_shapes,
    step_estimate_us,
    write_config_files,
)
from exaone_lora.local.processes import vllm_python
from exaone_lora.model_shape import EXAONE_3_5_2_4B

GPU = "NVIDIA H100 80GB HBM3"


def test_exaone_has_four_shrink_and_three_expand_shapes() -> None:
    shapes = {s.key: s for s in op_shapes(EXAONE_3_5_2_4B, rank=32)}
    assert set(shapes) == {
        ("shrink", 3, 2560, 32), ("shrink", 1, 2560, 32), ("shrink", 2, 2560, 32), ("shrink", 1, 7168, 32),
        ("expand", 3, 32, 2560), ("expand", 1, 32, 2560), ("expand", 2, 32, 7168),
    }
    # o_proj and down_proj write the same width from the same rank: one expand shape serves both.
    assert shapes[("expand", 1, 32, 2560)].layers == ("o_proj", "down_proj")
    assert shapes[("expand", 3, 32, 2560)].out_slices == (2560, 640, 640)


def test_coordinate_descent_finds_the_minimum_and_skips_rejected_candidates() -> None:
    best_values = {"block_m": 16, "block_n": 32, "block_k": 16, "num_warps": 2, "num_stages": 1}
    seen: list[dict[str, int | None]] = []

    def cost(config: dict[str, int | None]) -> float | None:
        seen.append(config)
        if config.get("num_warps") == 1:
            return None  # e.g. a tile Triton cannot compile
        return 10.0 + sum(abs(int(config[k] or 0) - v) for k, v in best_values.items())

    start: dict[str, int | None] = {"block_m": 64, "block_n": 128, "block_k": 32, "num_warps": 4, "num_stages": 2,
                                    "num_ctas": 1, "max_nreg": None}
    tuned, measured = coordinate_descent(start, CHOICES["expand"], cost)
    assert {k: tuned[k] for k in best_values} == best_values
    assert measured == 10.0
    assert tuned["num_ctas"] == 1 and tuned["max_nreg"] is None  # keys the search does not vary are kept
    assert any(c.get("num_warps") == 1 for c in seen)


def test_a_gain_within_noise_does_not_move_the_search() -> None:
    start: dict[str, int | None] = {"block_m": 64, "block_n": 64, "block_k": 32, "num_warps": 4, "num_stages": 2}
    tuned, _ = coordinate_descent(start, CHOICES["expand"], lambda c: 9.9 if c["block_m"] == 16 else 10.0)
    assert tuned == start
    with pytest.raises(ValueError, match="rejected"):
        coordinate_descent(start, CHOICES["expand"], lambda c: None)


def test_step_estimate_counts_every_layer_that_runs_a_shape() -> None:
    expand = LoraOpShape("expand", ("o_proj", "down_proj"), 2560, (2560,), 32)
    result = TunedShape(expand, 1, {}, 7.0, {}, 3.0, evaluated=5, rejected=0)
    assert step_estimate_us([result], batch=1, num_layers=30) == {"default_us": 420.0, "tuned_us": 180.0}
    assert step_estimate_us([result], batch=8, num_layers=30) == {"default_us": 0.0, "tuned_us": 0.0}


def test_vllm_reads_the_written_files(tmp_path: Path) -> None:
    """vLLM's own lookup (the CPU build's copy of vllm.lora.ops.triton_ops.utils) resolves our files."""
    shapes = op_shapes(EXAONE_3_5_2_4B, rank=32)
    qkv_shrink = next(s for s in shapes if s.op == "shrink" and s.num_slices == 3)
    gate_up_expand = next(s for s in shapes if s.op == "expand" and s.num_slices == 2)
    tuned_shrink = {"block_m": 16, "block_n": 32, "block_k": 128, "split_k": 8, "num_warps": 2, "num_stages": 3,
                    "num_ctas": 1, "group_size_m": 8, "max_nreg": None}
    tuned_expand = {"block_m": 16, "block_n": 32, "block_k": 32, "num_warps": 2, "num_stages": 1, "num_ctas": 1,
                    "max_nreg": None}
    prefill = {"block_m": 32, "block_n": 16, "block_k": 32, "split_k": 8, "num_warps": 4, "num_stages": 2,
               "num_ctas": 1, "group_size_m": 8, "max_nreg": None}
    entries = [(qkv_shrink, 1, tuned_shrink), (gate_up_expand, 1, tuned_expand),
               *((qkv_shrink, b, prefill) for b in PREFILL_BATCHES)]
    files = write_config_files(tmp_path, GPU, config_tables(entries, max_loras=4))
    assert sorted(p.name for p in files) == sorted(n for names in config_file_names(GPU).values() for n in names)
    assert not list(tmp_path.glob("*.tmp"))

    probe = """
import json, sys, torch
torch.cuda.get_device_name = lambda *a: sys.argv[1]  # the lookup names files after the GPU; this is the CPU build
from vllm.lora.ops.triton_ops.utils import get_lora_op_configs
got = {
    "shrink_m1": get_lora_op_configs("shrink", max_loras=5, batch=1, hidden_size=2560, rank=32, num_slices=3),
    "shrink_m2": get_lora_op_configs("shrink", max_loras=5, batch=2, hidden_size=2560, rank=32, num_slices=3),
    "shrink_m6000": get_lora_op_configs("shrink", max_loras=5, batch=6000, hidden_size=2560, rank=32, num_slices=3),
    "expand_false": get_lora_op_configs("expand", max_loras=5, batch=1, hidden_size=7168, rank=32, num_slices=2,
                                        add_inputs=False),
    "expand_true": get_lora_op_configs("expand", max_loras=5, batch=1, hidden_size=7168, rank=32, num_slices=2,
                                       add_inputs=True),
}
print(json.dumps(got))
"""
    run = subprocess.run([str(vllm_python()), "-c", probe, GPU], capture_output=True, text=True, timeout=300,
                         env={"VLLM_TUNED_CONFIG_FOLDER": str(tmp_path), "PATH": "/usr/bin:/bin",
                              "VLLM_LOGGING_LEVEL": "ERROR"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["shrink_m1"] == tuned_shrink
    assert got["shrink_m2"] == tuned_shrink  # nearest tuned batch
    assert got["shrink_m6000"] == prefill  # a prefill batch never gets a decode tile
    assert got["expand_false"] == tuned_expand == got["expand_true"]
