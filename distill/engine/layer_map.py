"""Layer maps as data: which teacher layer each student layer learns from, and with which loss.

Layers are numbered as in ``hidden_states``: 0 is the embedding output, 1..N the transformer layers.
"""
from __future__ import annotations

from dataclasses import dataclass

from distill.engine.losses import LOSSES
from distill.base.errors import InputError


class LayerMapError(InputError):
    pass


@dataclass(frozen=True)
class Match:
    loss: str  # name in distill.engine.losses.LOSSES
    student_layer: int  # 0 = embeddings, 1..M = layers, -1 = model output
    teacher_layer: int  # 0 = embeddings, 1..N = layers, -1 = model output
    weight: float


def teacher_layers(strategy: str, student_layers: int, num_teacher_layers: int,
                   explicit: list[int] | tuple[int, ...] = ()) -> list[int]:
    """Teacher layer (1-based) for each student layer m = 1..M.

    uniform: TinyBERT's g(m) = m * N / M; last: the top M teacher layers; explicit: given list."""
    m_, n_ = student_layers, num_teacher_layers
    if strategy == "uniform":
        if n_ % m_:
            return [max(1, round(m * n_ / m_)) for m in range(1, m_ + 1)]
        return [m * n_ // m_ for m in range(1, m_ + 1)]
    if strategy == "last":
        if m_ > n_:
            raise LayerMapError(f"layer_map=last needs student layers ({m_}) <= teacher layers ({n_})")
        return list(range(n_ - m_ + 1, n_ + 1))
    if strategy == "explicit":
        explicit = list(explicit)
        if len(explicit) != m_:
            raise LayerMapError(f"layer_map_list has {len(explicit)} entries but the student has {m_} layers; "
                                "give one teacher layer (1-based) per student layer")
        bad = [t for t in explicit if not 1 <= t <= n_]
        if bad:
            raise LayerMapError(f"layer_map_list entries {bad} are outside the teacher's layers 1..{n_}")
        return explicit
    raise LayerMapError(f"unknown layer map strategy {strategy!r}; use uniform, last or explicit")


def build_layer_map(losses: dict[str, float], strategy: str, student_layers: int, num_teacher_layers: int,
                    explicit: list[int] | tuple[int, ...] = ()) -> list[Match]:
    """Expand {loss: weight} into Matches; zero-weight losses are still computed (and logged)."""
    pairs = list(zip(range(1, student_layers + 1),
                     teacher_layers(strategy, student_layers, num_teacher_layers, explicit)))
    matches = []
    for name, weight in losses.items():
        if name not in LOSSES:
            raise LayerMapError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
        scope = LOSSES[name].scope
        if scope == "embedding":
            matches.append(Match(name, 0, 0, weight))
        elif scope == "layers":
            matches += [Match(name, s, t, weight) for s, t in pairs]
        elif scope == "last":
            matches.append(Match(name, student_layers, num_teacher_layers, weight))
        else:
            matches.append(Match(name, -1, -1, weight))
    return matches


def describe(matches: list[Match]) -> str:
    rows = [f"  {m.loss:<22} student {m.student_layer:>2} <- teacher {m.teacher_layer:>2}  weight {m.weight:g}"
            for m in matches if m.student_layer >= 0]
    rows += [f"  {m.loss:<22} output            weight {m.weight:g}" for m in matches if m.student_layer < 0]
    return "\n".join(rows)
