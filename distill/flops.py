"""Encoder FLOPs of BERT-style models, read from the modules themselves (so pruned shapes count right).

Per layer and sequence of S tokens, with width D, attention width A = heads * head_dim and FFN width F:
  Q, K, V projections 3*S*D*A, attention output S*A*D, scores S*S*A, context S*S*A, FFN 2*S*D*F
multiply-accumulates; FLOPs = 2 * MACs. Embedding lookups, LayerNorm, softmax and the task head are
left out (they are a few percent at most and the same in spirit for teacher and student).
"""
from __future__ import annotations

from torch import nn

from distill.features import attention_blocks


def _encoder_layers(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "base_model", model)
    return list(base.encoder.layer)


def encoder_flops(model: nn.Module, seq_len: int = 128) -> int:
    """FLOPs of one forward pass of the encoder over one sequence of ``seq_len`` tokens."""
    total = 0
    blocks = attention_blocks(model)
    for layer, block in zip(_encoder_layers(model), blocks):
        d_model = block.query.in_features
        attn = block.query.out_features
        ffn = layer.intermediate.dense.out_features
        macs = 3 * seq_len * d_model * attn + seq_len * attn * d_model + 2 * seq_len * seq_len * attn
        macs += 2 * seq_len * d_model * ffn
        total += 2 * macs
    return total
