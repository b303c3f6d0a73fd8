"""ShareGPT JSONL: a validating reader, EXAONE chat-template rendering with assistant-only labels, packing.

Every bad line is reported with its line number and reason; nothing is silently dropped. Rendering uses the
tokenizer's own chat template (EXAONE's), and labels are -100 everywhere except assistant turns, so the
loss only teaches answers. Packing concatenates short samples into one row with positions reset per sample
and a segment id per sample, from which the trainer builds a block-diagonal causal mask (no sample attends
to another one). Padding-free batches (`collate_flat`) put a micro-batch's samples end to end in one row and
mark where each ends, for variable-length attention.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IGNORE_INDEX = -100
ROLE_MAP = {"system": "system", "human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant (chat-template roles)
    content: str


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    line: int = 0

    def messages(self) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.content} for t in self.turns]

    def to_sharegpt(self) -> dict[str, Any]:
        back = {v: k for k, v in ROLE_MAP.items()}
        return {"conversations": [{"from": back[t.role], "value": t.content} for t in self.turns]}


@dataclass(frozen=True)
class LineProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class DataError(ValueError):
    """A corpus with bad lines: `.problems` names every one (line number + reason)."""

    def __init__(self, path: Path | str, problems: Sequence[LineProblem]):
        self.path = Path(path)
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{self.path}: {len(self.problems)} bad line(s):\n{shown}{more}")


@dataclass
class Corpus:
    path: Path
    conversations: list[Conversation]
    problems: list[LineProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def data_hash(self) -> str:
        return data_hash(self.conversations)


def parse_line(text: str, line: int) -> Conversation:
    """Parse one ShareGPT line; raise ValueError with the reason when it is not a usable conversation."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    conversations = record.get("conversations")
    if conversations is None:
        raise ValueError("missing 'conversations'")
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list")
    turns: list[Turn] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} is not an object")
        speaker, value = turn.get("from"), turn.get("value")
        if speaker not in ROLE_MAP:
            raise ValueError(f"turn {i}: 'from' must be one of human, gpt, system (got {speaker!r})")
        if not isinstance(value, str):
            raise ValueError(f"turn {i}: 'value' must be a string")
        if not value.strip():
            raise ValueError(f"turn {i}: empty 'value'")
        turns.append(Turn(ROLE_MAP[speaker], value))
    body = turns[1:] if turns[0].role == "system" else turns
    if any(t.role == "system" for t in body):
        raise ValueError("a system turn may only come first")
    if not body:
        raise ValueError("no human/gpt turns")
    for i, t in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if t.role != expected:
            who = "human" if expected == "user" else "gpt"
            raise ValueError(f"turns must alternate human, gpt, ... (turn {i + len(turns) - len(body)} should be {who})")
    if body[-1].role != "assistant":
        raise ValueError("the last turn must be from gpt (nothing to learn otherwise)")
    return Conversation(tuple(turns), line)


def read_sharegpt(path: Path | str) -> Corpus:
    """Read every line; collect a problem for each bad one (blank lines are bad too: they hide truncation)."""
    p = Path(path)
    conversations: list[Conversation] = []
    problems: list[LineProblem] = []
    with p.open(encoding="utf-8", errors="strict") as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                text = raw.rstrip("\n")
                if not text.strip():
                    problems.append(LineProblem(number, "blank line"))
                    continue
                try:
                    conversations.append(parse_line(text, number))
                except ValueError as exc:
                    problems.append(LineProblem(number, str(exc)))
        except UnicodeDecodeError as exc:
            problems.append(LineProblem(len(conversations) + len(problems) + 1, f"not UTF-8 ({exc.reason})"))
    if not conversations and not problems:
        problems.append(LineProblem(0, "the file is empty"))
    return Corpus(p, conversations, problems)


def load_corpus(path: Path | str) -> Corpus:
    """Read and refuse a corpus with any bad line (DataError lists them all)."""
    corpus = read_sharegpt(path)
    if corpus.problems:
        raise DataError(path, corpus.problems)
    return corpus


def normalized_text(conversation: Conversation | dict[str, Any]) -> str:
    """Whitespace- and case-normalised content: the key for deduplication."""
    turns = conversation.turns if isinstance(conversation, Conversation) else parse_line(json.dumps(conversation), 0).turns
    return "\x1e".join(f"{t.role}\x1f{' '.join(t.content.split()).casefold()}" for t in turns)


def content_hash(conversation: Conversation | dict[str, Any]) -> str:
    return hashlib.sha256(normalized_text(conversation).encode()).hexdigest()


def data_hash(conversations: Iterable[Conversation]) -> str:
    """sha256 over the canonical JSON of the conversations, in order (what a manifest records)."""
    sha = hashlib.sha256()
    for conv in conversations:
        sha.update(json.dumps(conv.to_sharegpt(), sort_keys=True, ensure_ascii=False).encode())
        sha.update(b"\n")
    return sha.hexdigest()


def split_eval(conversations: Sequence[Conversation], eval_fraction: float,
               seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic train/held-out split (the quality check re-derives the same held-out set)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError("eval_fraction must be in [0, 1)")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_fraction == 0 else max(1, round(len(conversations) * eval_fraction))
    if n_eval >= len(conversations):
        raise ValueError(f"{len(conversations)} conversation(s) cannot be split with eval_fraction={eval_fraction}")
    held = set(order[:n_eval])
    train = [c for i, c in enumerate(conversations) if i not in held]
    evals = [c for i, c in enumerate(conversations) if i in held]
    return train, evals


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render with the tokenizer's chat template; return the text and the character spans of assistant answers.

    A span runs from just after the generation prompt (`[|assistant|]`) to the end of the turn marker
    (`[|endofturn|]`), so the model learns the answer and when to stop, never the prompt.
    """
    def render(msgs: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt))

    text = render(messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], True)
        upto = render(messages[: i + 1], False).rstrip("\n")
        if not text.startswith(prompt) or not upto.startswith(prompt) or not text.startswith(upto):
            raise ValueError("the chat template is not prefix-stable; cannot locate assistant turns")
        spans.append((len(prompt), len(upto)))
    return text, spans


def tokenize_conversation(tokenizer: Any, conversation: Conversation, max_length: int) -> Example | None:
    """Token ids + labels (-100 outside assistant spans); None when truncation leaves nothing to learn."""
    text, spans = assistant_spans(tokenizer, conversation.messages())
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for index, (start, end) in enumerate(encoded["offset_mapping"]):
        if any(s <= start < e for s, e in spans) and end > start:
            labels[index] = ids[index]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return Example(ids, labels)


def tokenize_all(tokenizer: Any, conversations: Sequence[Conversation], max_length: int) -> tuple[list[Example], int]:
    """Examples for every conversation and the number dropped because truncation left no answer token."""
    examples = [tokenize_conversation(tokenizer, c, max_length) for c in conversations]
    kept = [e for e in examples if e is not None]
    return kept, len(examples) - len(kept)


# ---------------------------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class Row:
    """One training row: one sample, or several packed ones (segment ids 1..k, positions reset per sample)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    segment_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def label_count(self) -> int:
        # Shifted targets: position t predicts label t+1.
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def single_rows(examples: Sequence[Example]) -> list[Row]:
    return [Row(e.input_ids, e.labels, list(range(len(e))), [1] * len(e)) for e in examples]


def pack_examples(examples: Sequence[Example], max_length: int) -> list[Row]:
    """First-fit-decreasing packing into rows of at most max_length tokens.

    The first label of every packed sample is masked so no sample is trained to predict from the previous
    one's last token; positions restart at 0 and segment ids tell the mask builder where samples end.
    """
    bins: list[list[Example]] = []
    sizes: list[int] = []
    for example in sorted(examples, key=len, reverse=True):
        for i, used in enumerate(sizes):
            if used + len(example) <= max_length:
                bins[i].append(example)
                sizes[i] += len(example)
                break
        else:
            bins.append([example])
            sizes.append(len(example))
    rows = []
    for group in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        segments: list[int] = []
        for segment, example in enumerate(group, start=1):
            ids += example.input_ids
            labels += [IGNORE_INDEX, *example.labels[1:]]
            positions += list(range(len(example)))
            segments += [segment] * len(example)
        rows.append(Row(ids, labels, positions, segments))
    return rows


def _int_tensor(values: list[list[int]]) -> Any:
    """int64 tensor from nested lists, via numpy: several times faster than torch.tensor on lists (host time
    between training steps is time the GPU waits)."""
    import torch

    return torch.from_numpy(np.asarray(values, dtype=np.int64))


def label_positions(labels: Any) -> Any:
    """Flat indices (into labels.reshape(-1)) of the counted targets: labelled, and not a row's first token."""
    import torch

    flat = labels.reshape(-1)
    index = torch.arange(flat.numel(), device=labels.device)
    return index[(flat != IGNORE_INDEX) & (index % labels.shape[-1] != 0)]


def collate(rows: Sequence[Row], pad_id: int, pad_multiple: int = 1) -> dict[str, Any]:
    """Right-padded tensors: input_ids, labels, position_ids, attention_mask (2-D), segment_ids (0 = padding) and
    label_positions (see `label_positions`).

    `pad_multiple` rounds the width up (fewer distinct shapes for torch.compile, tensor-core friendly sizes).
    """

    width = max(len(r) for r in rows)
    width = -(-width // pad_multiple) * pad_multiple

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    labels = _int_tensor([pad(r.labels, IGNORE_INDEX) for r in rows])
    return {
        "input_ids": _int_tensor([pad(r.input_ids, pad_id) for r in rows]),
        "labels": labels,
        "label_positions": label_positions(labels),
        "position_ids": _int_tensor([pad(r.position_ids, 0) for r in rows]),
        "attention_mask": _int_tensor([pad([1] * len(r), 0) for r in rows]),
        "segment_ids": _int_tensor([pad(r.segment_ids, 0) for r in rows]),
    }


def collate_flat(rows: Sequence[Row], pad_id: int, pad_multiple: int = 1) -> dict[str, Any]:
    """The rows' samples end to end in one row of width sum(lengths): no padding between samples.

    Same keys as `collate` except the 2-D mask, plus `cu_seq_lens` (int32 sample boundaries, transformers'
    padding-free convention), which the attention uses to keep every sample to itself. Each sample's first
    label is masked, so no sample is trained to predict from the previous one's last token (it never is in
    `collate` either: shifted targets start at a row's second token). `pad_multiple` adds one trailing
    padding sample (no labels) to round the width up.
    """
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    segments: list[int] = []
    bounds = [0]
    for row in rows:
        for segment in range(1, max(row.segment_ids) + 1):
            start = row.segment_ids.index(segment)
            end = start + row.segment_ids.count(segment)
            ids += row.input_ids[start:end]
            labels += [IGNORE_INDEX, *row.labels[start + 1:end]]
            positions += row.position_ids[start:end]
            segments += [len(bounds)] * (end - start)
            bounds.append(bounds[-1] + end - start)
    pad = -(-len(ids) // pad_multiple) * pad_multiple - len(ids)
    if pad:
        ids += [pad_id] * pad
        labels += [IGNORE_INDEX] * pad
        positions += list(range(pad))
        segments += [0] * pad
        bounds.append(bounds[-1] + pad)
    label_tensor = _int_tensor([labels])
    return {
        "input_ids": _int_tensor([ids]),
        "labels": label_tensor,
        "label_positions": label_positions(label_tensor),
        "position_ids": _int_tensor([positions]),
        "segment_ids": _int_tensor([segments]),
        "cu_seq_lens": torch.from_numpy(np.asarray(bounds, dtype=np.int32)),
    }


def block_causal_mask(segment_ids: Any) -> Any:
    """(B, 1, T, T) bool mask: causal, and a token sees only tokens of its own sample (padding sees itself)."""
    import torch

    t = segment_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids != 0)[:, None, :]
    eye = torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return ((causal & same & real) | eye)[:, None]
