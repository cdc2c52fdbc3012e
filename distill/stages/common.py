"""What several stages share: the student's shape, the task losses, the task objective, teacher logits,
the student saver and the final scores. Stages import this module, never each other."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from distill.base.ranks import process_count
from distill.config import ExperimentConfig, PruneConfig, TaskStageConfig, TrainConfig
from distill.data.augment import augment_decision, augmented_train_set
from distill.engine.batching import to_model_inputs
from distill.engine.evaluation import evaluate
from distill.engine.layer_map import build_layer_map
from distill.engine.losses import LOSSES
from distill.engine.objectives import DistillObjective, save_projections, with_teacher_logits
from distill.engine.placement import placement
from distill.engine.trainer import steps_per_epoch, total_steps
from distill.stages.context import RunContext, save_hf_folder
from distill.stages.records import announce_once
from distill.engine.tracking import read_metrics
from distill.report.summary import write_json_once
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind, kind_of_folder
from students.build import count_parameters
from students.presets import resolve_shape
from teachers.load import use_eager_attention
from distill.base.errors import InputError

MLM_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.feature.startswith("mlm"))
# trained student->teacher projections: a file of their own in the stage's model folder, written in the same
# swap as the student (from_pretrained reads model.safetensors only, so the student's weights stay plain HF)
PROJECTIONS = "projections.safetensors"
# the default output losses are classification losses; on a regression task they stand for these
REGRESSION_COUNTERPARTS = {"soft_ce": "logits_mse", "soft_ce_t2": "logits_mse", "hard_ce": "hard_mse"}


def student_shape(ctx: RunContext):
    s = ctx.cfg.student
    return resolve_shape(s.preset, s.layers, s.hidden, s.heads, s.ffn)


def losses_for_task(losses: dict[str, float], is_regression: bool) -> dict[str, float]:
    """The output losses a task stage trains with. Unchanged for classification; on a regression task
    the default losses (soft_ce/hard_ce, which need classes) become logits_mse/hard_mse. Losses the
    user set are never rewritten: check_task_losses refuses the wrong ones before any training."""
    defaults = (TaskStageConfig().prediction_losses, PruneConfig().recovery_losses)
    if is_regression and losses in defaults:
        return {REGRESSION_COUNTERPARTS.get(name, name): weight for name, weight in losses.items()}
    return losses


def check_task_losses(cfg: ExperimentConfig, is_regression: bool) -> None:
    """Preflight: every configured task-stage loss is defined for the task type (classes or scores)."""
    task_type = "regression" if is_regression else "classification"
    sections = {"task_distill.intermediate_losses": cfg.task_distill.intermediate_losses,
                "task_distill.prediction_losses": cfg.task_distill.prediction_losses,
                "prune.recovery_losses": cfg.prune.recovery_losses if cfg.prune.enabled else {}}
    for key, losses in sections.items():
        for name, weight in losses_for_task(losses, is_regression).items():
            wanted = LOSSES[name].task
            if weight == 0:  # logged when computable, skipped otherwise (DistillObjective): never trained on
                continue
            if wanted not in ("any", task_type):
                fix = ("logits_mse (teacher scores) or hard_mse (gold scores)" if is_regression
                       else "soft_ce/soft_ce_t2 (teacher) or hard_ce (gold labels)")
                raise InputError(f"config key '{key}.{name}': {name} is a {wanted} loss but {cfg.task.name} is a "
                                 f"{task_type} task; use {fix}")


def distill_saver(ctx: RunContext):
    """save_model for distillation: the student's HF folder with its projections in it, in one swap."""
    def save(trainable, folder: Path) -> None:
        projections = getattr(trainable, "projections", None)
        extra = None
        if projections is not None and len(projections):
            extra = lambda tmp: save_projections(projections, tmp / PROJECTIONS)  # noqa: E731
        save_hf_folder(getattr(trainable, "student", trainable), ctx.tokenizer, folder, extra)
    return save


def projections_file(stage_dir: Path) -> Path:
    """Where a distillation stage's trained projections are: in its model folder (a stage finished by an
    earlier version kept them beside it; that file is still found)."""
    inside, beside = Path(stage_dir) / "model" / PROJECTIONS, Path(stage_dir) / PROJECTIONS
    return beside if beside.is_file() and not inside.is_file() else inside


def load_finetuned(folder: Path):
    """A fine-tuned folder with the head its architecture records (sequence/token classification, QA)."""
    return use_eager_attention(kind_of_folder(folder).auto_class.from_pretrained(folder))


def task_objective(ctx: RunContext, losses: dict[str, float], student, teacher,
                   carry_from: list[Path] | tuple[Path, ...] = ()) -> DistillObjective:
    """Task-stage distillation (2a, 2b, recovery): the configured layer map and temperature, the output
    losses of the task type, and the trained projections of the stages in ``carry_from`` (oldest
    first, a later stage's projection replacing an earlier one) where their shapes fit."""
    t = ctx.cfg.task_distill
    chosen = losses_for_task(losses, ctx.data.is_regression)
    if chosen != losses:
        print(f"[task] {ctx.data.name} is a regression task: losses {chosen} instead of the default {losses}")
    matches = build_layer_map(chosen, t.layer_map, student.config.num_hidden_layers,
                              teacher.config.num_hidden_layers, t.layer_map_list)
    objective = DistillObjective(student, teacher, matches, temperature=t.temperature,
                                 kind=ctx.data.kind)  # validates before training
    for folder in carry_from:
        loaded = objective.load_projections(projections_file(folder))
        if loaded:
            print(f"[task] projections {loaded} start from the ones trained in {folder}")
    return objective


def train_set_for(ctx: RunContext, teacher_dir: Path):
    """The training rows of 2a and 2b: the tokenized split, augmented when asked for or when it is small
    (task_distill.augment.auto_below; said once in the log)."""
    augment, why = augment_decision(ctx)
    if why:
        announce_once(f"augment:{ctx.run_dir}", why)
    return augmented_train_set(ctx, teacher_dir) if augment else ctx.tokenized["train"]


# a floored stage that scores dev scores it at most this often over its run (see step_floor)
FLOOR_DEV_SCORES = 10


def step_floor(train: TrainConfig, examples: int, batches_per_epoch: int, min_steps: int, key: str, stage: str,
               dev_scored: bool = False) -> tuple[TrainConfig, str]:
    """A stage's schedule with its step floor applied, and the log line saying what the floor changed ("" when
    it changed nothing). ``train``: the stage's TrainConfig; ``examples``/``batches_per_epoch``: its training
    rows and the batches one process takes from them per epoch; ``min_steps``: the floor (``key`` names it).

    Only a stage given in epochs is floored (``max_steps`` > 0: the user chose). Below the floor it trains
    ``min_steps`` steps (max_steps), more passes over the same data; a ``dev_scored`` stage (2b) whose
    ``eval_every`` would score dev only at the end then scores it after every stretch as long as its own
    schedule (at most FLOOR_DEV_SCORES times), so the best model is kept, not the last of the longer run."""
    if train.max_steps > 0 or min_steps <= 0:
        return train, ""
    steps = total_steps(train, batches_per_epoch)
    if steps >= min_steps:
        return train, ""
    floored = dataclasses.replace(train, max_steps=min_steps)  # a new schedule: the config is never changed
    scoring = ""
    if dev_scored and (train.eval_every == 0 or train.eval_every >= min_steps):
        every = max(steps, math.ceil(min_steps / FLOOR_DEV_SCORES))
        floored = dataclasses.replace(floored, eval_every=every)
        scoring = f"; dev scored every {every:,} steps, the best kept"
    epochs = min_steps / steps_per_epoch(train, batches_per_epoch)
    return floored, (f"[{stage}] {examples:,} examples x {train.epochs:g} epochs = {steps:,} steps < {key}="
                     f"{min_steps:,}: training {min_steps:,} steps ({epochs:.1f} epochs){scoring}")


def floored_schedule(train: TrainConfig, loader, min_steps: int, key: str, stage: str,
                     dev_scored: bool = False) -> TrainConfig:
    """step_floor for a stage about to train on ``loader`` (each of N processes takes 1/N of its batches);
    prints what the floor changed."""
    batches = math.ceil(len(loader) / process_count())
    schedule, why = step_floor(train, len(loader.dataset), batches, min_steps, key, stage, dev_scored)
    if why:
        print(why)
    return schedule


def cache_teacher_logits(ctx: RunContext, objective: DistillObjective, teacher, train_set,
                         mixed_precision: str = "auto"):
    """When only output losses are trained, the teacher runs once over the data instead of every epoch,
    on the accelerator and in the ``mixed_precision`` of the training that uses the logits."""
    if not objective.output_only:
        return train_set
    from distill.engine import logit_cache

    place = placement(mixed_precision)
    key = _logit_key(teacher, train_set, mixed_precision, objective.kind)

    def compute(dataset):
        print(f"[teacher] logits for {len(dataset)} training examples, computed once and reused every epoch")
        return with_teacher_logits(teacher, dataset, lambda d: ctx.loader("train", 128, dataset=d), place,
                                   kind=objective.kind)

    return logit_cache.reuse_or_compute(getattr(ctx, "run_dir", None), key, train_set, compute)  # across stages too


def _logit_key(teacher, train_set, mixed_precision: str, kind) -> str | None:
    from distill.engine import logit_cache

    place = placement(mixed_precision)
    return logit_cache.cache_key(teacher.name_or_path, train_set, place.device.type, place.dtype,
                                 type(kind).__name__ + str(getattr(kind, "name", "")))


def batches_and_labels(loader, kind: TaskKind = SEQUENCE_CLASSIFICATION) -> tuple[list[dict[str, np.ndarray]], list]:
    """Model inputs as int64 numpy batches (what ONNX Runtime takes) and the labels of the same rows (per example;
    per-token rows unpadded), in loader order."""
    batches, labels = [], []
    for batch in loader:
        batches.append({k: v.numpy().astype(np.int64) for k, v in to_model_inputs(batch).items()})
        labels += kind.label_rows(kind.gold(batch), batches[-1]["attention_mask"])
    return batches, kind.collect(labels)


def final_scores(ctx: RunContext, folder: Path, steps: int) -> dict:
    """Dev and test scores of a stage's model, on the accelerator, in full precision (the reported number)."""
    model = load_finetuned(folder).to(placement("no").device)
    return {"dev": evaluate(model, ctx.loader("dev", 128), ctx.data, ctx.data.dev),
            "test": evaluate(model, ctx.loader("test", 128), ctx.data, ctx.data.test),
            "params": count_parameters(model), "steps": steps}


def print_scores(name: str, scores: dict, ctx: RunContext) -> None:
    from distill.report.summary import score_report

    if "test" in scores:
        print(f"[{name}] {score_report(ctx, scores)}")


def teacher_baseline_formats(e) -> list[str]:
    """Formats the teacher is exported in for the bench's runtime rows (none when it is a model to ship)."""
    return [] if "teacher" in e.models else list(e.teacher_formats)


# ------------------------------------------------------------------ a training run stopped while still improving

TREND_FILE = "trend.json"  # a stage's last dev scores, in its stage folder; the report reads it
# a model may be undertrained when its last evaluation is its best and beat the one before by more than this
RISING_MARGIN = 0.002
TREND_EVALS = 4  # how many of the last evaluations the warning and trend.json show


def dev_trend(records: list[dict], margin: float = RISING_MARGIN) -> dict | None:
    """The dev scores a training run logged (``dev_score`` rows of its metrics.jsonl), last ones first
    looked at: ``rising`` when the last evaluation is the best so far and beat the one before by more than
    ``margin`` (the run likely stopped before the model converged). None with fewer than two evaluations."""
    evals = sorted((r["step"], r["dev_score"]) for r in records if isinstance(r.get("dev_score"), (int, float)))
    if len(evals) < 2:
        return None
    steps, scores = [s for s, _ in evals], [v for _, v in evals]
    last, previous = scores[-1], scores[-2]
    rising = last >= max(scores) and last - previous > margin  # False for NaN
    return {"rising": rising, "steps": steps[-TREND_EVALS:], "scores": scores[-TREND_EVALS:], "margin": margin}


def train_longer(train: TrainConfig, key: str, floor: tuple[str, int] = ("", 0)) -> str:
    """The override that doubles a schedule: the step floor's key when the floor set the length (``floor``:
    its key and the steps it set; doubling the epochs would still train the floor), else ``<key>.max_steps``
    when it is set, else ``<key>.epochs``."""
    floor_key, floored_steps = floor
    if floored_steps:
        return f"{floor_key}={floored_steps * 2} (now {floored_steps})"
    if train.max_steps:
        return f"{key}.max_steps={train.max_steps * 2} (now {train.max_steps})"
    return f"{key}.epochs={train.epochs * 2:g} (now {train.epochs:g})"


def check_dev_trend(ctx: RunContext, stage_dir: Path, who: str, train: TrainConfig, key: str,
                    why: str = "", floor: tuple[str, int] = ("", 0)) -> dict | None:
    """Read a trained stage's dev history from its metrics.jsonl, keep it as ``trend.json`` for the report,
    and warn (once per process) when the dev score was still rising when training stopped: ``who`` names
    the model, ``key`` its schedule's config section (the fix doubles it, or ``floor``'s key when the step
    floor set the length), ``why`` says what longer buys."""
    trend = dev_trend(read_metrics(stage_dir / "metrics.jsonl"))
    if trend is None:
        return None
    trend.update(metric=ctx.data.metric, who=who, fix=train_longer(train, key, floor))
    write_json_once(stage_dir / TREND_FILE, trend)
    if trend["rising"]:
        history = ", ".join(f"{v:.4f} @ step {s}" for s, v in zip(trend["steps"], trend["scores"]))
        announce_once(f"trend:{stage_dir}", (
            f"[{who}] WARNING the {who} may be undertrained: dev {ctx.data.metric} still rose from "
            f"{trend['scores'][-2]:.4f} to {trend['scores'][-1]:.4f} at its last evaluation (by more than "
            f"{trend['margin']:g}), and its best score is the last one\n"
            f"  evidence: last dev {ctx.data.metric} scores: {history}\n"
            f"  fix: train longer: {trend['fix']}, with a new run_id=...{why}"))
    return trend
