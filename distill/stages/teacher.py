"""Fine-tune a teacher on the task with the one training loop; the result is a Hugging Face folder.

Then the teacher gate: a teacher whose dev score does not beat the task's trivial baseline (majority
class, ...) by ``teacher.gate_margin`` has learned nothing worth distilling, and the run stops here
with the evidence and the likely fixes (``teacher.gate=warn`` goes on anyway).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

from accelerate.utils import set_seed

from distill.stages.context import RunContext
from distill.engine.evaluation import evaluate
from distill.fingerprint import input_digests
from distill.engine.objectives import FineTuneObjective
from distill.stages.common import check_dev_trend, load_finetuned
from distill.stages.records import announce_once
from distill.stages.spec import Output, Stage
from distill.engine.placement import placement
from distill.report.summary import (max_len_cost, read_json_on_every_rank, run_summary, score_report, summary_baseline,
                            write_json_once)
from distill.engine.trainer import train
from teachers.load import finetuned_labels, load_classifier, local_model_folder
from distill.base.errors import InputError
from distill.base.errors import UserError

GATE_KEYS = ("gate", "gate_margin")  # what to do with the result, not how it is built: not fingerprinted
GIVEN_TEACHER_FILE = "teacher-given.json"  # dev score of an already fine-tuned teacher, evaluated once


class TeacherGateError(UserError, RuntimeError):
    """The fine-tuned teacher is no better than the trivial baseline on dev."""


def settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    cfg = ctx.cfg
    teacher = {f.name: getattr(cfg.teacher, f.name) for f in fields(cfg.teacher) if f.name not in GATE_KEYS}
    return {"teacher": teacher, "task": cfg.task, "seed": cfg.seed,
            "inputs": input_digests(cfg, "teacher.name", "task.name", "task.data_dir")}


def given(ctx: RunContext) -> Output:
    """teacher.already_finetuned: the user's folder stands in for this stage (checked, scored on dev once)."""
    cfg = ctx.cfg
    folder = local_model_folder(cfg.teacher.name)  # a hub name too
    labels = finetuned_labels(folder)  # from AutoConfig: default LABEL_i names when none were saved
    if labels is not None and ctx.data.label_names is not None and len(labels) != len(ctx.data.label_names):
        raise InputError(f"teacher.already_finetuned: {folder} predicts {len(labels)} labels but task "
                         f"{cfg.task.name} has {len(ctx.data.label_names)}")
    return Output(folder, folder, _given_teacher_scores(ctx, folder))


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    """Fine-tune the pretrained teacher on the task; dev and test scores of its best checkpoint."""
    cfg, data = ctx.cfg, ctx.data
    set_seed(cfg.seed)  # the new classifier head is drawn from the seed, whatever ran before in this process
    model = load_classifier(cfg.teacher.name, data.label_names, data.kind)
    train_cfg = cfg.teacher.finetune
    dev = ctx.loader("dev", 64)
    tracker = ctx.tracker(stage.dir, "teacher")
    result = train(FineTuneObjective(model, data.kind), ctx.loader("train", train_cfg.batch_size, shuffle=True), train_cfg,
                   stage.dir, save_model=ctx.saver(), evaluate=lambda m: evaluate(m, dev, data, data.dev),
                   tracker=tracker, seed=cfg.seed, desc="teacher")
    best = load_finetuned(stage.model_dir).to(placement("no").device)  # scored on the accelerator, full precision
    scores = {"dev": evaluate(best, dev, data, data.dev), "test": evaluate(best, ctx.loader("test", 64), data, data.test),
              "steps": result.step}
    tracker.summary(scores)
    tracker.finish()
    print(f"[teacher] {cfg.teacher.name} on {data.name}: {score_report(ctx, scores)} -> {stage.model_dir}")
    return scores


def check(ctx: RunContext, output: Output) -> None:
    """Every command that uses the teacher (trained, reused or given) passes the gate first; a teacher
    trained here is also checked for a dev score that was still rising when training stopped."""
    check_teacher(ctx, output.result)
    if not ctx.cfg.teacher.already_finetuned:
        check_trend(ctx, output.dir)


STAGE = Stage("teacher", "teacher", "fine-tune the pretrained teacher on the task", settings, work,
              is_given=lambda cfg: cfg.teacher.already_finetuned, given=given, check=check,
              describe=lambda out: f"dev {out.result['dev']['score']:.4f}" if "dev" in out.result else "")


def _given_teacher_scores(ctx: RunContext, folder: Path) -> dict:
    """Dev score of an already fine-tuned teacher, kept in the run folder so later commands reuse it."""
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    key = json.dumps({"folder": str(folder.resolve()), "task": asdict(ctx.cfg.task),
                      "inputs": input_digests(ctx.cfg, "task.name", "task.data_dir"),
                      "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]}, sort_keys=True)
    fingerprint = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = ctx.run_dir / GIVEN_TEACHER_FILE
    stored = read_json_on_every_rank(path)
    if stored.get("fingerprint") == fingerprint:
        return stored["scores"]
    model = load_finetuned(folder).to(placement("no").device)
    scores = {"dev": evaluate(model, ctx.loader("dev", 64), ctx.data, ctx.data.dev)}
    write_json_once(path, {"fingerprint": fingerprint, "scores": scores})
    announce_once(str(path), f"[teacher] given fine-tuned teacher {folder}: {score_report(ctx, scores)}")
    return scores


def check_teacher(ctx: RunContext, scores: dict) -> None:
    """The teacher gate: raise TeacherGateError (gate=stop) or warn (gate=warn) when the teacher's dev
    score is below the trivial baseline's + teacher.gate_margin."""
    t = ctx.cfg.teacher
    summary = run_summary(ctx)
    baseline = summary_baseline(summary)
    key = f"gate:{ctx.run_dir}:{scores['dev']['score']}"
    if baseline is None:
        announce_once(key, f"[teacher] gate skipped: no trivial baseline is registered for metric {summary['metric']}")
        return
    dev, reference = scores["dev"]["score"], baseline.reference("dev")
    if dev >= reference + t.gate_margin:  # False for NaN (e.g. Pearson of a constant prediction)
        announce_once(key, f"[teacher] gate passed (dev {baseline.metric} {dev:.4f} >= baseline {reference:.4f} "
                           f"+ teacher.gate_margin {t.gate_margin})")
        return
    message = gate_message(ctx, scores, summary)
    if t.gate == "stop":
        raise TeacherGateError(message)
    announce_once(key, "[teacher] WARNING " + message)


def gate_message(ctx: RunContext, scores: dict, summary: dict) -> str:
    """One line per fact: the evidence, then the likely fixes."""
    cfg, t = ctx.cfg, ctx.cfg.teacher
    baseline = summary_baseline(summary)
    metric, reference = baseline.metric, baseline.reference("dev")
    train = summary["splits"]["train"]
    outcome = "stopped before distillation" if t.gate == "stop" else "going on anyway (teacher.gate=warn)"
    lines = [f"teacher gate: the teacher does not beat the trivial baseline on dev by teacher.gate_margin="
             f"{t.gate_margin}, so it has little to teach; {outcome}",
             f"  evidence: teacher dev {metric} {scores['dev']['score']:.4f} vs {baseline.describe('dev')} "
             f"(needs >= {reference + t.gate_margin:.4f})"]
    if "test" in scores:
        lines.append(f"  evidence: teacher test {metric} {scores['test']['score']:.4f} vs {baseline.describe('test')}")
    if baseline.note:
        lines.append(f"  evidence: {baseline.note}")
    if "tokens" in train:
        lines.append(f"  evidence: {train['truncated_share']:.1%} of {train['examples']} train examples are truncated "
                     f"at task.max_len={summary['max_len']} (token length p50 {train['tokens']['p50']}, "
                     f"p90 {train['tokens']['p90']})")
    warning = summary.get("truncation_warning")
    if t.already_finetuned:
        lines += [f"  evidence: {t.name} was given as already fine-tuned (teacher.already_finetuned=true)",
                  "  fix: check that it was fine-tuned on this task with the same label order "
                  f"({', '.join(ctx.data.label_names or ['regression'])})",
                  "  fix: or fine-tune it here: teacher.already_finetuned=false"]
    else:
        f = t.finetune
        trained = f"{scores['steps']} optimizer steps, " if "steps" in scores else ""
        lines.append(f"  evidence: fine-tuned for {trained}teacher.finetune.epochs={f.epochs:g}"
                     + (f", max_steps={f.max_steps}" if f.max_steps else "") + f", lr={f.lr:g}")
        more = (f"teacher.finetune.max_steps={f.max_steps * 3} (now {f.max_steps})" if f.max_steps
                else f"teacher.finetune.epochs={f.epochs * 3:g} (now {f.epochs:g})")
        lines.append(f"  fix: train longer: {more}")
        if warning and warning["suggested_max_len"] > summary["max_len"]:
            lines.append(f"  fix: a larger max_len, since {warning['share']:.1%} of train examples are cut: "
                         f"task.max_len={warning['suggested_max_len']}, which {max_len_cost(summary)}")
        lines.append(f"  fix: a lower learning rate: teacher.finetune.lr={f.lr / 4:.1e} (now {f.lr:g})")
        lines.append("  fix: check that the labels follow from the texts (`make inspect` shows the label counts)")
        lines.append(f"  note: changed teacher settings need a new run_id=... (this run's teacher folder "
                     f"{ctx.run_dir / 'teacher'} is kept)")
    if t.gate == "stop":
        lines.append("  to go on anyway: teacher.gate=warn")
    return "\n".join(lines)


def check_trend(ctx: RunContext, stage_dir: Path) -> dict | None:
    """Read the teacher's dev history from its metrics.jsonl, keep it as ``trend.json`` for the report, and
    warn (once per process) when the dev score was still rising when training stopped."""
    return check_dev_trend(ctx, stage_dir, "teacher", ctx.cfg.teacher.finetune, "teacher.finetune",
                           " (a student learns at most what its teacher knows)")
