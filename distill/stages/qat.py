"""Quantization-aware distillation (opt-in, qat.enabled): the distilled (and/or pruned) student with
fake-quantized linear layers, calibrated, trained a short schedule with the prediction-layer losses from
the teacher, frozen and exported as QDQ INT8 ONNX, whose dev/test scores in ONNX Runtime sit beside the
fp32 student's in result.json."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.base.ranks import is_main_process, wait_for_everyone
from distill.engine.batching import to_model_inputs
from distill.engine.evaluation import evaluate
from distill.engine.trainer import train
from distill.passes import onnx as onnx_export
from distill.passes import qat as qat_pass
from distill.passes.quiet import quiet_library_output
from distill.stages.common import (batches_and_labels, cache_teacher_logits, check_dev_trend, load_finetuned,
                                   task_objective, train_set_for)
from distill.stages.context import RunContext
from distill.stages.spec import Output, Stage

SOURCES = {"student-task": "2b", "student-pruned": "prune"}  # qat.models -> the stage it reads
STATE = "qat_state.pt"  # the fake-quantized student's state dict (weights + ranges), in <stage>/<model>/model/


def _reads(cfg) -> tuple[str, ...]:
    return ("teacher",) + tuple(SOURCES[m] for m in cfg.qat.models)


def settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    return {"upstream": [upstream[n] for n in _reads(ctx.cfg)], "qat": ctx.cfg.qat,
            "prediction_losses": ctx.cfg.task_distill.prediction_losses, "seed": ctx.cfg.seed}


def _save_state(trainable, folder: Path) -> None:
    model = getattr(trainable, "student", trainable)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(folder / STATE)


def _calibration_wins(calibrated: float, trained: float | None) -> bool:
    """True when the calibrated-only state scored strictly higher on dev than the best trained one (a NaN
    score never wins; with no trained score the trained state is kept)."""
    if trained is None or math.isnan(calibrated):
        return False
    return math.isnan(trained) or calibrated > trained


def _onnx_scores(ctx: RunContext, path: Path) -> dict:
    """Dev and test scores of an ONNX model in ONNX Runtime (CPU), on the task kind's metric."""
    kind, sess, out = ctx.data.kind, onnx_export.session(path), {}
    for split, examples in (("dev", ctx.data.dev), ("test", ctx.data.test)):
        batches, labels = batches_and_labels(ctx.loader(split, 64), kind)
        masks = [b["attention_mask"] for b in batches]
        flat = np.concatenate([kind.flat_outputs(o, m) for o, m in
                               zip(onnx_export.onnx_batch_logits(sess, batches, kind), masks)])
        out[split] = kind.metrics(kind.unflatten(flat, masks), list(labels), ctx.data.metric,
                                  ctx.data.label_names, examples=examples)
    return out


def _one(ctx: RunContext, stage, name: str, source: Output, teacher, teacher_dir: Path) -> dict:
    cfg, q = ctx.cfg, ctx.cfg.qat
    started = time.perf_counter()
    student = qat_pass.prepare(load_finetuned(source.model_dir))
    calibration = (to_model_inputs(b) for i, b in zip(range(q.calibration_batches),
                                                      ctx.loader("train", 32, shuffle=True)))
    qat_pass.calibrate(student, calibration)
    dev = ctx.loader("dev", 128)
    calibrated = evaluate(student, dev, ctx.data, ctx.data.dev)
    print(f"[qat] {name}: {len(qat_pass.quant_layers(student))} linear layers fake-quantized; dev "
          f"{ctx.data.metric} {calibrated['score']:.4f} calibrated, before training")
    objective = task_objective(ctx, q.losses or cfg.task_distill.prediction_losses, student, teacher)
    # 2b's training rows (augmented when 2b's were): QAT continues 2b's prediction-layer distillation
    train_set = cache_teacher_logits(ctx, objective, teacher, train_set_for(ctx, teacher_dir), q.train.mixed_precision)
    out_dir = stage.dir / name
    if is_main_process():  # one writer; a candidate too: short QAT runs can end below it on dev
        _save_state(student, out_dir / "calibrated")
    wait_for_everyone()
    tracker = ctx.tracker(out_dir, f"qat-{name}")
    result = train(objective, ctx.loader("train", q.train.batch_size, True, train_set), q.train, out_dir,
                   save_model=_save_state, evaluate=lambda m: evaluate(m.student, dev, ctx.data, ctx.data.dev),
                   tracker=tracker, seed=cfg.seed, desc=f"qat {name}")
    check_dev_trend(ctx, out_dir, f"QAT {name}", q.train, "qat.train",
                    " (the fake-quantized student was still gaining when its schedule ended)")
    if not is_main_process():  # the frozen model is exported and scored once, by the main process
        tracker.finish()
        wait_for_everyone()
        return {}
    kept = "calibrated" if _calibration_wins(calibrated["score"], result.best_score) else "trained"
    if kept == "calibrated":
        print(f"[qat] {name}: training never beat the calibrated state on dev ({result.best_score:.4f} < "
              f"{calibrated['score']:.4f}); the calibrated state is kept")
    best = qat_pass.prepare(load_finetuned(source.model_dir))  # the kept (best-on-dev) state, ranges included
    state_dir = out_dir / ("calibrated" if kept == "calibrated" else "model")
    best.load_state_dict(torch.load(state_dir / STATE, map_location="cpu", weights_only=True))
    best = best.cpu().eval()
    qat_pass.freeze(best)
    torch_dev = evaluate(best, dev, ctx.data, ctx.data.dev)
    folder = stage.dir / f"{name}-qat-int8-qdq"
    folder.mkdir(parents=True, exist_ok=True)
    example = {k: v[:1] for k, v in to_model_inputs(next(iter(ctx.loader("dev", 4)))).items()}
    with quiet_library_output(log=stage.dir / "library-warnings.log"):
        qat_pass.export_qdq(best, folder / "model.onnx", example, ctx.data.kind)
    ctx.tokenizer.save_pretrained(folder)
    scores = _onnx_scores(ctx, folder / "model.onnx")
    tracker.summary({"qdq_dev": scores["dev"]["score"], "qdq_test": scores["test"]["score"]})
    tracker.finish()
    entry = {"folder": str(folder), "steps": result.step, "kept": kept,
             "seconds": round(time.perf_counter() - started, 1),
             "fp32": {s: source.result[s] for s in ("dev", "test") if s in source.result},
             "calibrated_dev": calibrated, "fake_quant_dev": torch_dev,
             "qdq": scores, "qdq_nodes": qat_pass.qdq_counts(folder / "model.onnx"),
             "size_mb": (folder / "model.onnx").stat().st_size / 2**20}
    wait_for_everyone()
    fp32 = entry["fp32"].get("test", {}).get("score")
    print(f"[qat] {name} QDQ INT8 (ONNX Runtime): dev {scores['dev']['score']:.4f}, test "
          f"{scores['test']['score']:.4f}" + (f" (fp32 student test {fp32:.4f})" if fp32 is not None else ""))
    return entry


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    teacher_dir = inputs["teacher"].model_dir
    teacher = load_finetuned(teacher_dir)
    return {"models": {name: _one(ctx, stage, name, inputs[SOURCES[name]], teacher, teacher_dir)
                       for name in ctx.cfg.qat.models}}


def _describe(out: Output) -> str:
    return ", ".join(f"{n} QDQ test {e['qdq']['test']['score']:.4f}"
                     for n, e in out.result.get("models", {}).items())


STAGE = Stage("qat", "student-qat", "quantization-aware distillation: fake-quant INT8, exported as QDQ ONNX",
              settings, work, reads=_reads, enabled=lambda cfg: cfg.qat.enabled, artifact="", describe=_describe)
