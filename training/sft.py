"""PEFT LoRA supervised fine-tuning of EXAONE, with every speed knob an explicit parameter, resumable.

Why a plain PyTorch loop instead of TRL's SFTTrainer: TRL's assistant-only loss needs `{% generation %}`
markers that EXAONE's chat template does not have, its contamination-free packing relies on
FlashAttention's variable-length path that EXAONE's remote code does not take, and chunked cross-entropy
needs a loss over the decoder's hidden states, not the model's logits. The loop below is short, does
exactly those three things, and saves/restores everything needed to resume (adapter, optimizer,
scheduler, RNG, loss curve) at step granularity.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exaone_lora.model_shape import ALL_LINEAR_MODULES, ATTENTION_MODULES
from training.data import (
    Conversation,
    Row,
    collate,
    collate_flat,
    pack_examples,
    single_rows,
    split_eval,
    tokenize_all,
)

TARGETS: dict[str, tuple[str, ...]] = {
    "attention-qv": ("q_proj", "v_proj"),
    "attention": ATTENTION_MODULES,
    "all-linear": ALL_LINEAR_MODULES,
}
EMBEDDINGS_SUFFIX = "+embeddings"
# Trained in full and saved with the adapter (vLLM refuses such adapters; export refuses them first).
EMBEDDING_MODULES: tuple[str, ...] = ("wte", "lm_head")


def resolve_targets(strategy: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(target_modules, modules_to_save) for `attention-qv`, `attention`, `all-linear`, each optionally `+embeddings`."""
    base = strategy.removesuffix(EMBEDDINGS_SUFFIX) or "all-linear"
    if base not in TARGETS:
        raise ValueError(f"unknown target strategy {strategy!r}: use one of {', '.join(TARGETS)} (optionally with "
                         f"{EMBEDDINGS_SUFFIX}, or {EMBEDDINGS_SUFFIX} alone for all-linear{EMBEDDINGS_SUFFIX})")
    return TARGETS[base], EMBEDDING_MODULES if strategy.endswith(EMBEDDINGS_SUFFIX) else ()


@dataclass(frozen=True)
class SFTConfig:
    """The seed's hyperparameters as defaults; the speed knobs below them do not change the maths."""

    rank: int = 32
    alpha: int = 64
    dropout: float = 0.05
    learning_rate: float = 2e-4
    epochs: int = 30
    micro_batch: int = 4
    grad_accum: int = 8
    targets: str = "all-linear"
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_fraction: float = 0.1
    # Speed knobs (benchmarked separately; same loss within noise).
    packing: bool = False
    # One row per micro-batch, samples end to end, attention per sample (FlashAttention's variable-length
    # kernel on CUDA): no compute on padding, and exactly the unpadded batches' samples and loss.
    padding_free: bool = False
    chunked_ce: bool = False
    ce_chunk_tokens: int = 1024
    bf16: bool | None = None  # None: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    pad_multiple: int = 1  # e.g. 64 with torch_compile: a handful of shapes instead of one per batch length
    # Run control.
    max_steps: int | None = None  # overrides epochs (tests, benchmarks)
    save_every: int | None = None  # steps between resumable checkpoints; None: once per epoch
    keep_checkpoints: int = 2
    device: str | None = None  # None: cuda if available

    def __post_init__(self) -> None:
        resolve_targets(self.targets)
        for name in ("rank", "alpha", "epochs", "micro_batch", "grad_accum", "max_length", "ce_chunk_tokens", "pad_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.padding_free and self.pad_multiple > self.max_length:
            raise ValueError(f"with padding_free, pad_multiple ({self.pad_multiple}) must be <= max_length "
                             f"({self.max_length}): the trailing padding is one sample of at most max_length tokens")

    def fingerprint(self) -> str:
        """What must not change between an interrupted run and its resumption."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("save_every", "keep_checkpoints", "device",
                                                                    "torch_compile", "gradient_checkpointing",
                                                                    "pad_multiple", "padding_free")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


@dataclass
class TrainResult:
    out_dir: Path
    adapter_dir: Path
    steps: int
    loss_curve: list[dict[str, float]]
    eval_loss: float | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def first_loss(self) -> float:
        return self.loss_curve[0]["loss"]

    @property
    def final_loss(self) -> float:
        return self.loss_curve[-1]["loss"]


@dataclass(frozen=True)
class StepStats:
    loss: float
    samples: int
    tokens: int  # tokens processed (padding excluded)
    step: int  # which optimizer step (1-based)


@dataclass(frozen=True)
class _LaunchedStep:
    """An optimizer step whose work is queued on the device but whose loss has not been read yet."""

    step: int
    loss_sum: Any  # a device tensor: reading it waits for the step
    targets: int
    samples: int
    tokens: int
    lr: float


class StopTraining(Exception):
    """Raised by an `on_step` callback to stop after the checkpoint of that step (as an interruption would)."""


def load_base_model(path: Path | str, *, dtype: Any, device: str) -> tuple[Any, Any]:
    """EXAONE model + tokenizer with trust_remote_code and the transformers-5 embeddings fix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exaone_lora.hf_compat import check_rotary_buffers, fix_input_embeddings

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=True, dtype=dtype)
    fix_input_embeddings(model)
    check_rotary_buffers(model)
    return model.to(device), tokenizer


def compile_blocks(model: Any, *, dynamic: bool | None = None) -> int:
    """torch.compile each decoder block in place (regional compilation); returns how many were compiled.

    The blocks share one code path, so torch compiles one graph and reuses it for every layer: a cold start
    compiles one block instead of the whole 30-layer decoder (two, in fact: the first block's input, the
    frozen embedding's output, needs no gradient). In place, so parameter names (and the saved adapter) gain
    no `_orig_mod` prefix. `dynamic` is torch.compile's.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in kinds]
    if not blocks:
        raise ValueError(f"cannot compile: no decoder blocks ({', '.join(sorted(kinds)) or 'none declared'}) found")
    for block in blocks:
        # Tuning the launch parameters of the fused elementwise kernels (RMSNorm, SiLU gating, LoRA dropout)
        # measured faster on the GPU (docs/training-benchmarks.md, round 5).
        block.compile(dynamic=dynamic, options={"coordinate_descent_tuning": True})
    return len(blocks)


def default_base_name(path: Path | str) -> str:
    """The model's name: the checkpoint factory's record, else config.json's `_name_or_path`, else the directory name."""
    root = Path(path)
    factory = root / ".factory.json"
    if factory.is_file():
        from exaone_lora.model_shape import SHAPES

        size = json.loads(factory.read_text()).get("size")
        if size in SHAPES:
            return SHAPES[size].name
    return str(json.loads((root / "config.json").read_text()).get("_name_or_path") or root.name)


def model_revision(path: Path | str) -> str:
    """A stable id for a local checkpoint: sha256 over config.json and the weight files' names and sizes."""
    root = Path(path)
    sha = hashlib.sha256((root / "config.json").read_bytes())
    for weights in sorted(root.glob("*.safetensors")):
        sha.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return "local-" + sha.hexdigest()[:16]


def _device_and_dtype(config: SFTConfig) -> tuple[str, Any, bool]:
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = config.bf16 if config.bf16 is not None else device.startswith("cuda")
    return device, torch.bfloat16 if bf16 else torch.float32, bf16


def _micro_batches(rows: Sequence[Row], micro_batch: int, seed: int, epoch: int) -> list[list[Row]]:
    order = list(range(len(rows)))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return [[rows[i] for i in order[s:s + micro_batch]] for s in range(0, len(order), micro_batch)]


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((p for p in (out_dir / "checkpoints").glob("step-*") if not p.name.endswith(".partial")),
                  key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(out_dir: Path | str) -> Path | None:
    found = _checkpoints(Path(out_dir))
    return found[-1] if found else None


class Trainer:
    """One SFT run: build model + data, then `run()`; resumes from the newest checkpoint in `out_dir`."""

    def __init__(self, base_path: Path | str, conversations: Sequence[Conversation], out_dir: Path | str,
                 config: SFTConfig, *, data_hash: str, base_model_name: str | None = None,
                 base_model_revision: str | None = None):
        import torch
        from peft import LoraConfig, get_peft_model

        from training.loss import PackedAttention, supports_padding_free

        self.config = config
        self.base_path = Path(base_path)
        self.out_dir = Path(out_dir)
        self.data_hash = data_hash
        self.base_model_name = base_model_name or default_base_name(self.base_path)
        self.base_model_revision = base_model_revision or model_revision(self.base_path)
        self.device, dtype, self.bf16 = _device_and_dtype(config)
        torch.manual_seed(config.seed)
        model, self.tokenizer = load_base_model(self.base_path, dtype=dtype, device=self.device)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

        train, held = split_eval(conversations, config.eval_fraction, config.seed)
        train_examples, self.dropped = tokenize_all(self.tokenizer, train, config.max_length)
        eval_examples, _ = tokenize_all(self.tokenizer, held, config.max_length)
        if not train_examples:
            raise ValueError("no training example left after tokenization (all truncated to nothing?)")
        self.n_train, self.n_eval = len(train_examples), len(eval_examples)
        self.train_tokens = sum(len(e) for e in train_examples)
        self.rows = pack_examples(train_examples, config.max_length) if config.packing else single_rows(train_examples)
        self.eval_rows = single_rows(eval_examples)

        modules, to_save = resolve_targets(config.targets)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=list(modules), modules_to_save=list(to_save) or None,
                          bias="none", task_type="CAUSAL_LM")
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        self.model = get_peft_model(model, lora)
        if config.padding_free and not supports_padding_free(self.model):
            raise ValueError("padding-free batches need a decoder that takes sample bounds (cu_seq_lens_q, "
                             "max_length_q), as the project's EXAONE-shaped modeling code does; this model's "
                             "does not. Train without --padding-free.")
        self.packed = PackedAttention(self.model) if config.packing and not config.padding_free else None
        if config.torch_compile:
            # Padding-free rows change width every step: compile for any width at once, not per width.
            compile_blocks(self.model, dynamic=config.padding_free or None)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           fused=self.device.startswith("cuda"))
        batches_per_epoch = math.ceil(len(self.rows) / config.micro_batch)
        self.steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(config.warmup_ratio * self.total_steps), self.total_steps)
        self.step = 0
        self.loss_curve: list[dict[str, float]] = []
        self.eval_curve: list[dict[str, float]] = []
        self._epoch_cache: tuple[int, list[list[Row]]] = (-1, [])
        self._prefetched: tuple[int, dict[str, Any]] | None = None

    # ---------------------------------------------------------------- state

    def _state_fingerprint(self) -> dict[str, str]:
        return {"config": self.config.fingerprint(), "data_hash": self.data_hash, "base": self.base_model_revision}

    def save_checkpoint(self) -> Path:
        import torch

        root = self.out_dir / "checkpoints"
        final = root / f"step-{self.step:06d}"
        staging = root / f"step-{self.step:06d}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.model.save_pretrained(str(staging / "adapter"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   staging / "trainer.pt")
        state = {"step": self.step, "loss_curve": self.loss_curve, "eval_curve": self.eval_curve,
                 "fingerprint": self._state_fingerprint()}
        (staging / "state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)  # atomic: a crash mid-save leaves the previous checkpoint as the newest
        for old in _checkpoints(self.out_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = json.loads((path / "state.json").read_text())
        if state["fingerprint"] != self._state_fingerprint():
            raise ValueError(f"{path} was written by a run with other settings, data or base model; "
                             "use a fresh output directory (or --no-resume) instead of resuming it")
        weights = load_file(str(path / "adapter" / "adapter_model.safetensors"), device=self.device)
        set_peft_model_state_dict(self.model, weights)
        # weights_only: a checkpoint folder is data; unpickling arbitrary objects from it would run code.
        blob = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"])
        if blob.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        self.step = int(state["step"])
        self.loss_curve = state["loss_curve"]
        self.eval_curve = state["eval_curve"]

    # ---------------------------------------------------------------- loop

    def _to_device(self, rows: Sequence[Row]) -> dict[str, Any]:
        build = collate_flat if self.config.padding_free else collate
        batch = build(rows, self.pad_id, self.config.pad_multiple)
        if self.device.startswith("cuda"):
            # Pinned, so the copy is queued behind the running step instead of waiting for it.
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def _first_batch(self, step: int, rows: Sequence[Row]) -> dict[str, Any]:
        """Step `step`'s first micro-batch: the one prepared while the previous step ran, if it was."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == step:
            return prefetched[1]
        return self._to_device(rows)

    def _loss_sum(self, batch: dict[str, Any]) -> tuple[Any, int]:
        import torch

        from training.loss import loss_sum

        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return loss_sum(self.model, batch, chunked=self.config.chunked_ce,
                            chunk_tokens=self.config.ce_chunk_tokens, packed=self.packed,
                            max_sample_tokens=self.config.max_length)

    def evaluate(self) -> float | None:
        import torch

        if not self.eval_rows:
            return None
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(self.eval_rows), self.config.micro_batch):
                batch = self._to_device(self.eval_rows[start:start + self.config.micro_batch])
                loss, n = self._loss_sum(batch)
                total += float(loss)
                count += n
        self.model.train()
        return total / max(count, 1)

    def step_batches(self, step: int) -> list[list[Row]]:
        """The micro-batches of optimizer step `step` (0-based): a pure function of seed, epoch and position."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, _micro_batches(self.rows, self.config.micro_batch, self.config.seed, epoch))
        return self._epoch_cache[1][index * self.config.grad_accum:(index + 1) * self.config.grad_accum]

    def train_step(self) -> StepStats:
        """One optimizer step over `grad_accum` micro-batches; waits for it and appends to the loss curve."""
        return self._finish_step(self._launch_step())

    def train_steps(self, count: int) -> Iterator[StepStats]:
        """`count` optimizer steps, each queued before the previous one's loss is read.

        Reading a loss waits for the GPU; with one step in flight the host queues the next step's work while the
        GPU still runs the previous one, so the host never waits for the GPU between steps (on the H200 the step
        was GPU-bound either way: docs/training-benchmarks.md, round 5). The same steps in the same order as
        `train_step`, so the same curve. Once the generator is exhausted no step is in flight, so a checkpoint
        taken then holds exactly the steps made.
        """
        in_flight: _LaunchedStep | None = None
        for _ in range(count):
            launched = self._launch_step()
            if in_flight is not None:
                yield self._finish_step(in_flight)
            in_flight = launched
        if in_flight is not None:
            yield self._finish_step(in_flight)

    def _launch_step(self) -> _LaunchedStep:
        import torch

        group = self.step_batches(self.step)
        # Normalise by the labelled tokens of the whole optimizer step, so accumulation = one big batch.
        step_targets = max(sum(row.label_count for rows in group for row in rows), 1)
        losses = []
        samples = tokens = 0
        for index, rows in enumerate(group):
            batch = self._first_batch(self.step, rows) if index == 0 else self._to_device(rows)
            loss, _ = self._loss_sum(batch)
            (loss / step_targets).backward()
            losses.append(loss.detach())
            samples += sum(max(r.segment_ids) for r in rows)
            tokens += sum(len(r) for r in rows)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.step < self.total_steps:
            # Build and queue the next step's first batch while the GPU is still busy with this one.
            self._prefetched = (self.step, self._to_device(self.step_batches(self.step)[0]))
        return _LaunchedStep(self.step, torch.stack(losses).sum(), step_targets, samples, tokens,
                             self.scheduler.get_last_lr()[0])

    def _finish_step(self, launched: _LaunchedStep) -> StepStats:
        loss_value = float(launched.loss_sum) / launched.targets
        self.loss_curve.append({"step": launched.step, "epoch": round(launched.step / self.steps_per_epoch, 4),
                                "loss": round(loss_value, 6), "lr": launched.lr})
        return StepStats(loss_value, launched.samples, launched.tokens, launched.step)

    def run(self, *, resume: bool = True, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        import torch

        checkpoint = last_checkpoint(self.out_dir) if resume else None
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        elif (self.out_dir / "checkpoints").exists():
            shutil.rmtree(self.out_dir / "checkpoints")
        resumed_from = self.step
        save_every = self.config.save_every or self.steps_per_epoch
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self.model.train()
        samples = tokens = 0
        started = time.perf_counter()
        while self.step < self.total_steps:
            # Steps run pipelined up to the next checkpoint, where none is in flight (see train_steps).
            checkpoint_at = min(self.total_steps, (self.step // save_every + 1) * save_every)
            for stats in self.train_steps(checkpoint_at - self.step):
                samples, tokens = samples + stats.samples, tokens + stats.tokens
                if stats.step == checkpoint_at:
                    if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                        eval_loss = self.evaluate()
                        if eval_loss is not None:
                            self.eval_curve.append({"step": self.step, "eval_loss": round(eval_loss, 6)})
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(stats.step, stats.loss)
        elapsed = time.perf_counter() - started
        return self._finish(resumed_from, samples, tokens, elapsed)

    def _finish(self, resumed_from: int, samples: int, tokens: int, elapsed: float) -> TrainResult:
        import torch

        adapter_dir = self.out_dir / "adapter"
        shutil.rmtree(adapter_dir, ignore_errors=True)
        self.model.save_pretrained(str(adapter_dir))
        eval_loss = self.eval_curve[-1]["eval_loss"] if self.eval_curve else self.evaluate()
        if self.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        modules, to_save = resolve_targets(self.config.targets)
        summary = {
            "base_model": {"name": self.base_model_name, "revision": self.base_model_revision, "path": str(self.base_path)},
            "config": asdict(self.config),
            "target_modules": list(modules),
            "modules_to_save": list(to_save),
            "data_hash": self.data_hash,
            "train_samples": self.n_train,
            "eval_samples": self.n_eval,
            "dropped_by_truncation": self.dropped,
            "train_tokens": self.train_tokens,
            "rows": len(self.rows),
            "steps": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_from_step": resumed_from,
            "loss_curve": self.loss_curve,
            "eval_curve": self.eval_curve,
            "eval_loss": eval_loss,
            "device": self.device,
            "bf16": self.bf16,
            "seconds": round(elapsed, 3),
            "samples_per_s": round(samples / elapsed, 3) if elapsed else None,
            "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None,
            "peak_memory_bytes": peak,
        }
        (self.out_dir / "training.json").write_text(json.dumps(summary, indent=2))
        return TrainResult(self.out_dir, adapter_dir, self.step, self.loss_curve, eval_loss, summary)


def train(base_path: Path | str, data: Path | str | Sequence[Conversation], out_dir: Path | str,
          config: SFTConfig | None = None, *, resume: bool = True, on_step: Callable[[int, float], None] | None = None,
          base_model_name: str | None = None, base_model_revision: str | None = None) -> TrainResult:
    """Train one adapter; `data` is a ShareGPT JSONL path (refused with line numbers if any line is bad) or conversations."""
    from training.data import data_hash, load_corpus

    if isinstance(data, (str, Path)):
        corpus = load_corpus(data)
        conversations: Sequence[Conversation] = corpus.conversations
    else:
        conversations = data
    trainer = Trainer(base_path, conversations, out_dir, config or SFTConfig(), data_hash=data_hash(conversations),
                      base_model_name=base_model_name, base_model_revision=base_model_revision)
    return trainer.run(resume=resume, on_step=on_step)
