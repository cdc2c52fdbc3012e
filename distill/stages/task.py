"""Stage 2, task distillation: 2a (embeddings, attention and hidden states on the task data) then 2b (the
prediction layer learns the teacher's soft labels, and optionally the gold labels)."""
from __future__ import annotations

from distill.config import AugmentConfig, TaskStageConfig
from distill.base.ranks import is_main_process, wait_for_everyone
from distill.engine import feature_cache
from distill.engine.evaluation import evaluate
from distill.engine.layer_map import describe
from distill.engine.trainer import train
from distill.fingerprint import input_digests, stage_value
from distill.stages.common import (cache_teacher_logits, check_dev_trend, distill_saver, final_scores, floored_schedule,
                                   load_finetuned, print_scores, student_shape, task_objective, train_set_for)
from distill.stages.context import RunContext
from distill.stages.spec import Output, Stage
from students.build import build_student


def _added_later(settings: dict, t: TaskStageConfig, floor: str) -> dict:
    """``settings`` plus the step floor named ``floor`` only where it differs from its default: keys added after
    runs were made stay out at their defaults, so finished 2a/2b folders stay reusable (the defaults leave
    every embedded recipe's schedule and data as they were)."""
    if getattr(t, floor) != getattr(TaskStageConfig(), floor):
        settings[floor] = getattr(t, floor)
    return settings


def intermediate_settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    cfg = ctx.cfg
    augment = stage_value(cfg.task_distill.augment)
    if augment["auto_below"] == AugmentConfig().auto_below:  # added later too, as _added_later
        augment.pop("auto_below")
    return _added_later({"upstream": [upstream["teacher"], upstream.get("general")], "student": cfg.student,
                         "task": cfg.task, "seed": cfg.seed, "losses": cfg.task_distill.intermediate_losses,
                         "layer_map": cfg.task_distill.layer_map, "layer_map_list": cfg.task_distill.layer_map_list,
                         "train": cfg.task_distill.intermediate, "augment": augment,
                         "inputs": input_digests(cfg, "student.init", "task.name", "task.data_dir",
                                                 "task_distill.augment.mlm_model")},
                        cfg.task_distill, "min_steps_2a")


def intermediate(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    """2a: the student's embeddings, attention and hidden states learn from the fine-tuned teacher."""
    cfg, t = ctx.cfg, ctx.cfg.task_distill
    teacher_dir = inputs["teacher"].model_dir
    teacher = load_finetuned(teacher_dir)
    init = str(inputs["general"].model_dir) if "general" in inputs else cfg.student.init
    student = build_student(student_shape(ctx), teacher, kind=ctx.data.kind.student_kind,
                            label_names=ctx.data.label_names, init=init, init_layers=cfg.student.init_layers,
                            init_layer_list=cfg.student.init_layer_list, seed=cfg.seed)
    if not t.intermediate_losses:
        if is_main_process():  # one writer for the shared folder
            ctx.saver()(student, stage.model_dir)
        wait_for_everyone()
        return {"skipped": "no intermediate_losses", "init": init}
    carry = [inputs["general"].dir] if "general" in inputs else []
    objective = task_objective(ctx, t.intermediate_losses, student, teacher, carry_from=carry)
    train_set = train_set_for(ctx, teacher_dir)
    print(f"[intermediate] student from {init}; {len(train_set)} training examples; layer map:\n"
          f"{describe(objective.matches)}")
    schedule = floored_schedule(t.intermediate, ctx.loader("train", t.intermediate.batch_size, True, train_set),
                                t.min_steps_2a, "task_distill.min_steps_2a", "2a")
    # the cache pays from 2 passes: counted on the schedule that will run, the step floor included
    train_set = feature_cache.prepare(ctx, objective, teacher_dir, train_set, schedule)
    loader = ctx.loader("train", t.intermediate.batch_size, True, train_set)
    tracker = ctx.tracker(stage.dir, "intermediate")
    result = train(objective, loader, schedule, stage.dir, save_model=distill_saver(ctx), tracker=tracker,
                   seed=cfg.seed, desc="2a intermediate")
    final = result.history[-1] if result.history else {}
    tracker.summary(final)
    tracker.finish()
    return {"steps": result.step, "init": init, "train_examples": len(train_set), "final": final}


def prediction_settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    t = ctx.cfg.task_distill
    return _added_later({"upstream": upstream["2a"], "losses": t.prediction_losses, "temperature": t.temperature,
                         "train": t.prediction, "augment": t.augment.enabled}, t, "min_steps_2b")


def prediction(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    """2b: the prediction layer learns the teacher's soft labels (and optionally the gold labels)."""
    cfg, t = ctx.cfg, ctx.cfg.task_distill
    teacher_dir = inputs["teacher"].model_dir
    teacher = load_finetuned(teacher_dir)
    student = load_finetuned(inputs["2a"].model_dir)
    carry = [inputs[name].dir for name in ("general", "2a") if name in inputs]
    objective = task_objective(ctx, t.prediction_losses, student, teacher, carry_from=carry)
    train_set = cache_teacher_logits(ctx, objective, teacher, train_set_for(ctx, teacher_dir),
                                     t.prediction.mixed_precision)
    data = ctx.data
    dev = ctx.loader("dev", 128)
    loader = ctx.loader("train", t.prediction.batch_size, True, train_set)
    schedule = floored_schedule(t.prediction, loader, t.min_steps_2b, "task_distill.min_steps_2b", "2b",
                                dev_scored=True)
    tracker = ctx.tracker(stage.dir, "prediction")
    result = train(objective, loader, schedule, stage.dir, save_model=distill_saver(ctx),
                   evaluate=lambda m: evaluate(m.student, dev, data, data.dev), tracker=tracker, seed=cfg.seed,
                   desc="2b prediction")
    scores = final_scores(ctx, stage.model_dir, result.step)
    if schedule is not t.prediction:  # the step floor set the length: its key is what lengthens the run
        scores["floored_steps"] = schedule.max_steps
    tracker.summary(scores)
    tracker.finish()
    print_scores("student", scores, ctx)
    return scores


def _test_score(out: Output) -> str:
    return f"test {out.result['test']['score']:.4f}" if "test" in out.result else ""


INTERMEDIATE = Stage("2a", "student-intermediate", "stage 2a: embeddings, attention, hidden states on the task data",
                     intermediate_settings, intermediate,
                     reads=lambda cfg: ("teacher", "general") if cfg.general.enabled else ("teacher",))
PREDICTION = Stage("2b", "student-task", "stage 2b: soft labels of the fine-tuned teacher (+ optional gold)",
                   prediction_settings, prediction,
                   reads=lambda cfg: ("teacher", "general", "2a") if cfg.general.enabled else ("teacher", "2a"),
                   describe=_test_score,
                   check=lambda ctx, out: check_dev_trend(
                       ctx, out.dir, "student", ctx.cfg.task_distill.prediction, "task_distill.prediction",
                       floor=("task_distill.min_steps_2b", out.result.get("floored_steps", 0))))
