"""EXAONE 3.5 configuration, written by this project for its test checkpoints.

It keeps the config keys of LG's published `configuration_exaone.py` (`num_layers` with
`num_hidden_layers` mapped onto it, `activation_function`, `layer_norm_epsilon`, ...), so that
transformers (`trust_remote_code=True`), PEFT and vLLM read these checkpoints as they read the real one.
"""

from transformers.configuration_utils import PretrainedConfig


class ExaoneConfig(PretrainedConfig):
    model_type = "exaone"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(
        self,
        vocab_size=102400,
        max_position_embeddings=32768,
        hidden_size=2560,
        num_layers=30,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=7168,
        activation_function="silu",
        rope_theta=1000000.0,
        rope_scaling=None,
        embed_dropout=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=1,
        eos_token_id=361,
        pad_token_id=0,
        tie_word_embeddings=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size or hidden_size * 4
        self.activation_function = activation_function
        self.rope_theta = rope_theta
        if rope_scaling is not None:
            self.rope_scaling = rope_scaling
        self.embed_dropout = embed_dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
