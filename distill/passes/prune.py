"""Structured pruning of attention heads and FFN neurons with torch-pruning, hidden width kept.

The hidden width stays (embeddings, attention output and FFN output projections and LayerNorms are
ignored layers), so hidden-state distillation from the teacher still lines up after pruning. The
result is a PrunedBert model whose config records per-layer heads and FFN widths.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader

from distill.passes.flops import encoder_flops
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind
from students.modeling import attention_blocks, pruned_class_for, pruned_config_from

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnCPU:
    """Where the pass runs unless the caller says otherwise (anything with ``device``, ``autocast()`` and
    ``inputs(batch)``, e.g. the engine's Placement): the CPU, full precision."""
    device = torch.device("cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(batch)


@dataclass
class PruneReport:
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    heads_before: list[int]
    heads_after: list[int]
    ffn_before: list[int]
    ffn_after: list[int]

    def summary(self) -> str:
        return (f"params {self.params_before / 1e6:.2f}M -> {self.params_after / 1e6:.2f}M "
                f"({self.params_after / self.params_before:.1%}), encoder FLOPs@128 {self.flops_before / 1e9:.3f}G -> "
                f"{self.flops_after / 1e9:.3f}G ({self.flops_after / self.flops_before:.1%}); heads "
                f"{self.heads_before} -> {self.heads_after}; FFN {self.ffn_before} -> {self.ffn_after}")


def _shape(model: nn.Module) -> tuple[list[int], list[int]]:
    layers = model.base_model.encoder.layer
    heads = [b.query.out_features // b.attention_head_size for b in attention_blocks(model)]
    return heads, [layer.intermediate.dense.out_features for layer in layers]


def _accumulate_taylor_grads(model: nn.Module, loader: DataLoader, batches: int, place,
                             kind: TaskKind = SEQUENCE_CLASSIFICATION) -> None:
    """Gradients of the task loss over a few batches, for first-order Taylor importance |w * dL/dw|,
    on ``place``'s device and in its precision (the model is already there)."""
    model.zero_grad(set_to_none=True)
    model.eval()  # no dropout: importance of the network as it will be used
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        with place.autocast():
            targets = {k: v.to(place.device) for k, v in kind.targets(batch).items()}
            out = model(**place.inputs({k: v for k, v in batch.items() if k in MODEL_INPUTS}), **targets)
        out.loss.float().backward()


def prune_model(model: nn.Module, example: dict[str, torch.Tensor], ratio: float, importance: str = "taylor",
                loader: DataLoader | None = None, taylor_batches: int = 16,
                layer_ratios: list[float] | None = None, seq_len: int = 128,
                place=None, kind: TaskKind = SEQUENCE_CLASSIFICATION) -> tuple[nn.Module, PruneReport]:
    """Remove ``ratio`` of the heads and of the FFN neurons in every layer (or ``layer_ratios[i]``).

    The importance pass and the pruning trace run on ``place`` (default: the CPU, full precision; the
    prune stage passes its training placement). Returns a PrunedBert model with the same head (sequence or token
    classification; on the CPU) carrying the pruned
    weights, and the report."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"prune ratio must be in (0, 1), got {ratio}")
    base = model.base_model
    layers = list(base.encoder.layer)
    if layer_ratios is not None and len(layer_ratios) != len(layers):
        raise ValueError(f"prune.layer_ratios needs one ratio per layer ({len(layers)}), got {len(layer_ratios)}")
    heads_before, ffn_before = _shape(model)
    params_before = sum(p.numel() for p in model.parameters())
    flops_before = encoder_flops(model, seq_len)
    model.set_attn_implementation("eager")  # torch-pruning traces the graph; eager attention traces cleanly
    place = place or OnCPU()
    model.to(place.device)
    example = place.inputs(example)

    if importance == "taylor":
        if loader is None:
            raise ValueError("taylor importance needs task data (a loader)")
        _accumulate_taylor_grads(model, loader, taylor_batches, place, kind)
        imp = tp.importance.GroupTaylorImportance()
    elif importance == "magnitude":
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    else:
        raise ValueError(f"unknown importance {importance!r}; use taylor or magnitude")

    ignored: list[nn.Module] = [base.embeddings]
    for name in ("pooler",):
        if getattr(base, name, None) is not None:
            ignored.append(getattr(base, name))
    for head in ("classifier", "qa_outputs"):  # the task head's outputs are the task's, never pruned
        if hasattr(model, head):
            ignored.append(getattr(model, head))
    num_heads, head_ratio_dict, ratio_dict = {}, {}, {}
    for i, layer in enumerate(layers):
        ignored += [layer.attention.output.dense, layer.attention.output.LayerNorm,
                    layer.output.dense, layer.output.LayerNorm]
        attn = layer.attention.self
        r = layer_ratios[i] if layer_ratios is not None else ratio
        max_drop = (attn.num_attention_heads - 1) / attn.num_attention_heads  # keep at least one head
        for proj in (attn.query, attn.key, attn.value):
            num_heads[proj] = attn.num_attention_heads
            head_ratio_dict[proj] = min(r, max_drop)
        ratio_dict[layer.intermediate.dense] = r
        # the q/k/v group needs a ratio of its own to be considered; with prune_head_dims=False only
        # whole heads (head_ratio_dict) are removed from it
        ratio_dict[(attn.query, attn.key, attn.value)] = min(r, max_drop)

    pruner = tp.pruner.BasePruner(
        model, example, importance=imp, global_pruning=False, pruning_ratio=0.0,
        pruning_ratio_dict=ratio_dict, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=0.0, head_pruning_ratio_dict=head_ratio_dict,
        output_transform=lambda out: kind.logits(out).sum())
    pruner.step()
    model.zero_grad(set_to_none=True)
    for layer in layers:  # torch-pruning shrinks the Linear layers; the attention bookkeeping is ours
        attn = layer.attention.self
        attn.num_attention_heads = attn.query.out_features // attn.attention_head_size
        attn.all_head_size = attn.query.out_features
    pruned = _as_pruned_bert(model)
    heads_after, ffn_after = _shape(pruned)
    report = PruneReport(params_before, sum(p.numel() for p in pruned.parameters()), flops_before,
                         encoder_flops(pruned, seq_len), heads_before, heads_after, ffn_before, ffn_after)
    return pruned, report


def _as_pruned_bert(model: nn.Module) -> nn.Module:
    """Move the pruned weights into the PrunedBert class of the same head (loads with from_pretrained)."""
    config = pruned_config_from(model)
    pruned = pruned_class_for(model)(config)
    missing, unexpected = pruned.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"pruned weights do not fit the recorded shape: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return pruned.eval()
