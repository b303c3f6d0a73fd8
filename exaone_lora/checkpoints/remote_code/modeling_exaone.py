"""A Llama-like decoder under EXAONE 3.5's module names, written by this project for its test checkpoints.

transformers 5.x ships no EXAONE 3.5 model class, and the real remote code cannot be downloaded here,
so CPU training tests load this file through `trust_remote_code=True`. The parameter names are the
real ones (`transformer.wte`, `transformer.h.N.attn.attention.q_proj`, `mlp.c_fc_0`, `ln_1`, ...), so
PEFT targets and saves exactly the tensors an adapter of the real model has. No KV cache: it exists to
train and score, not to generate.

Like the real remote code under transformers 5.x, it defines no `get_input_embeddings`; callers that
need it (PEFT with gradient checkpointing, TRL) must apply the same fix they apply to the real model.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_exaone import ExaoneConfig


class ExaoneRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _varlen_setup():
    """torch's variable-length FlashAttention (torch >= 2.10) and how this torch spells its options, or None."""
    import inspect

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    # torch 2.10 takes is_causal; 2.11 spells causal as a window: everything to the left, nothing to the right.
    options: dict = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "enable_gqa" in params:
        options["enable_gqa"] = True
    return varlen_attn, options


_VARLEN = _varlen_setup()


def _varlen_attention(q, k, v, cu_seq_lens, max_length, dropout=0.0):
    """Causal attention within each sample of one flattened row: (1, heads, T, d) in, (1, heads, T, d) out.

    On CUDA, FlashAttention's variable-length kernel (no padding, no mask); elsewhere (CPU tests) SDPA under
    the equivalent block-diagonal causal mask.
    """
    groups = q.shape[1] // k.shape[1]
    if q.is_cuda and dropout == 0.0 and _VARLEN is not None:
        kernel, options = _VARLEN
        if groups > 1 and "enable_gqa" not in options:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (q, k, v))
        return kernel(q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, **options).transpose(0, 1)[None]
    t = q.shape[2]
    positions = torch.arange(t, device=q.device)
    sample = torch.searchsorted(cu_seq_lens[1:].to(positions.dtype), positions, right=True)
    mask = (sample[:, None] == sample[None, :]) & (positions[:, None] >= positions[None, :])
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None], dropout_p=dropout)


class ExaoneRotaryEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dim = config.head_dim
        self.theta = config.rope_theta

    def forward(self, position_ids, dtype):
        # Computed here, not kept as a non-persistent buffer: transformers 5 builds the model on the meta device
        # and loads only the checkpoint's tensors, so such a buffer would hold uninitialised memory.
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float32, device=position_ids.device) / self.dim
        freqs = position_ids[..., None].float() * (1.0 / self.theta ** exponents)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


class ExaoneSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=False)
        self.dropout = config.attention_dropout

    def forward(self, hidden_states, cos, sin, mask, varlen=None):
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        dropout = self.dropout if self.training else 0.0
        if varlen is not None:
            cu_seq_lens, max_length = varlen
            out = _varlen_attention(q, k, v, cu_seq_lens, max_length, dropout=dropout)
        elif mask is None:
            # No mask (no padding, or right padding, where a causal mask already hides it): SDPA may pick its
            # FlashAttention kernel, which reads the grouped K/V heads directly.
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=True)
        else:
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class ExaoneAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = ExaoneSelfAttention(config)

    def forward(self, hidden_states, cos, sin, mask, varlen=None):
        return self.attention(hidden_states, cos, sin, mask, varlen)


class ExaoneGatedMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc_0 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.c_fc_1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.c_proj(F.silu(self.c_fc_0(x)) * self.c_fc_1(x))


class ExaoneBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = ExaoneRMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = ExaoneAttention(config)
        self.ln_2 = ExaoneRMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = ExaoneGatedMLP(config)

    def forward(self, hidden_states, cos, sin, mask, varlen=None):
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), cos, sin, mask, varlen)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class ExaonePreTrainedModel(PreTrainedModel):
    config_class = ExaoneConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ExaoneBlock"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, ExaoneRMSNorm):
            module.weight.data.fill_(1.0)


class ExaoneModel(ExaonePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.drop = nn.Dropout(config.embed_dropout)
        self.h = nn.ModuleList([ExaoneBlock(config) for _ in range(config.num_layers)])
        self.ln_f = ExaoneRMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.rotary = ExaoneRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                cu_seq_lens_q=None, max_length_q=None, **kwargs):
        """`cu_seq_lens_q` (int32 sample boundaries, transformers' padding-free convention) with `max_length_q`
        (an upper bound on one sample's length) make attention per sample over a batch of one flattened row."""
        if cu_seq_lens_q is not None and (attention_mask is not None or max_length_q is None):
            raise ValueError("cu_seq_lens_q needs max_length_q and excludes attention_mask")
        varlen = None if cu_seq_lens_q is None else (cu_seq_lens_q, int(max_length_q))
        hidden_states = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = hidden_states.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(t, device=hidden_states.device).expand(b, t)
        cos, sin = self.rotary(position_ids, hidden_states.dtype)
        mask = None
        if attention_mask is not None:
            causal = torch.ones(t, t, dtype=torch.bool, device=hidden_states.device).tril()
            mask = causal[None, None] & attention_mask[:, None, None, :].bool()
            # A padded query row would see no key at all (NaN); let every token see itself.
            mask = mask | torch.eye(t, dtype=torch.bool, device=hidden_states.device)
        hidden_states = self.drop(hidden_states)
        for block in self.h:
            if self.gradient_checkpointing and self.training:
                hidden_states = checkpoint(block, hidden_states, cos, sin, mask, varlen, use_reentrant=False)
            else:
                hidden_states = block(hidden_states, cos, sin, mask, varlen)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden_states))


class ExaoneForCausalLM(ExaonePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.transformer = ExaoneModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, **kwargs):
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, **kwargs,
        ).last_hidden_state
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)
