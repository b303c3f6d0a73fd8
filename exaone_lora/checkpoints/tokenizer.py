"""A byte-level BPE tokenizer with EXAONE 3.5's special tokens and chat template, trained locally."""

from __future__ import annotations

import json
from pathlib import Path

# EXAONE 3.5's template (tokenizer_config.json of the published model): a system turn always comes
# first, user turns end with a newline, other turns with [|endofturn|].
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}{% endif %}"
    "{{ '[|' + message['role'] + '|]' + message['content'] }}"
    "{% if message['role'] == 'user' %}{{ '\\n' }}{% else %}{{ '[|endofturn|]\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
)
PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[|endofturn|]", "[UNK]"
SPECIAL_TOKENS = [PAD, BOS, "[|endoftext|]", UNK, "[|system|]", "[|user|]", "[|assistant|]", EOS]

_SUBJECTS = {
    "medical": ["Type 2 diabetes", "hypertension", "asthma", "a migraine", "the flu", "high cholesterol"],
    "legal": ["a rental contract", "civil law", "criminal law", "a will", "a trademark", "an employment dispute"],
    "customer_support": ["a late order", "a refund", "a broken item", "a password reset", "an invoice", "a delivery"],
    "code": ["binary search", "a Python list", "a REST API", "unit tests", "a SQL query", "a hash map"],
}
_FRAMES = [
    "What should I know about {s}?",
    "Please explain {s} in simple terms.",
    "How do I deal with {s}, step by step?",
    "Common questions about {s} and their answers.",
    "A short, careful answer about {s}: first check the facts, then act.",
]


def training_corpus() -> list[str]:
    """Deterministic text covering the four demo domains, the chat markup and plain ASCII."""
    lines = [frame.format(s=s) for subjects in _SUBJECTS.values() for s in subjects for frame in _FRAMES]
    lines += ["".join(chr(c) for c in range(32, 127))]
    return lines


def write_tokenizer(out_dir: Path, vocab_size: int, model_max_length: int) -> int:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; return the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus() * 4, trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return int(tokenizer.get_vocab_size())


def token_id(out_dir: Path, token: str) -> int:
    vocab = json.loads((out_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return int(vocab[token])
