"""Build a student: its BERT config from a shape and the teacher's vocabulary, and its initial weights.

Initialisation: ``random``; ``teacher`` (DistilBERT-style: embeddings and whole layers copied from the
teacher, the teacher layers chosen by a strategy; a narrower FFN keeps the teacher's most important
neurons, "weight selection"); or a path to a student folder (e.g. the general-distilled student).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig,
                          PreTrainedModel)

from students.presets import StudentShape
from distill.base.errors import UserError

# token: a per-token head (NER), AutoModelForTokenClassification; qa: start/end head, AutoModelForQuestionAnswering
KINDS = ("base", "mlm", "classifier", "token", "qa")
HEADED = ("classifier", "token")  # kinds whose head is sized by the task's labels


class StudentInitError(UserError, ValueError):
    pass


def student_config(shape: StudentShape, teacher_config, label_names: list[str] | None = None,
                   kind: str = "classifier") -> BertConfig:
    """A BertConfig of ``shape`` sharing the teacher's vocabulary, positions and activation."""
    config = BertConfig(
        vocab_size=teacher_config.vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.ffn,
        hidden_act=teacher_config.hidden_act,
        max_position_embeddings=teacher_config.max_position_embeddings,
        type_vocab_size=teacher_config.type_vocab_size,
        pad_token_id=teacher_config.pad_token_id,
        layer_norm_eps=teacher_config.layer_norm_eps,
    )
    if kind in HEADED:
        _set_labels(config, label_names, kind)
    if kind == "qa":
        config.num_labels = 2  # start and end logits
    return config


def _set_labels(config, label_names: list[str] | None, kind: str = "classifier") -> None:
    if kind == "token":  # tags: no problem_type (the token head's loss is cross-entropy over real words)
        config.num_labels = len(label_names)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
        return
    if label_names is None:
        config.num_labels, config.problem_type = 1, "regression"
    else:
        config.num_labels = len(label_names)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
        config.problem_type = "single_label_classification"


def _auto_class(kind: str):
    if kind not in KINDS:
        raise ValueError(f"student kind must be one of {KINDS}, got {kind!r}")
    return {"base": AutoModel, "mlm": AutoModelForMaskedLM, "classifier": AutoModelForSequenceClassification,
            "token": AutoModelForTokenClassification, "qa": AutoModelForQuestionAnswering}[kind]


def init_teacher_layers(strategy: str, student_layers: int, teacher_layers: int,
                        explicit: list[int] | tuple[int, ...] = ()) -> list[int]:
    """0-based teacher layers whose weights the student layers copy."""
    m, n = student_layers, teacher_layers
    if m > n and strategy != "explicit":
        raise StudentInitError(f"student has {m} layers but the teacher only {n}; init=teacher needs M <= N")
    if strategy == "uniform":  # spread over depth, always ending with the top layer
        return [round((i + 1) * n / m) - 1 for i in range(m)]
    if strategy == "first":
        return list(range(m))
    if strategy == "last":
        return list(range(n - m, n))
    if strategy == "explicit":
        if len(explicit) != m or any(not 0 <= t < n for t in explicit):
            raise StudentInitError(f"student.init_layer_list must hold {m} teacher layers in 0..{n - 1}, got {list(explicit)}")
        return list(explicit)
    raise StudentInitError(f"unknown student.init_layers {strategy!r}; use uniform, first, last or explicit")


def _ffn_keep(layer: nn.Module, width: int) -> torch.Tensor:
    """Indices of the ``width`` FFN neurons with the largest |W_in row| * |W_out column| (kept in order)."""
    w_in = layer.intermediate.dense.weight  # (ffn, hidden)
    w_out = layer.output.dense.weight  # (hidden, ffn)
    score = w_in.norm(dim=1) * w_out.norm(dim=0)
    return score.topk(width).indices.sort().values


@torch.no_grad()
def copy_teacher_weights(student: PreTrainedModel, teacher: PreTrainedModel, layers: list[int]) -> None:
    """Copy embeddings and the chosen teacher layers into the student (same hidden width and heads)."""
    s_base, t_base = student.base_model, teacher.base_model
    s_cfg, t_cfg = s_base.config, t_base.config
    if s_cfg.hidden_size != t_cfg.hidden_size:
        raise StudentInitError(f"student.init=teacher needs the teacher's hidden width ({t_cfg.hidden_size}), "
                               f"the student has {s_cfg.hidden_size}; use init=random with general distillation")
    if s_cfg.num_attention_heads != t_cfg.num_attention_heads:
        raise StudentInitError(f"student.init=teacher needs the teacher's head count ({t_cfg.num_attention_heads}), "
                               f"the student has {s_cfg.num_attention_heads}")
    if s_cfg.intermediate_size > t_cfg.intermediate_size:
        raise StudentInitError(f"student FFN width {s_cfg.intermediate_size} exceeds the teacher's "
                               f"{t_cfg.intermediate_size}; init=teacher can only keep or narrow it")
    s_base.embeddings.load_state_dict(t_base.embeddings.state_dict())
    for s_layer, t_index in zip(s_base.encoder.layer, layers):
        t_layer = t_base.encoder.layer[t_index]
        s_layer.attention.load_state_dict(t_layer.attention.state_dict())
        keep = _ffn_keep(t_layer, s_cfg.intermediate_size)
        s_layer.intermediate.dense.weight.copy_(t_layer.intermediate.dense.weight[keep])
        s_layer.intermediate.dense.bias.copy_(t_layer.intermediate.dense.bias[keep])
        s_layer.output.dense.weight.copy_(t_layer.output.dense.weight[:, keep])
        s_layer.output.dense.bias.copy_(t_layer.output.dense.bias)
        s_layer.output.LayerNorm.load_state_dict(t_layer.output.LayerNorm.state_dict())
    for name in ("pooler",):  # task heads follow when both models have them with equal shapes
        s_mod, t_mod = getattr(s_base, name, None), getattr(t_base, name, None)
        if s_mod is not None and t_mod is not None:
            s_mod.load_state_dict(t_mod.state_dict())
    for head in ("classifier", "qa_outputs"):
        s_head, t_head = getattr(student, head, None), getattr(teacher, head, None)
        if s_head is not None and t_head is not None and s_head.weight.shape == t_head.weight.shape:
            s_head.load_state_dict(t_head.state_dict())


def build_student(shape: StudentShape, teacher: PreTrainedModel, kind: str = "classifier",
                  label_names: list[str] | None = None, init: str = "random", init_layers: str = "uniform",
                  init_layer_list: list[int] | tuple[int, ...] = (), seed: int = 42) -> PreTrainedModel:
    """A student of ``shape`` (or the shape stored in ``init`` when it is a folder)."""
    auto = _auto_class(kind)
    torch.manual_seed(seed)  # fresh heads and random layers depend on the seed only
    if init not in ("random", "teacher"):
        folder = Path(init)
        if not (folder / "config.json").is_file():
            raise StudentInitError(f"student.init={init!r} is neither random, teacher nor a model folder")
        kwargs = {}
        if kind in HEADED:
            probe = BertConfig.from_pretrained(folder)
            _set_labels(probe, label_names, kind)
            kwargs = {"config": probe}
        return auto.from_pretrained(folder, **kwargs)
    config = student_config(shape, teacher.config, label_names, kind)
    student = auto.from_config(config)
    if init == "teacher":
        layers = init_teacher_layers(init_layers, shape.layers, teacher.config.num_hidden_layers, init_layer_list)
        copy_teacher_weights(student, teacher, layers)
    return student


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
