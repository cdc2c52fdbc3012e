"""Where, and in what precision, a model pass runs: one rule for every pass.

Training runs on the accelerator's device under its autocast (the trainer). Passes outside the
training loop (teacher-logit caching, MLM augmentation, Taylor importance) ask ``placement`` with
the same ``mixed_precision`` key their stage trains with, so a GPU machine runs every heavy pass on
the GPU, in the same precision as training.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from distill.base.ranks import process_state

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device  # this process's accelerator (cuda:<local rank>, mps, or cpu)
    dtype: torch.dtype | None  # autocast dtype; None = full precision

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}


def resolve_precision(mode: str) -> str:
    """auto: bf16 on a CUDA card that has it, else fp16 on CUDA, else full precision (no)."""
    if mode != "auto":
        return mode
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def resolve_attention(mode: str, device: torch.device) -> str:
    """auto: PyTorch's fused attention (sdpa) on CUDA, where it pays most; eager elsewhere, which keeps the
    CPU reference figures bit-identical. Training never needs eager: attention losses read queries and keys
    through hooks (distill.engine.features), so no stage asks the model for its attention maps."""
    if mode != "auto":
        return mode
    return "sdpa" if device.type == "cuda" else "eager"


def use_attention(model: nn.Module, kernel: str) -> str:
    """Every Hugging Face model inside ``model`` runs ``kernel`` attention; returns the kernel it runs (a model
    class without sdpa support keeps eager)."""
    ran = kernel
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "set_attn_implementation") and getattr(config, "_attn_implementation", kernel) != kernel:
            try:
                module.set_attn_implementation(kernel)
            except (ValueError, ImportError):
                ran = getattr(config, "_attn_implementation", "eager")
    return ran


def placement(mixed_precision: str) -> Placement:
    """The device accelerate gives this process and the autocast dtype of ``mixed_precision``
    (auto | no | bf16 | fp16, resolved as the trainer resolves it)."""
    return Placement(process_state().device, AUTOCAST_DTYPES[resolve_precision(mixed_precision)])


@contextlib.contextmanager
def borrowed(model: nn.Module, place: Placement) -> Iterator[nn.Module]:
    """``model`` in eval mode on ``place``'s device for the block, then given back as it was: on its own
    device again (a model moved to the GPU and left there fails on the caller's CPU tensors) and with
    each module's own train/eval mode."""
    modes = [(module, module.training) for module in model.modules()]
    home = next(itertools.chain(model.parameters(), model.buffers()), None)
    home = home.device if home is not None else None
    model.eval().to(place.device)
    try:
        yield model
    finally:
        if home is not None:
            model.to(home)
        for module, training in modes:
            module.training = training
