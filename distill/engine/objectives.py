"""Objectives handed to the training loop: plain fine-tuning, and distillation driven by a layer map."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.engine.batching import to_model_inputs
from distill.engine.features import Features, FeatureTap, num_heads
from students.modeling import attention_blocks
from distill.engine.layer_map import LayerMapError, Match
from distill.engine.losses import LOSSES
from distill.engine.placement import Placement
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind

ATTENTION_FEATURES = ("scores", "query_key", "value")


class FineTuneObjective:
    """Supervised fine-tuning with the model's own loss (cross-entropy, MSE for regression, start/end CE
    for QA); the task kind names the model's target arguments."""

    def __init__(self, model: nn.Module, kind: TaskKind = SEQUENCE_CLASSIFICATION):
        self.trainable = model
        self.kind = kind

    def to(self, device: torch.device) -> "FineTuneObjective":
        self.trainable.to(device)
        return self

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.trainable(**to_model_inputs(batch), **self.kind.targets(batch))
        return out.loss, {"task_loss": float(out.loss.detach())}


def save_projections(projections: nn.ModuleDict, path: Path) -> None:
    """Trained student->teacher projections as safetensors (a file of their own, never in the student's
    weights), replaced atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()}, str(tmp))
    tmp.replace(path)


class StudentWithProjections(nn.Module):
    """What the optimiser updates in distillation: the student and the student->teacher projections
    (the projections are trained with the student but never saved into its weights)."""

    def __init__(self, student: nn.Module, projections: nn.ModuleDict):
        super().__init__()
        self.student = student
        self.projections = projections

    def forward(self, **inputs):
        return self.student(**inputs, output_hidden_states=True, return_dict=True)


def _widths(model: nn.Module) -> tuple[int, int, list[int]]:
    """(hidden width, number of layers, heads per layer)."""
    blocks = attention_blocks(model)
    return model.config.hidden_size, len(blocks), [num_heads(b) for b in blocks]


def relation_heads(student_width: int, teacher_width: int, teacher_heads: int) -> int:
    """Relation heads for attention/value KL: the teacher's head count when both widths allow it."""
    for r in range(teacher_heads, 0, -1):
        if student_width % r == 0 and teacher_width % r == 0:
            return r
    return 1


def _attention_width(tap: FeatureTap, layer: int) -> int:
    return tap.blocks[layer].query.out_features


def _task_mismatch(loss: str, model: nn.Module) -> str | None:
    """Why an output loss cannot run on this model's head (None when it can)."""
    wanted = LOSSES[loss].task
    if wanted == "any" or not hasattr(model, "classifier"):
        return None
    regression = model.config.num_labels == 1
    if wanted == "classification" and regression:
        return f"{loss} needs class probabilities but the student has a 1-output regression head; use logits_mse/hard_mse"
    if wanted == "regression" and not regression:
        return f"{loss} needs a 1-output regression head but the student has {model.config.num_labels} classes"
    return None


class DistillObjective:
    """Teacher (eval, no grad) and student run on the same batch; each Match adds weight * loss.

    A zero-weight term is still computed and logged when it can be, and left out when it cannot
    (e.g. hard_ce on a regression head); a weighted term that cannot be computed is refused here."""

    def __init__(self, student: nn.Module, teacher: nn.Module, matches: list[Match], temperature: float = 1.0,
                 kind: TaskKind | None = None, unpad: bool = True):
        self.teacher = teacher.eval().requires_grad_(False)
        _fused_attention(teacher)
        self.kind = kind  # the task kind says over which positions prediction-layer losses average
        self.skipped = [m for m in matches if m.weight == 0 and _task_mismatch(m.loss, student)]
        matches = [m for m in matches if m not in self.skipped]
        self.matches = matches
        self.temperature = temperature
        s_width, s_layers, s_heads = _widths(student)
        t_width, t_layers, t_heads = _widths(teacher)
        self._check(matches, s_layers, t_layers, s_heads, t_heads, student, teacher)
        projections = nn.ModuleDict()
        if s_width != t_width:
            for m in matches:
                if LOSSES[m.loss].projectable:
                    key = "embedding" if m.student_layer == 0 else "hidden"
                    if key not in projections:
                        projections[key] = nn.Linear(s_width, t_width)
        self.projections = projections
        self.trainable = StudentWithProjections(student, projections)
        need_attention = any(LOSSES[m.loss].feature in ATTENTION_FEATURES for m in matches)
        # prediction-layer only: precomputed teacher logits in the batch replace the teacher's forward pass
        self.output_only = all(LOSSES[m.loss].feature in ("logits", "labels") for m in matches)
        logits_of = kind.logits if kind is not None else None  # e.g. QA: start and end stacked
        # unpad: both models' token-wise linears skip padded positions (distill.engine.unpad); losses unchanged
        self.student_tap = FeatureTap(student, attention=need_attention, logits_of=logits_of, unpad=unpad)
        self.teacher_tap = FeatureTap(teacher, attention=need_attention, logits_of=logits_of, unpad=unpad)
        self.feature_cache = None  # distill.engine.feature_cache: the teacher's features read from disk instead
        self._uncached: frozenset[Match] = frozenset()
        self.relation_heads = {}
        for m in matches:
            if LOSSES[m.loss].feature in ("query_key", "value"):
                self.relation_heads[m] = relation_heads(_attention_width(self.student_tap, m.student_layer - 1),
                                                        _attention_width(self.teacher_tap, m.teacher_layer - 1),
                                                        t_heads[m.teacher_layer - 1])

    @staticmethod
    def _check(matches, s_layers, t_layers, s_heads, t_heads, student, teacher) -> None:
        """Every match must be computable on these two models, before any step runs."""
        for m in matches:
            if m.student_layer > s_layers or m.teacher_layer > t_layers:
                raise LayerMapError(f"{m.loss}: student layer {m.student_layer} / teacher layer {m.teacher_layer} "
                                    f"out of range (student has {s_layers}, teacher {t_layers})")
            spec = LOSSES[m.loss]
            problem = _task_mismatch(m.loss, student)
            if problem:
                raise LayerMapError(problem)
            if spec.feature == "scores" and s_heads[m.student_layer - 1] != t_heads[m.teacher_layer - 1]:
                raise LayerMapError(
                    f"attention_scores_mse: student layer {m.student_layer} has {s_heads[m.student_layer - 1]} heads, "
                    f"teacher layer {m.teacher_layer} has {t_heads[m.teacher_layer - 1]}; use attention_kl, which "
                    "works across head counts")
            if spec.feature in ("logits", "mlm_logits"):
                s_out = _output_size(student)
                t_out = _output_size(teacher)
                if s_out is None or t_out is None or s_out != t_out:
                    raise LayerMapError(f"{m.loss}: student outputs {s_out} and teacher outputs {t_out} must match "
                                        "(does the teacher have a task or MLM head?)")

    def load_projections(self, path: Path) -> list[str]:
        """Start from an earlier stage's trained projections where their shapes fit; returns what was loaded."""
        path = Path(path)
        if not len(self.projections) or not path.is_file():
            return []
        saved = load_file(str(path))
        loaded = []
        for name, module in self.projections.items():
            own = module.state_dict()
            theirs = {k: saved.get(f"{name}.{k}") for k in own}
            if all(v is not None and v.shape == own[k].shape for k, v in theirs.items()):
                module.load_state_dict(theirs)
                loaded.append(name)
        return sorted(loaded)

    def use_feature_cache(self, cache) -> list[Match]:
        """Read the teacher's features from ``cache`` (a distill.engine.feature_cache.FeatureCache) for batches
        that carry example ids; returns the zero-weight matches it cannot serve (left out while it is used)."""
        from distill.engine.feature_cache import covers

        uncached = [m for m in self.matches if not covers(cache.layout, m)]
        if any(m.weight > 0 for m in uncached):
            raise ValueError(f"the teacher feature cache {cache.folder} lacks features of weighted terms "
                             f"{sorted({m.loss for m in uncached if m.weight > 0})}")
        self.feature_cache, self._uncached = cache, frozenset(uncached)
        return uncached

    def to(self, device: torch.device) -> "DistillObjective":
        self.teacher.to(device)
        self.trainable.to(device)
        return self

    def _pair(self, m: Match, s, t, batch: dict[str, torch.Tensor]):
        feature = LOSSES[m.loss].feature
        if feature == "hidden":
            student = s.hidden[m.student_layer]
            if self.projections:
                key = "embedding" if m.student_layer == 0 else "hidden"
                if key in self.projections:
                    student = self.projections[key](student)
            return student, t.hidden[m.teacher_layer]
        if feature == "scores":
            return s.attention[m.student_layer - 1].scores(), t.attention[m.teacher_layer - 1].scores()
        if feature == "query_key":
            sa, ta = s.attention[m.student_layer - 1], t.attention[m.teacher_layer - 1]
            return (sa.query, sa.key), (ta.query, ta.key)
        if feature == "value":
            return s.attention[m.student_layer - 1].value, t.attention[m.teacher_layer - 1].value
        if feature in ("logits", "mlm_logits"):
            return s.logits, t.logits
        if feature == "labels":
            return s.logits, batch["labels"]
        if feature == "mlm_labels":
            return s.logits, batch["mlm_labels"]
        raise ValueError(f"unknown feature {feature!r}")

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = to_model_inputs(batch)
        mask = batch["attention_mask"]
        cached = self.feature_cache is not None and "example_id" in batch
        if self.output_only and "teacher_logits" in batch:
            t = Features(hidden=(), logits=batch["teacher_logits"])
        elif cached:
            t = self.feature_cache.features(batch)
        else:
            with torch.no_grad():
                t = self.teacher_tap(inputs)
        s = self.student_tap(inputs, runner=self.trainable)
        total = torch.zeros((), device=mask.device)
        values: list[tuple[Match, torch.Tensor]] = []
        for m in self.matches:
            if cached and m in self._uncached:
                continue
            spec = LOSSES[m.loss]
            student, teacher = self._pair(m, s, t, batch)
            loss_mask = mask
            if spec.feature in ("logits", "labels") and self.kind is not None:  # the kind shapes prediction losses
                student, teacher, loss_mask = self.kind.loss_inputs(student, teacher, batch, spec.feature)
            elif spec.feature == "logits":
                loss_mask = None  # one prediction per example
            kwargs = {}
            if spec.tempered:
                kwargs["temperature"] = self.temperature
            if m in self.relation_heads:
                kwargs["relation_heads"] = self.relation_heads[m]
            with torch.set_grad_enabled(m.weight > 0 and torch.is_grad_enabled()):
                value = spec.fn(student, teacher, loss_mask, **kwargs)
            values.append((m, value))
            if m.weight > 0:
                total = total + m.weight * value
        # one host sync per step for every term (not one per term): the logged values and the finiteness check
        floats = torch.stack([v.detach().float() for _, v in values]).tolist() if values else []
        terms: dict[str, float] = {}
        for (m, _), value in zip(values, floats):
            if not math.isfinite(value):
                raise FloatingPointError(f"loss {m.loss} (student layer {m.student_layer}) is {value}; "
                                         "lower the learning rate or use mixed_precision=no")
            terms[m.loss] = terms.get(m.loss, 0.0) + value
        return total, terms


@torch.no_grad()
def with_teacher_logits(teacher: nn.Module, dataset, loader_factory, place: Placement | None = None,
                        kind: TaskKind | None = None):
    """``dataset`` plus a ``teacher_logits`` column: the teacher runs once instead of once per epoch,
    on ``place``'s device and in its precision (those of the training the logits stand in for), and is
    given back where it was (device, train/eval mode). Per-token logits are stored unpadded, one
    (seq_i, labels) row per example; the collator pads them."""
    from distill.engine.evaluation import predict_rows
    from distill.engine.placement import borrowed, placement

    place = place or placement("auto")
    with borrowed(teacher, place), place.autocast():
        logits, _ = predict_rows(teacher, loader_factory(dataset), kind or SEQUENCE_CLASSIFICATION)
    return dataset.add_column("teacher_logits", [row.tolist() for row in logits])


def _fused_attention(teacher: nn.Module) -> None:
    """The teacher's attention probabilities are never read (scores come from its q/k hooks), so it runs
    PyTorch's fused attention instead of eager (measured 8% faster a step on the bench-train batches)."""
    config = getattr(teacher, "config", None)
    if getattr(config, "_attn_implementation", None) == "eager" and hasattr(teacher, "set_attn_implementation"):
        try:
            teacher.set_attn_implementation("sdpa")
        except (ValueError, ImportError):  # a model class without sdpa support keeps eager
            pass


def _output_size(model: nn.Module) -> int | None:
    if hasattr(model, "classifier") or hasattr(model, "qa_outputs"):
        return model.config.num_labels
    if "MaskedLM" in type(model).__name__ or "ForPreTraining" in type(model).__name__:
        return model.config.vocab_size
    return None
