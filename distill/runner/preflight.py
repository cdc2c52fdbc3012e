"""Checks that need only model configs (not weights) and the task data, run after the plan and before
any stage works, so a doomed run stops before any expensive work."""
from __future__ import annotations

from distill.config import ConfigError, ExperimentConfig
from distill.stages.context import RunContext
from distill.base.errors import InputError


def _refuse(key: str, message: str) -> None:
    raise ConfigError(f"config key '{key}': {message}")


def preflight(cfg: ExperimentConfig, ctx: RunContext, general_will_run: bool = True) -> None:
    """Fail fast on settings that only the models' configs (and the task data) can refute."""
    from distill.stages.common import MLM_LOSSES, check_task_losses, student_shape
    from teachers.load import has_mlm_head, load_config

    teacher_cfg = load_config(cfg.teacher.name)  # also proves the teacher can be found
    shape = student_shape(ctx)
    if cfg.student.init == "teacher":
        if shape.hidden != teacher_cfg.hidden_size or shape.heads != teacher_cfg.num_attention_heads:
            raise InputError(f"student.init=teacher copies teacher layers, so the student needs the teacher's width "
                             f"{teacher_cfg.hidden_size} and {teacher_cfg.num_attention_heads} heads (got "
                             f"{shape.hidden} and {shape.heads}); set student.hidden/heads or use init=random")
        if shape.ffn > teacher_cfg.intermediate_size or shape.layers > teacher_cfg.num_hidden_layers:
            raise InputError(f"student.init=teacher: student FFN {shape.ffn} / layers {shape.layers} exceed the "
                             f"teacher's {teacher_cfg.intermediate_size} / {teacher_cfg.num_hidden_layers}")
    student_layers, student_heads = shape.layers, shape.heads
    if cfg.student.init not in ("random", "teacher"):  # a student folder brings its own shape
        init_cfg = load_config(cfg.student.init)
        student_layers, student_heads = init_cfg.num_hidden_layers, init_cfg.num_attention_heads
        if init_cfg.vocab_size != teacher_cfg.vocab_size:
            _refuse("student.init", f"{cfg.student.init} has a vocabulary of {init_cfg.vocab_size} tokens but the "
                    f"teacher {cfg.teacher.name!r} has {teacher_cfg.vocab_size}; a student shares its teacher's "
                    "vocabulary: initialise from a student of this teacher, or use init=random")
    _check_vocabulary(cfg, ctx, teacher_cfg)
    _check_lengths(cfg, teacher_cfg, student_layers)
    score_losses = [f"{section}.attention_scores_mse" for section, losses in (
        ("general.losses", cfg.general.losses if cfg.general.enabled else {}),
        ("task_distill.intermediate_losses", cfg.task_distill.intermediate_losses)) if "attention_scores_mse" in losses]
    if score_losses and student_heads != teacher_cfg.num_attention_heads:
        raise InputError(f"{score_losses[0]} compares attention maps head by head, but the student has {student_heads} "
                         f"heads and the teacher {teacher_cfg.num_attention_heads}; use attention_kl instead")
    mlm_terms = [n for n in cfg.general.losses if n in MLM_LOSSES] if cfg.general.enabled else []
    if mlm_terms and cfg.general.teacher == "task":
        _refuse("general.teacher", f"'task' is the fine-tuned classifier, which has no MLM head for general.losses "
                f"{mlm_terms}; set general.teacher='' (the pretrained teacher) or drop those losses")
    if mlm_terms:
        name = cfg.general.teacher or cfg.teacher.name
        if not has_mlm_head(name):
            raise InputError(f"general.losses uses MLM terms but {name!r} has no MLM head; remove them or set "
                             "general.teacher to a masked-LM checkpoint")
    if general_will_run:
        _check_general_corpus(cfg, ctx)
    data = ctx.data  # task data errors surface now
    check_task_losses(cfg, data.is_regression)
    data.kind.check_config(cfg)  # then what the task kind cannot do
    if cfg.task_distill.augment.method == "mlm":
        from distill.data.augment import augment_decision, mlm_source

        if augment_decision(ctx)[0]:  # asked for, or switched on by a small training split
            mlm_source(ctx)
    if cfg.teacher.already_finetuned:
        from teachers.load import finetuned_architectures

        data.kind.check_model_folder(finetuned_architectures(cfg.teacher.name), f"teacher.name={cfg.teacher.name}")
        _check_finetuned_labels(cfg, data.label_names)


def _check_general_corpus(cfg: ExperimentConfig, ctx: RunContext) -> None:
    """A general corpus that is missing, empty, too short, not UTF-8 or without its text column stops the
    run now, not after the teacher has been fine-tuned (reads up to its first sequence)."""
    from pathlib import Path

    from distill.data.corpus import first_sequence

    g = cfg.general
    if g.enabled:
        first_sequence(g, ctx.tokenizer, Path(cfg.output_dir) / ".cache")


def _check_vocabulary(cfg: ExperimentConfig, ctx: RunContext, teacher_cfg) -> None:
    """Token ids come from the teacher's tokenizer; every model they reach must have rows for them."""
    from teachers.load import load_config

    tokens = len(ctx.tokenizer)
    if tokens > teacher_cfg.vocab_size:
        _refuse("teacher.name", f"the tokenizer of {cfg.teacher.name!r} has {tokens} tokens but the model's "
                f"vocab_size is {teacher_cfg.vocab_size}; the folder mixes a tokenizer and a model that do not belong "
                "together: save both from the same checkpoint")
    if cfg.general.enabled and cfg.general.teacher not in ("", "task"):
        other = load_config(cfg.general.teacher)
        if other.vocab_size != teacher_cfg.vocab_size:
            _refuse("general.teacher", f"{cfg.general.teacher!r} has a vocabulary of {other.vocab_size} tokens, the "
                    f"teacher {cfg.teacher.name!r} {teacher_cfg.vocab_size}; the corpus is tokenized with the "
                    "teacher's tokenizer, so use a general teacher with the same vocabulary")


def _check_lengths(cfg: ExperimentConfig, teacher_cfg, student_layers: int) -> None:
    """Sequence lengths within the teacher's positions; per-layer lists as long as the student is deep."""
    from distill.engine.layer_map import LayerMapError, teacher_layers
    from teachers.load import load_config

    positions = teacher_cfg.max_position_embeddings
    if cfg.task.max_len > positions:
        _refuse("task.max_len", f"{cfg.task.max_len} exceeds the teacher's {positions} position embeddings; "
                f"set task.max_len <= {positions}")
    sections = [("task_distill", cfg.task_distill.layer_map, cfg.task_distill.layer_map_list,
                 teacher_cfg.num_hidden_layers)]
    if cfg.general.enabled:
        general_cfg = teacher_cfg if cfg.general.teacher in ("", "task") else load_config(cfg.general.teacher)
        if cfg.general.max_len > general_cfg.max_position_embeddings:
            _refuse("general.max_len", f"{cfg.general.max_len} exceeds the general teacher's "
                    f"{general_cfg.max_position_embeddings} position embeddings; set general.max_len <= "
                    f"{general_cfg.max_position_embeddings}")
        sections.append(("general", cfg.general.layer_map, cfg.general.layer_map_list, general_cfg.num_hidden_layers))
    for prefix, strategy, explicit, layers in sections:
        try:
            teacher_layers(strategy, student_layers, layers, explicit)
        except LayerMapError as err:
            _refuse(f"{prefix}.layer_map_list" if strategy == "explicit" else f"{prefix}.layer_map", str(err))
    ratios = cfg.prune.layer_ratios
    if cfg.prune.enabled and ratios and len(ratios) != student_layers:
        _refuse("prune.layer_ratios", f"has {len(ratios)} entries but the student has {student_layers} layers; "
                "give one ratio per layer, or [] to use prune.ratio everywhere")


def _check_finetuned_labels(cfg: ExperimentConfig, data_labels: list[str] | None) -> None:
    """A teacher fine-tuned elsewhere must predict the task's labels, with the same ids."""
    from teachers.load import finetuned_labels

    labels = finetuned_labels(cfg.teacher.name)
    if (labels is None) != (data_labels is None):
        kinds = {True: "regression", False: "classification"}
        _refuse("teacher.already_finetuned", f"{cfg.teacher.name!r} is a {kinds[labels is None]} model but task "
                f"{cfg.task.name!r} is {kinds[data_labels is None]}; use a matching teacher or fine-tune here "
                "(teacher.already_finetuned=false)")
    if labels is None or labels == data_labels:
        return
    if labels == [f"LABEL_{i}" for i in range(len(labels))] and len(labels) == len(data_labels):
        print(f"[teacher] {cfg.teacher.name} names its labels {labels}; taking them to mean {data_labels} in "
              "that order")
        return
    _refuse("teacher.already_finetuned", f"{cfg.teacher.name!r} predicts labels {labels} but task "
            f"{cfg.task.name!r} has labels {data_labels}; the ids must mean the same: rename the data's labels "
            "to the teacher's, or fine-tune here with teacher.already_finetuned=false")
