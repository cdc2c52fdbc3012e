"""Distillation losses: pure functions ``(student, teacher, mask) -> scalar`` found by name in LOSSES.

Shapes: b = batch, s = sequence, d = width, H = heads, R = relation heads, C = classes/vocab.
``mask`` is the attention mask (b, s) with 1 for real tokens; padded positions never contribute. With
packed documents (general.packing=intra_doc) it is (b, s, s), 1 where query and key are real tokens of
the same document: token losses read its diagonal, pair losses only same-document pairs.
All losses are computed in float32 whatever precision the models run in: inputs are cast up and
autocast is switched off inside (under autocast a matmul of float32 tensors would run in bf16/fp16).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

NEG = -1e4  # additive bias for padded keys: exp() underflows to 0 yet log-probs stay finite


def _valid(mask: torch.Tensor) -> torch.Tensor:
    """Real tokens (b, s) as float32, from a (b, s) mask or the diagonal of a (b, s, s) document mask."""
    if mask.dim() == 3:
        mask = mask.diagonal(dim1=1, dim2=2)  # a real token always attends to itself
    return mask.to(torch.float32)


def _pairs(mask: torch.Tensor) -> torch.Tensor:
    """(query, key) pairs that count, (b, s, s) float32: both real (b, s), or as given (b, s, s)."""
    if mask.dim() == 3:
        return mask.to(torch.float32)
    m = _valid(mask)
    return m[:, :, None] * m[:, None, :]


def _device_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return value.device.type
    return _device_type(value[0])  # a (queries, keys) pair


def full_precision(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``fn`` with autocast off on its inputs' device, so float32 inputs stay float32 throughout."""
    @functools.wraps(fn)
    def wrapper(student, *args, **kwargs):
        with torch.autocast(_device_type(student), enabled=False):
            return fn(student, *args, **kwargs)
    return wrapper


@full_precision
def token_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens and all d features. student/teacher: (b, s, d); mask (b, s).
    TinyBERT's embedding-layer and hidden-state losses (after projecting the student to d_teacher)."""
    m = _valid(mask).unsqueeze(-1)  # (b, s, 1)
    diff = (student.float() - teacher.float()) ** 2 * m
    return diff.sum() / (m.sum() * student.shape[-1]).clamp_min(1.0)


@full_precision
def token_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DistilBERT's cosine loss: mean over real tokens of 1 - cos(student, teacher). (b, s, d)."""
    m = _valid(mask)
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # (b, s)
    return ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)


@full_precision
def attention_scores_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT attention loss: MSE of pre-softmax scores (b, H, s, s) over heads and the
    (query, key) pairs where both tokens are real. Needs the same number of heads."""
    if student.shape != teacher.shape:
        raise ValueError(f"attention_scores_mse needs equal shapes (same head count), got "
                         f"student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}; use attention_kl")
    pairs = _pairs(mask)  # (b, s, s)
    diff = (student.float() - teacher.float()) ** 2  # (b, H, s, s)
    # sum over the counted (query, key) pairs without materialising a (b, H, s, s) pair mask
    total = torch.einsum("bhqk,bqk->", diff, pairs)
    return total / (student.shape[1] * pairs.sum()).clamp_min(1.0)


def _relation_log_probs(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """log softmax(x_r y_r^T / sqrt(d_r)) over real keys, x and y (b, s, D) split into ``heads``: (b, R, s, s)."""
    b, s, d = x.shape
    if d % heads:
        raise ValueError(f"width {d} is not divisible by {heads} relation heads")
    xr = x.float().view(b, s, heads, d // heads).transpose(1, 2)  # (b, R, s, d_r)
    yr = y.float().view(b, s, heads, d // heads).transpose(1, 2)  # (b, R, s, d_r)
    logits = xr @ yr.transpose(-1, -2) / (d // heads) ** 0.5  # (b, R, s, s)
    if mask.dim() == 3:  # packed documents: keys of the query's own document only
        logits = logits + (1.0 - _pairs(mask))[:, None] * NEG
    else:
        logits = logits + (1.0 - _valid(mask))[:, None, None, :] * NEG
    return torch.log_softmax(logits, dim=-1)


def _relation_kl(student_log: torch.Tensor, teacher_log: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per query row over keys, averaged over relation heads and real queries."""
    kl = (teacher_log.exp() * (teacher_log - student_log)).sum(-1)  # (b, R, s)
    m = _valid(mask)[:, None, :].expand_as(kl)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


@full_precision
def attention_kl(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                 mask: torch.Tensor, relation_heads: int = 12) -> torch.Tensor:
    """MiniLM attention-distribution KL, with MiniLMv2 relation heads so head counts may differ.
    student/teacher: (queries, keys), each (b, s, H*d_head). With relation_heads equal to both models'
    head count this is exactly the KL between their attention probabilities."""
    s_log = _relation_log_probs(student[0], student[1], mask, relation_heads)
    t_log = _relation_log_probs(teacher[0], teacher[1], mask, relation_heads)
    return _relation_kl(s_log, t_log, mask)


@full_precision
def value_relation_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                      relation_heads: int = 12) -> torch.Tensor:
    """MiniLM value-relation KL: softmax(V_r V_r^T / sqrt(d_r)) of student vs teacher. (b, s, H*d_head)."""
    s_log = _relation_log_probs(student, student, mask, relation_heads)
    t_log = _relation_log_probs(teacher, teacher, mask, relation_heads)
    return _relation_kl(s_log, t_log, mask)


@full_precision
def soft_ce(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
            temperature: float = 1.0) -> torch.Tensor:
    """Soft cross-entropy -sum softmax(t/T) log softmax(s/T), averaged over examples (b, C) or over
    real tokens (b, s, C) when ``mask`` is given. TinyBERT's prediction-layer loss (T=1): not scaled
    by T^2; ``soft_ce_t2`` is the Hinton / Sanh et al. convention."""
    t = torch.softmax(teacher.float() / temperature, dim=-1)
    ce = -(t * torch.log_softmax(student.float() / temperature, dim=-1)).sum(-1)  # (b,) or (b, s)
    if mask is None or ce.dim() == 1:
        return ce.mean()
    m = _valid(mask)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


@full_precision
def soft_ce_t2(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """``soft_ce`` times T^2 (Hinton et al. 2015; DistilBERT's code multiplies its KL by T^2): the
    gradient scale then stays the same whatever T, so the weight against other terms keeps its meaning.
    Equals soft_ce at T=1. (b, C) or (b, s, C) with ``mask``."""
    return soft_ce(student, teacher, mask, temperature) * temperature ** 2


@full_precision
def logits_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between logits (b, C): the prediction-layer loss for regression tasks."""
    return F.mse_loss(student.float(), teacher.float())


@full_precision
def hard_ce(student: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of student logits (b, C) against gold class ids (b,), or per token: logits (b, s, C)
    against tags (b, s) where -100 marks positions without a word tag (averaged over the others)."""
    if student.dim() == 3:
        flat = labels.reshape(-1).long()
        ce = F.cross_entropy(student.float().reshape(-1, student.shape[-1]), flat, ignore_index=-100,
                             reduction="sum")
        return ce / (flat != -100).sum().clamp_min(1)  # 0, not NaN, for a batch with no word positions
    return F.cross_entropy(student.float(), labels.long())


@full_precision
def hard_mse(student: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of a regression student's output (b, 1) against gold scores (b,)."""
    return F.mse_loss(student.float().view(-1), labels.float().view(-1))


@full_precision
def mlm(student: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked-language-model cross-entropy: student logits (b, s, V), labels (b, s) with -100 = ignore."""
    return F.cross_entropy(student.float().reshape(-1, student.shape[-1]), labels.reshape(-1), ignore_index=-100)


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., torch.Tensor]
    feature: str  # hidden | scores | query_key | value | logits | labels | mlm_logits | mlm_labels
    scope: str  # embedding | layers | last | output
    projectable: bool = False  # a learnable student->teacher projection is added when widths differ
    doc: str = ""
    tempered: bool = False  # takes the stage's temperature
    task: str = "any"  # classification | regression | any: the task types the loss is defined for


LOSSES: dict[str, LossSpec] = {
    "embedding_mse": LossSpec(token_mse, "hidden", "embedding", True, "TinyBERT embedding-layer MSE"),
    "hidden_mse": LossSpec(token_mse, "hidden", "layers", True, "TinyBERT hidden-state MSE per mapped layer"),
    "hidden_cosine": LossSpec(token_cosine, "hidden", "last", True, "DistilBERT cosine on the last hidden state"),
    "attention_scores_mse": LossSpec(attention_scores_mse, "scores", "layers", False,
                                     "TinyBERT MSE on pre-softmax attention scores"),
    "attention_kl": LossSpec(attention_kl, "query_key", "layers", False, "MiniLM attention KL (relation heads)"),
    "value_relation_kl": LossSpec(value_relation_kl, "value", "layers", False, "MiniLM value-relation KL"),
    "soft_ce": LossSpec(soft_ce, "logits", "output", False, "soft cross-entropy at temperature T (TinyBERT)",
                        tempered=True, task="classification"),
    "soft_ce_t2": LossSpec(soft_ce_t2, "logits", "output", False, "soft cross-entropy at T, times T^2 (Hinton)",
                           tempered=True, task="classification"),
    "logits_mse": LossSpec(logits_mse, "logits", "output", False, "MSE on logits (regression)"),
    "hard_ce": LossSpec(hard_ce, "labels", "output", False, "cross-entropy with gold labels",
                        task="classification"),
    "hard_mse": LossSpec(hard_mse, "labels", "output", False, "MSE with gold scores (regression)", task="regression"),
    "mlm_soft_ce": LossSpec(soft_ce, "mlm_logits", "output", False, "soft CE on MLM logits at T", tempered=True),
    "mlm_soft_ce_t2": LossSpec(soft_ce_t2, "mlm_logits", "output", False,
                               "soft CE on MLM logits at T, times T^2 (DistilBERT)", tempered=True),
    "mlm": LossSpec(mlm, "mlm_labels", "output", False, "masked-language-model loss"),
}

