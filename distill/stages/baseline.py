"""The no-teacher baseline: the same student (shape and init) fine-tuned on the gold labels alone."""
from __future__ import annotations

from distill.engine.evaluation import evaluate
from distill.engine.objectives import FineTuneObjective
from distill.engine.trainer import train
from distill.fingerprint import input_digests
from distill.stages.common import final_scores, print_scores, student_shape
from distill.stages.context import RunContext
from distill.stages.spec import Output, Stage
from students.build import build_student
from teachers.load import load_backbone


def settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    cfg = ctx.cfg
    return {"student": cfg.student, "task": cfg.task, "seed": cfg.seed, "train": cfg.task_distill.prediction,
            "teacher": cfg.teacher.name,
            "inputs": input_digests(cfg, "teacher.name", "student.init", "task.name", "task.data_dir")}


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    """No distillation anywhere: with init=teacher the layers come from the *pretrained* teacher (as when
    fine-tuning a truncated model), never from the fine-tuned one or a distilled general student."""
    cfg, t = ctx.cfg, ctx.cfg.task_distill
    teacher = load_backbone(cfg.teacher.name)
    student = build_student(student_shape(ctx), teacher, kind=ctx.data.kind.student_kind,
                            label_names=ctx.data.label_names,
                            init=cfg.student.init, init_layers=cfg.student.init_layers,
                            init_layer_list=cfg.student.init_layer_list, seed=cfg.seed)
    del teacher
    dev = ctx.loader("dev", 128)
    tracker = ctx.tracker(stage.dir, "baseline")
    result = train(FineTuneObjective(student, ctx.data.kind), ctx.loader("train", t.prediction.batch_size, True),
                   t.prediction, stage.dir, save_model=ctx.saver(), evaluate=lambda m: evaluate(m, dev, ctx.data, ctx.data.dev),
                   tracker=tracker, seed=cfg.seed, desc="baseline")
    scores = final_scores(ctx, stage.model_dir, result.step)
    tracker.summary(scores)
    tracker.finish()
    return scores


STAGE = Stage("baseline", "student-baseline", "the same student fine-tuned without a teacher, for comparison",
              settings, work, check=lambda ctx, out: print_scores("baseline", out.result, ctx),
              describe=lambda out: f"test {out.result['test']['score']:.4f}" if "test" in out.result else "")
