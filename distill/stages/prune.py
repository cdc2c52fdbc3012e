"""Prune heads and FFN neurons of the distilled student (torch-pruning), then recover by distillation."""
from __future__ import annotations

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.engine.batching import to_model_inputs
from distill.engine.evaluation import evaluate
from distill.engine.placement import placement
from distill.engine.trainer import train
from distill.passes.prune import prune_model
from distill.stages.common import (cache_teacher_logits, check_dev_trend, final_scores, load_finetuned, print_scores, task_objective)
from distill.stages.context import RunContext
from distill.stages.spec import Output, Stage


def settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    return {"upstream": upstream["2b"], "prune": ctx.cfg.prune, "seed": ctx.cfg.seed}


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    """Prune the distilled student, then recover by distilling from the teacher into the pruned shape."""
    cfg, p = ctx.cfg, ctx.cfg.prune
    teacher = load_finetuned(inputs["teacher"].model_dir)
    student = load_finetuned(inputs["2b"].model_dir)
    ratio = 1.0 - p.target_flops if p.target_flops else p.ratio
    example = {k: v for k, v in to_model_inputs(next(iter(ctx.loader("dev", 4)))).items()}
    before = evaluate(student, ctx.loader("dev", 128), ctx.data, ctx.data.dev)
    pruned, report = prune_model(student, example, ratio, importance=p.importance,
                                 loader=ctx.loader("train", 32, shuffle=True), taylor_batches=p.taylor_batches,
                                 layer_ratios=p.layer_ratios or None, place=placement(p.recovery.mixed_precision),
                                 kind=ctx.data.kind)
    after_prune = evaluate(pruned, ctx.loader("dev", 128), ctx.data, ctx.data.dev)
    print(f"[prune] {report.summary()}\n[prune] dev {ctx.data.metric}: {before['score']:.4f} before, "
          f"{after_prune['score']:.4f} right after pruning; recovering by distillation")
    objective = task_objective(ctx, p.recovery_losses, pruned, teacher, carry_from=[inputs[n].dir for n in ("general", "2a", "2b") if n in inputs])
    train_set = cache_teacher_logits(ctx, objective, teacher, ctx.tokenized["train"], p.recovery.mixed_precision)
    dev = ctx.loader("dev", 128)
    tracker = ctx.tracker(stage.dir, "recovery")
    result = train(objective, ctx.loader("train", p.recovery.batch_size, True, train_set), p.recovery, stage.dir,
                   save_model=ctx.saver(), evaluate=lambda m: evaluate(m.student, dev, ctx.data, ctx.data.dev),
                   tracker=tracker, seed=cfg.seed, desc="recovery")
    scores = final_scores(ctx, stage.model_dir, result.step)
    scores.update(prune=report.__dict__, dev_before_prune=before, dev_right_after_prune=after_prune)
    tracker.summary({"params_after": report.params_after, "flops_after": report.flops_after, **scores})
    tracker.finish()
    print_scores("pruned", scores, ctx)
    return scores


STAGE = Stage("prune", "student-pruned", "heads + FFN neurons removed (torch-pruning), recovery distillation",
              settings, work,
              reads=lambda cfg: ("teacher", "general", "2a", "2b") if cfg.general.enabled else ("teacher", "2a", "2b"),
              enabled=lambda cfg: cfg.prune.enabled,
              describe=lambda out: f"test {out.result['test']['score']:.4f}" if "test" in out.result else "",
              check=lambda ctx, out: check_dev_trend(ctx, out.dir, "pruned student", ctx.cfg.prune.recovery,
                                                     "prune.recovery"))
