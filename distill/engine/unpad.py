"""Token-wise linear layers on real tokens only: the padding in a batch costs no matrix multiplies.

A BERT layer's six linear layers (query, key, value, attention output, FFN in and out) act on each
token alone, and they are most of its FLOPs. In a batch padded to its longest example a large share of
positions is padding (48% in the Rotten Tomatoes benchmark batches), whose outputs no loss reads. While
a ``PackedRows`` is active, forward hooks feed those layers only the real tokens' rows, (n_real, width),
and put the results back in the padded layout, (batch, seq, width), with zeros at padded positions. The
attention itself, dropout, residuals and LayerNorms see the usual padded tensors (same shapes, so the
same dropout draws), and every real token's value is what the padded computation gives: padded keys are
masked out of the attention, and the FFN runs packed from its input to its output.

Outside ``active`` the hooks do nothing, so evaluation and export see the plain model.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

# Run packing only when at least this share of positions is padding: below it, the gathers and
# scatters cost about what they save.
MIN_PADDING_SHARE = 0.1


def _linear(module: nn.Module, *path: str) -> nn.Linear | None:
    for name in path:
        module = getattr(module, name, None)
    return module if isinstance(module, nn.Linear) else None


def bert_layers(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """Per encoder layer, its token-wise linears: q, k, v, attention out, FFN in, FFN out (BERT layout)."""
    layers = []
    for module in model.modules():
        found = {"query": _linear(module, "attention", "self", "query"),
                 "key": _linear(module, "attention", "self", "key"),
                 "value": _linear(module, "attention", "self", "value"),
                 "attention_out": _linear(module, "attention", "output", "dense"),
                 "ffn_in": _linear(module, "intermediate", "dense"),
                 "ffn_out": _linear(module, "output", "dense")}
        if all(found.values()):
            layers.append(found)
    return layers


class PackedRows:
    """Hooks on a BERT model's token-wise linears; packing happens only inside ``active(mask)``."""

    def __init__(self, model: nn.Module):
        self.layers = bert_layers(model)
        self._rows: torch.Tensor | None = None  # (n_real,) indices into batch * seq
        self._shape: tuple[int, int] | None = None  # (batch, seq)
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None  # (padded input, its packed rows)
        self._handles = []
        for layer in self.layers:
            for name in ("query", "key", "value", "attention_out", "ffn_in"):
                self._handles.append(layer[name].register_forward_pre_hook(self._gather))
            for name in ("query", "key", "value", "attention_out", "ffn_out"):
                # prepend: any hook registered earlier (e.g. FeatureTap's q/k/v records) sees the padded layout
                self._handles.append(layer[name].register_forward_hook(self._scatter, prepend=True))

    @property
    def enabled(self) -> bool:
        return bool(self.layers)

    @contextmanager
    def active(self, attention_mask: torch.Tensor):
        """Pack while the model runs on a batch with this (batch, seq) mask, when padding makes it pay."""
        if attention_mask.dim() != 2:  # a (b, s, s) document mask of packed sequences: little padding, left as is
            yield False
            return
        flat = attention_mask.reshape(-1)
        real = int(flat.count_nonzero())  # one host sync per forward pass
        if not self.layers or real > (1.0 - MIN_PADDING_SHARE) * flat.numel():
            yield False
            return
        self._rows = flat.nonzero().squeeze(1)  # (n_real,)
        self._shape = tuple(attention_mask.shape)
        try:
            yield True
        finally:
            self._rows, self._shape, self._gathered = None, None, None

    def _gather(self, _module, args):
        if self._rows is None:
            return None
        x = args[0]
        if x.dim() == 2:  # FFN out's input: already packed by FFN in
            return None
        if self._gathered is not None and self._gathered[0] is x:  # q, k and v share one input
            return (self._gathered[1],) + tuple(args[1:])
        packed = x.reshape(-1, x.shape[-1]).index_select(0, self._rows)  # (n_real, width)
        self._gathered = (x, packed)
        return (packed,) + tuple(args[1:])

    def _scatter(self, _module, _args, output):
        if self._rows is None or output.dim() != 2:
            return None
        batch, seq = self._shape
        full = output.new_zeros(batch * seq, output.shape[-1]).index_copy(0, self._rows, output)
        return full.view(batch, seq, output.shape[-1])  # (batch, seq, width)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
