"""Model facts as data: the shapes the planner, the adapter validator and the checkpoint factory share."""

from __future__ import annotations

from dataclasses import dataclass

# The seven linear modules of an EXAONE 3.5 decoder layer, in the order PEFT lists them.
ATTENTION_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_MODULES: tuple[str, ...] = ("c_fc_0", "c_fc_1", "c_proj")
ALL_LINEAR_MODULES: tuple[str, ...] = ATTENTION_MODULES + MLP_MODULES


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of an EXAONE-architecture decoder (names follow EXAONE's config keys)."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linear_shape(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of one linear module of a decoder layer."""
        h, kv, inter = self.hidden_size, self.kv_dim, self.intermediate_size
        shapes = {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "out_proj": (h, h),
            "c_fc_0": (h, inter),
            "c_fc_1": (h, inter),
            "c_proj": (inter, h),
        }
        try:
            return shapes[module]
        except KeyError:
            raise ValueError(f"{module!r} is not an EXAONE linear module ({', '.join(ALL_LINEAR_MODULES)})") from None

    def parameter_count(self) -> int:
        per_layer = sum(i * o for i, o in map(self.linear_shape, ALL_LINEAR_MODULES)) + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embeddings
        return embeddings + self.num_layers * per_layer + self.hidden_size + lm_head

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.parameter_count() * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def lora_parameter_count(self, rank: int, modules: tuple[str, ...] | list[str] = ALL_LINEAR_MODULES) -> int:
        per_layer = sum(rank * (i + o) for i, o in map(self.linear_shape, modules))
        return per_layer * self.num_layers

    def lora_bytes(self, rank: int, modules: tuple[str, ...] | list[str] = ALL_LINEAR_MODULES,
                   dtype_bytes: int = 2) -> int:
        return self.lora_parameter_count(rank, modules) * dtype_bytes


EXAONE_3_5_2_4B = ModelShape(
    name="LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
    vocab_size=102_400,
    hidden_size=2560,
    num_layers=30,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=7168,
)

# Small enough for CPU tests and the CPU build of vLLM, with every real name and ratio kept.
EXAONE_TINY = ModelShape(
    name="exaone-tiny-random",
    vocab_size=4096,
    hidden_size=128,
    num_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=2048,
)

SHAPES: dict[str, ModelShape] = {"full": EXAONE_3_5_2_4B, "tiny": EXAONE_TINY}
