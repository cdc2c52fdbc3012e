"""Where, and in what precision, a model pass runs: one rule for every pass.

Training runs on the accelerator's device under its autocast (the trainer). Passes outside the
training loop (teacher-logit caching, MLM augmentation, Taylor importance) ask ``placement`` with
the same ``mixed_precision`` key their stage trains with, so a GPU machine runs every heavy pass on
the GPU, in the same precision as training.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from accelerate import PartialState

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


def placement(mixed_precision: str) -> Placement:
    """The device accelerate gives this process and the autocast dtype of ``mixed_precision``
    (auto | no | bf16 | fp16, resolved as the trainer resolves it)."""
    return Placement(PartialState().device, AUTOCAST_DTYPES[resolve_precision(mixed_precision)])
