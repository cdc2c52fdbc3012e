"""Fine-tune a teacher on the task with the one training loop; the result is a Hugging Face folder."""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed
from transformers import AutoModelForSequenceClassification

from distill.context import RunContext
from distill.evaluation import evaluate
from distill.fingerprint import input_digests
from distill.objectives import FineTuneObjective
from distill.run import StageRun, announce_once
from distill.trainer import train
from teachers.load import finetuned_labels, load_classifier, local_model_folder, use_eager_attention


def teacher_stage(ctx: RunContext) -> StageRun:
    cfg = ctx.cfg
    return StageRun(ctx.run_dir, "teacher", {"teacher": cfg.teacher, "task": cfg.task, "seed": cfg.seed,
                                            "inputs": input_digests(cfg, "teacher.name", "task.name", "task.data_dir")})


def load_finetuned(folder: Path):
    return use_eager_attention(AutoModelForSequenceClassification.from_pretrained(folder))


def finetune_teacher(ctx: RunContext) -> Path:
    """The task-fine-tuned teacher folder: trained here, reused when done, or given (already_finetuned)."""
    cfg = ctx.cfg
    if cfg.teacher.already_finetuned:
        folder = local_model_folder(cfg.teacher.name)  # a hub name too
        labels = finetuned_labels(folder)
        if labels is not None and ctx.data.label_names is not None and len(labels) != len(ctx.data.label_names):
            raise ValueError(f"teacher.already_finetuned: {folder} predicts {len(labels)} labels but task "
                             f"{cfg.task.name} has {len(ctx.data.label_names)}")
        return folder
    stage = teacher_stage(ctx)
    if stage.is_done():
        announce_once(str(stage.dir), f"[teacher] reusing {stage.model_dir} (test {stage.result().get('test', {})})")
        return stage.model_dir
    stage.start()
    data = ctx.data
    set_seed(cfg.seed)  # the new classifier head is drawn from the seed, whatever ran before in this process
    model = load_classifier(cfg.teacher.name, data.label_names)
    train_cfg = cfg.teacher.finetune
    dev = ctx.loader("dev", 64)
    tracker = ctx.tracker(stage.dir, "teacher")
    result = train(FineTuneObjective(model), ctx.loader("train", train_cfg.batch_size, shuffle=True), train_cfg,
                   stage.dir, save_model=ctx.saver(), evaluate=lambda m: evaluate(m, dev, data.metric),
                   tracker=tracker, seed=cfg.seed, desc="teacher")
    best = load_finetuned(stage.model_dir)
    scores = {"dev": evaluate(best, dev, data.metric), "test": evaluate(best, ctx.loader("test", 64), data.metric),
              "steps": result.step}
    tracker.summary(scores)
    tracker.finish()
    stage.finish(scores)
    print(f"[teacher] {cfg.teacher.name} on {data.name}: dev {data.metric} {scores['dev']['score']:.4f}, "
          f"test {data.metric} {scores['test']['score']:.4f} -> {stage.model_dir}")
    return stage.model_dir
