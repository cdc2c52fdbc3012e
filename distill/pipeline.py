"""Stages in order; each command of the CLI runs one of these. Cheap checks that need only model
configs (not weights) run first, so a doomed run stops before any expensive work."""
from __future__ import annotations

from distill.config import ExperimentConfig
from distill.context import RunContext


def preflight(cfg: ExperimentConfig, ctx: RunContext) -> None:
    """Fail fast on settings that only the models' configs can refute."""
    from distill.distillation import MLM_LOSSES, student_shape
    from teachers.load import has_mlm_head, load_config

    teacher_cfg = load_config(cfg.teacher.name)  # also proves the teacher can be found
    shape = student_shape(ctx)
    if cfg.student.init == "teacher":
        if shape.hidden != teacher_cfg.hidden_size or shape.heads != teacher_cfg.num_attention_heads:
            raise ValueError(f"student.init=teacher copies teacher layers, so the student needs the teacher's width "
                             f"{teacher_cfg.hidden_size} and {teacher_cfg.num_attention_heads} heads (got "
                             f"{shape.hidden} and {shape.heads}); set student.hidden/heads or use init=random")
        if shape.ffn > teacher_cfg.intermediate_size or shape.layers > teacher_cfg.num_hidden_layers:
            raise ValueError(f"student.init=teacher: student FFN {shape.ffn} / layers {shape.layers} exceed the "
                             f"teacher's {teacher_cfg.intermediate_size} / {teacher_cfg.num_hidden_layers}")
    score_losses = [f"{section}.attention_scores_mse" for section, losses in (
        ("general.losses", cfg.general.losses if cfg.general.enabled else {}),
        ("task_distill.intermediate_losses", cfg.task_distill.intermediate_losses)) if "attention_scores_mse" in losses]
    if score_losses and shape.heads != teacher_cfg.num_attention_heads:
        raise ValueError(f"{score_losses[0]} compares attention maps head by head, but the student has {shape.heads} "
                         f"heads and the teacher {teacher_cfg.num_attention_heads}; use attention_kl instead")
    if cfg.general.enabled and any(n in MLM_LOSSES for n in cfg.general.losses):
        name = cfg.teacher.name if cfg.general.teacher in ("", "task") else cfg.general.teacher
        if not has_mlm_head(name):
            raise ValueError(f"general.losses uses MLM terms but {name!r} has no MLM head; remove them or set "
                             "general.teacher to a masked-LM checkpoint")
    aug = cfg.task_distill.augment
    if aug.enabled and aug.method == "mlm":
        from distill.augment import mlm_source

        mlm_source(ctx)
    _ = ctx.data  # task data errors surface now


def _context(cfg: ExperimentConfig) -> RunContext:
    from distill.summary import print_summary, run_summary

    ctx = RunContext(cfg)
    preflight(cfg, ctx)
    print_summary(run_summary(ctx))  # know the data before anything trains
    return ctx


def run_inspect(cfg: ExperimentConfig) -> None:
    """The data summary alone: tokenizer and configs only, no weights, no preflight of the stages."""
    from distill.summary import SUMMARY_FILE, print_summary, run_summary

    ctx = RunContext(cfg)
    print_summary(run_summary(ctx))
    print(f"[data] kept in {ctx.run_dir / SUMMARY_FILE}")


def run_teacher(cfg: ExperimentConfig) -> None:
    from teachers.finetune import finetune_teacher

    finetune_teacher(_context(cfg))


def run_general(cfg: ExperimentConfig) -> None:
    from distill.distillation import run_general as general

    print(f"[general] student -> {general(_context(cfg))}")


def run_task(cfg: ExperimentConfig) -> None:
    from distill.distillation import run_prediction

    print(f"[task] student -> {run_prediction(_context(cfg))}")


def run_baseline(cfg: ExperimentConfig) -> None:
    from distill.distillation import run_baseline as baseline

    baseline(_context(cfg))


def run_prune(cfg: ExperimentConfig) -> None:
    from distill.compress import run_prune as prune

    print(f"[prune] pruned student -> {prune(_context(cfg))}")


def run_export(cfg: ExperimentConfig) -> None:
    from distill.compress import run_export as export

    print(f"[export] artifacts -> {export(_context(cfg))}")


def run_distill(cfg: ExperimentConfig) -> None:
    """The whole pipeline in order; finished stages are reused."""
    from distill.compress import run_export as export
    from distill.compress import run_prune as prune
    from distill.distillation import run_prediction

    ctx = _context(cfg)
    folder = run_prediction(ctx)  # pulls in the teacher and general stages it needs
    print(f"[distill] student: {folder}")
    if cfg.prune.enabled:
        print(f"[distill] pruned student: {prune(ctx)}")
    if cfg.export.enabled:
        print(f"[distill] ONNX artifacts: {export(ctx)}")
    from distill.bench import run_bench

    run_bench(ctx)


def run_bench(cfg: ExperimentConfig) -> None:
    from distill.bench import run_bench as bench

    bench(_context(cfg))
