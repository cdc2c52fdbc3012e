"""Encoder FLOPs of BERT-style models, read from the modules themselves (so pruned shapes count right).

Per layer and sequence of S tokens, with width D, attention width A = heads * head_dim and FFN width F:
  Q, K, V projections 3*S*D*A, attention output S*A*D, scores S*S*A, context S*S*A, FFN 2*S*D*F
multiply-accumulates; FLOPs = 2 * MACs. Embedding lookups, LayerNorm, softmax and the task head are
left out (they are a few percent at most and the same in spirit for teacher and student).
"""
from __future__ import annotations

from torch import nn

from students.modeling import attention_blocks


def _encoder_layers(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "base_model", model)
    return list(base.encoder.layer)


def layer_flops(seq_len: int, d_model: int, attn: int, ffn: int) -> int:
    """FLOPs of one encoder layer over one sequence of ``seq_len`` tokens (formula in the module docstring)."""
    macs = 3 * seq_len * d_model * attn + seq_len * attn * d_model + 2 * seq_len * seq_len * attn
    macs += 2 * seq_len * d_model * ffn
    return 2 * macs


def encoder_flops(model: nn.Module, seq_len: int = 128) -> int:
    """FLOPs of one forward pass of the encoder over one sequence of ``seq_len`` tokens."""
    total = 0
    blocks = attention_blocks(model)
    for layer, block in zip(_encoder_layers(model), blocks):
        total += layer_flops(seq_len, block.query.in_features, block.query.out_features,
                             layer.intermediate.dense.out_features)
    return total


def config_encoder_flops(config, seq_len: int) -> int:
    """The same count from a model config alone (no weights): uniform layers of a BERT-style config."""
    attn = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_layer = layer_flops(seq_len, config.hidden_size, attn * config.num_attention_heads, config.intermediate_size)
    return config.num_hidden_layers * per_layer
