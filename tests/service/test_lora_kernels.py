"""The LoRA kernel tuner's shapes, search and files; the files are read back by vLLM's own lookup.

The timing itself needs an NVIDIA GPU: it runs on the device machine (`benchmarks/device_run.sh tune`) and on
serving hosts (`fab tune-lora-kernels`); here the CLI's refusal without a GPU is tested.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from typer.testing import CliRunner

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.local.processes import vllm_python
from exaone_lora.model_shape import EXAONE_3_5_2_4B
from exaone_lora.spec import DeploymentSpec, load_spec
from service.cli import app
from service.layout import HostLayout
from service.lora_kernels import (
    CHOICES,
    PREFILL_BATCHES,
    LoraOpShape,
    TunedShape,
    config_file_names,
    config_tables,
    coordinate_descent,
    model_shape_from_config,
    op_shapes,
    step_estimate_us,
    write_config_files,
)
from service.vllm_config import vllm_launch

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


def test_shapes_come_from_the_served_checkpoint(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    shape = model_shape_from_config(tiny_checkpoint.path)
    config = json.loads((tiny_checkpoint.path / "config.json").read_text())
    assert (shape.hidden_size, shape.intermediate_size, shape.num_layers) == (
        config["hidden_size"], config["intermediate_size"], config["num_layers"])
    qkv = next(s for s in op_shapes(shape, rank=8) if s.op == "expand" and s.num_slices == 3)
    assert qkv.out_slices == (shape.hidden_size, shape.kv_dim, shape.kv_dim)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="lacks a decoder shape key"):
        model_shape_from_config(tmp_path)
    with pytest.raises(ValueError, match=r"cannot read the model's config\.json"):
        model_shape_from_config(tmp_path / "missing")


def test_cli_without_a_gpu_refuses_and_writes_nothing(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    out = tmp_path / "lora-kernels"
    result = CliRunner().invoke(app, ["tune-lora-kernels", "--out", str(out), "--model-dir",
                                      str(tiny_checkpoint.path), "--budget-s", "5"])
    assert result.exit_code == 3, result.output
    assert "no CUDA GPU" in result.output
    assert not out.exists()


def test_vllm_reads_tiles_from_the_layout_cache_and_a_stack_cannot_move_it() -> None:
    spec = load_spec("poc")
    layout = HostLayout(cache=PurePosixPath("/var/cache/x"))
    env = vllm_launch(spec, layout).env
    assert env["VLLM_TUNED_CONFIG_FOLDER"] == "/var/cache/x/lora-kernels"
    with pytest.raises(ValueError, match="set by the deployment itself"):
        DeploymentSpec.model_validate(spec.model_dump() | {"server_env": {"VLLM_TUNED_CONFIG_FOLDER": "/tmp/x"}})
