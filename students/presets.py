"""Student shapes by name. Numbers follow the papers that introduced them."""
from __future__ import annotations

from dataclasses import dataclass

from distill.base.errors import InputError


@dataclass(frozen=True)
class StudentShape:
    layers: int
    hidden: int
    heads: int
    ffn: int

    def __post_init__(self) -> None:
        if min(self.layers, self.hidden, self.heads, self.ffn) <= 0:
            raise InputError(f"student shape must be positive, got {self}")
        if self.hidden % self.heads:
            raise InputError(f"student hidden width {self.hidden} is not divisible by {self.heads} heads; "
                             "change student.hidden or student.heads")


PRESETS: dict[str, StudentShape] = {
    "tinybert-4l-312": StudentShape(layers=4, hidden=312, heads=12, ffn=1200),  # TinyBERT-4 (Jiao et al. 2020)
    "tinybert-6l-768": StudentShape(layers=6, hidden=768, heads=12, ffn=3072),  # TinyBERT-6
    "distilbert-6l-768": StudentShape(layers=6, hidden=768, heads=12, ffn=3072),  # DistilBERT (Sanh et al. 2019)
}


def resolve_shape(preset: str, layers: int = 0, hidden: int = 0, heads: int = 0, ffn: int = 0) -> StudentShape:
    """A preset with any non-zero field overridden; ``preset='custom'`` needs all four."""
    base = PRESETS.get(preset)
    if base is None and preset != "custom":
        raise InputError(f"unknown student preset {preset!r}; choose one of {sorted(PRESETS)} or custom")
    if base is None:
        return StudentShape(layers, hidden, heads, ffn)
    return StudentShape(layers or base.layers, hidden or base.hidden, heads or base.heads, ffn or base.ffn)
