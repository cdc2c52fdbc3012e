"""What distillation compares: embeddings, hidden states, attention queries/keys/values, logits.

Queries, keys and values are taken with forward hooks on each self-attention block's projections,
so attention scores are available before the softmax (TinyBERT) whatever attention kernel runs, and
pruned layers with their own head counts work unchanged.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from distill.engine.unpad import PackedRows
from students.modeling import attention_blocks


@dataclass
class LayerAttention:
    query: torch.Tensor  # (batch, seq, heads * head_dim)
    key: torch.Tensor  # (batch, seq, heads * head_dim)
    value: torch.Tensor  # (batch, seq, heads * head_dim)
    heads: int

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # (batch, heads, seq, head_dim)

    def scores(self) -> torch.Tensor:
        """Pre-softmax attention scores in float32, no mask applied: (batch, heads, seq, seq).

        Under mixed precision the student's q/k arrive in bf16/fp16 (and the teacher's may not): both
        are cast up and multiplied with autocast off, so the two maps compared are equally exact."""
        q, k = self.split(self.query.float()), self.split(self.key.float())
        with torch.autocast(q.device.type, enabled=False):
            return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (batch, heads, seq, seq)


@dataclass
class Features:
    hidden: tuple[torch.Tensor, ...]  # embeddings output + one per layer, each (batch, seq, hidden)
    attention: list[LayerAttention] = field(default_factory=list)  # one per layer when tapped
    logits: torch.Tensor | None = None  # (batch, labels) or MLM (batch, seq, vocab)


def num_heads(block: nn.Module) -> int:
    for name in ("num_attention_heads", "num_heads"):
        if hasattr(block, name):
            return int(getattr(block, name))
    return int(block.config.num_attention_heads)


class FeatureTap:
    """Runs a model and returns its Features; hooks record q/k/v when ``attention`` is True."""

    def __init__(self, model: nn.Module, attention: bool, logits_of=None, unpad: bool = False):
        """``logits_of(output)``: the logits from the model's output (the task kind's; default ``.logits``).
        ``unpad``: token-wise linears skip padded positions (distill.engine.unpad): the same values at real tokens,
        zeros in q/k/v at padded ones (what a masked loss never reads), so off unless the caller masks."""
        self.model = model
        self.attention = attention
        self.logits_of = logits_of
        self._store: dict[tuple[int, str], torch.Tensor] = {}
        self._handles = []
        self.blocks = attention_blocks(model)
        self.packer = PackedRows(model) if unpad else None
        if attention:
            for i, block in enumerate(self.blocks):
                for name in ("query", "key", "value"):
                    self._handles.append(getattr(block, name).register_forward_hook(self._hook(i, name)))

    def _hook(self, layer: int, name: str):
        def record(_module, _inputs, output):
            self._store[(layer, name)] = output
        return record

    def __call__(self, inputs: dict[str, torch.Tensor], runner: nn.Module | None = None) -> Features:
        """``runner`` (e.g. a DDP-wrapped module around the model) is called instead of the model."""
        self._store.clear()
        mask = inputs.get("attention_mask")
        with self.packer.active(mask) if self.packer is not None and mask is not None else nullcontext():
            if runner is not None:
                out = runner(**inputs)
            else:
                out = self.model(**inputs, output_hidden_states=True, return_dict=True)
        attention = []
        if self.attention:
            attention = [LayerAttention(self._store[(i, "query")], self._store[(i, "key")],
                                        self._store[(i, "value")], num_heads(block))
                         for i, block in enumerate(self.blocks)]
            self._store.clear()
        hidden = out.hidden_states
        logits = self.logits_of(out) if self.logits_of is not None else getattr(out, "logits", None)
        return Features(hidden=tuple(hidden), attention=attention, logits=logits)

    def remove(self) -> None:
        if self.packer is not None:
            self.packer.remove()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
