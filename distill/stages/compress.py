"""Compression stages of a run: prune + recovery distillation, then ONNX export and quantization."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.passes import onnx as onnx_export
from distill.engine.batching import to_model_inputs
from distill.stages.context import RunContext
from distill.stages.distillation import (_final_scores, _print_scores, cache_teacher_logits, prediction_stage, run_prediction,
                                  task_objective, task_stage_dirs)
from distill.engine.evaluation import evaluate
from distill.base.fsutil import write_text_atomic
from distill.engine.placement import placement
from distill.passes.prune import prune_model
from distill.stages.records import StageRun, announce_once
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind
from distill.engine.trainer import train
from distill.stages.teacher import finetune_teacher, load_finetuned, teacher_stage


CHECK_FILE = "check.json"  # export/check.json: every format of every model, kept or refused


def prune_stage(ctx: RunContext) -> StageRun:
    return StageRun(ctx.run_dir, "student-pruned", {"upstream": prediction_stage(ctx).fingerprint,
                                                    "prune": ctx.cfg.prune, "seed": ctx.cfg.seed})


def run_prune(ctx: RunContext) -> Path:
    """Prune the distilled student, then recover by distilling from the teacher into the pruned shape."""
    cfg, p = ctx.cfg, ctx.cfg.prune
    source = run_prediction(ctx)
    stage = prune_stage(ctx)
    if stage.is_done():
        announce_once(str(stage.dir), f"[pruned] reusing {stage.model_dir} (test {stage.result()['test']['score']:.4f})")
        return stage.model_dir
    teacher = load_finetuned(finetune_teacher(ctx))
    student = load_finetuned(source)
    ratio = 1.0 - p.target_flops if p.target_flops else p.ratio
    example = {k: v for k, v in to_model_inputs(next(iter(ctx.loader("dev", 4)))).items()}
    stage.start()
    before = evaluate(student, ctx.loader("dev", 128), ctx.data)
    pruned, report = prune_model(student, example, ratio, importance=p.importance,
                                 loader=ctx.loader("train", 32, shuffle=True), taylor_batches=p.taylor_batches,
                                 layer_ratios=p.layer_ratios or None, place=placement(p.recovery.mixed_precision),
                                 kind=ctx.data.kind)
    after_prune = evaluate(pruned, ctx.loader("dev", 128), ctx.data)
    print(f"[prune] {report.summary()}\n[prune] dev {ctx.data.metric}: {before['score']:.4f} before, "
          f"{after_prune['score']:.4f} right after pruning; recovering by distillation")
    objective = task_objective(ctx, p.recovery_losses, pruned, teacher, carry_from=task_stage_dirs(ctx))
    train_set = cache_teacher_logits(ctx, objective, teacher, ctx.tokenized["train"], p.recovery.mixed_precision)
    dev = ctx.loader("dev", 128)
    tracker = ctx.tracker(stage.dir, "recovery")
    result = train(objective, ctx.loader("train", p.recovery.batch_size, True, train_set), p.recovery, stage.dir,
                   save_model=ctx.saver(), evaluate=lambda m: evaluate(m.student, dev, ctx.data),
                   tracker=tracker, seed=cfg.seed, desc="recovery")
    scores = _final_scores(ctx, stage.model_dir, result.step)
    scores.update(prune=report.__dict__, dev_before_prune=before, dev_right_after_prune=after_prune)
    tracker.summary({"params_after": report.params_after, "flops_after": report.flops_after, **scores})
    tracker.finish()
    stage.finish(scores)
    _print_scores("pruned", scores, ctx)
    return stage.model_dir


# ---------------------------------------------------------------------------------------------------


def export_stage(ctx: RunContext) -> StageRun:
    upstream = [teacher_stage(ctx).fingerprint, prediction_stage(ctx).fingerprint]
    if ctx.cfg.prune.enabled:
        upstream.append(prune_stage(ctx).fingerprint)
    return StageRun(ctx.run_dir, "export", {"upstream": upstream, "export": ctx.cfg.export})


def _numpy_batches(loader, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    out = []
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        out.append({k: v.numpy().astype(np.int64) for k, v in to_model_inputs(batch).items()})
    return out


def _batches_and_labels(loader, kind: TaskKind = SEQUENCE_CLASSIFICATION) -> tuple[list[dict[str, np.ndarray]], list]:
    """Model inputs and the labels of the same rows (per example; per-token rows unpadded), in loader order."""
    batches, labels = [], []
    for batch in loader:
        batches.append({k: v.numpy().astype(np.int64) for k, v in to_model_inputs(batch).items()})
        labels += kind.label_rows(batch["labels"].numpy(), batches[-1]["attention_mask"])
    return batches, kind.collect(labels)


def _source_dir(ctx: RunContext, name: str) -> Path:
    if name == "teacher":
        return finetune_teacher(ctx)
    if name == "student-task":
        return run_prediction(ctx)
    return run_prune(ctx)


def run_export(ctx: RunContext) -> Path:
    """ONNX artifacts for every configured model and format, each checked before it is kept."""
    e = ctx.cfg.export
    sources = {name: _source_dir(ctx, name) for name in e.models}
    stage = export_stage(ctx)
    if stage.is_done():
        announce_once(str(stage.dir), f"[export] reusing {stage.dir}")
        return stage.dir
    stage.start()
    dev_set = ctx.tokenized["dev"]
    if e.check_examples:
        dev_set = dev_set.select(range(min(e.check_examples, len(dev_set))))
    check_batches, check_labels = _batches_and_labels(ctx.loader("dev", 64, dataset=dev_set), ctx.data.kind)
    # each calibration batch at its own length (quantize_int8_qdq feeds them one at a time)
    calibration = _numpy_batches(ctx.loader("train", 32, shuffle=True), e.calibration_batches)
    results = {}
    for name, folder in sources.items():
        results[name] = export_model(folder, stage.dir, name, e.formats, check_batches, check_labels, ctx.data.metric,
                                     calibration, ctx.cfg.task.max_len, e.tensorrt, e.max_metric_drop,
                                     kind=ctx.data.kind, label_names=ctx.data.label_names)
    if teacher_baseline_formats(e):  # reference rows only: a refused format drops its row, never the run
        results["teacher"] = export_model(finetune_teacher(ctx), stage.dir, "teacher", teacher_baseline_formats(e),
                                          check_batches, check_labels, ctx.data.metric, calibration,
                                          ctx.cfg.task.max_len, False, e.max_metric_drop, kind=ctx.data.kind,
                                          label_names=ctx.data.label_names)
    _write_checks(stage.dir, results)
    refused = refused_formats(stage.dir)
    if refused:
        print(f"[export] refused (left out, the rest kept): {', '.join(refused)}; reasons in {stage.dir / CHECK_FILE}")
    stage.finish({"artifacts": results, "refused": refused})
    return stage.dir


def teacher_baseline_formats(e) -> list[str]:
    """Formats the teacher is exported in for the bench's runtime rows (none when it is a model to ship)."""
    return [] if "teacher" in e.models else list(e.teacher_formats)


def export_model(model_dir: Path, out_dir: Path, name: str, formats: list[str], check_batches, check_labels,
                 metric: str, calibration, max_len: int, tensorrt: bool, max_metric_drop: float,
                 kind: TaskKind = SEQUENCE_CLASSIFICATION, label_names: list[str] | None = None) -> dict:
    """Every requested format of one model folder that passes its check, into out_dir/<name>-<format>/.

    Every format is built and checked in a work folder first; each that passes replaces
    out_dir/<name>-<format>/ whole. A format that fails its check (or cannot be built) is refused: no
    folder is written for it, an earlier folder of it is left as it was, and its entry in the returned
    dict (and out_dir/<name>.json) is ``{"refused": True, "reason": ..., "check": ...}``. On an error
    the work folder is removed and earlier artifacts stay.
    Logits are compared per example, or per real (non-padding) token for per-token logits; the dev
    metric is the task kind's (entity F1, word-aligned, for NER)."""
    model = kind.auto_class.from_pretrained(model_dir).eval()
    masks = [b["attention_mask"] for b in check_batches]

    def flat(per_batch: list[np.ndarray]) -> np.ndarray:  # (examples or real tokens, labels)
        return np.concatenate([kind.flat_outputs(out, mask) for out, mask in zip(per_batch, masks)])

    def score(flat_logits: np.ndarray) -> float:
        return kind.metrics(kind.unflatten(flat_logits, masks), list(check_labels), metric, label_names)["score"]

    with torch.no_grad():
        reference = flat([kind.logits(model(**{k: torch.from_numpy(v) for k, v in b.items()})).numpy()
                          for b in check_batches])
    work = out_dir / f".work-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    refused: dict[str, dict] = {}
    try:
        made, build_errors = _build_formats(model, work, formats, check_batches, calibration, kind)
        refused.update({variant: {"refused": True, "reason": f"could not be built: {err}"}
                        for variant, err in build_errors.items()})
        checks = {variant: onnx_export.check(variant, reference,
                                             flat(onnx_export.onnx_batch_logits(onnx_export.session(path),
                                                                                check_batches, kind)),
                                             check_labels, metric, max_metric_drop, score_fn=score,
                                             unit=kind.prediction_unit, kind=kind)
                  for variant, path in made.items()}
        for variant, result in checks.items():
            print(f"[export] {name} {variant}: {result.describe()}" + ("" if result.ok else "  REFUSED (left out)"))
            if not result.ok:
                refused[variant] = {"refused": True, "reason": "check failed: " + "; ".join(result.failures()),
                                    "check": result.to_json()}
        for variant, entry in refused.items():
            if "check" not in entry:
                print(f"[export] {name} {variant}: REFUSED (left out): {entry['reason']}")
        kept = [variant for variant in formats if variant not in refused]
        staged = {variant: _stage_folder(made[variant], work / f"{name}-{variant}", out_dir / f"{name}-{variant}",
                                         model_dir, checks[variant], max_len, tensorrt)
                  for variant in kept}
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    results = {}
    for variant in formats:  # the formats that passed replace their earlier artifacts; refused ones are left out
        if variant in refused:
            results[variant] = refused[variant]
            continue
        folder = out_dir / f"{name}-{variant}"
        onnx_export.swap_in(staged[variant], folder)
        results[variant] = {"folder": str(folder), "check": checks[variant].to_json(),
                            "size_mb": (folder / "model.onnx").stat().st_size / 2**20}
    shutil.rmtree(work, ignore_errors=True)
    write_text_atomic(out_dir / f"{name}.json", json.dumps(results, indent=1))
    return results


def refused_formats(export_dir: Path) -> dict[str, str]:
    """``{"<model>-<format>": reason}`` of every format the export stage left out (read from check.json)."""
    path = Path(export_dir) / CHECK_FILE
    if not path.is_file():
        return {}
    return {key: entry["reason"] for key, entry in json.loads(path.read_text()).items() if entry.get("refused")}


def _write_checks(export_dir: Path, results: dict[str, dict]) -> None:
    """export/check.json: every model's every format, kept (with its check) or refused (with the reason)."""
    flat = {f"{name}-{variant}": entry for name, per_format in results.items() for variant, entry in per_format.items()}
    write_text_atomic(Path(export_dir) / CHECK_FILE, json.dumps(flat, indent=1))


def _build_formats(model, work: Path, formats: list[str], check_batches, calibration,
                   kind: TaskKind = SEQUENCE_CLASSIFICATION) -> tuple[dict[str, Path], dict[str, str]]:
    """Write <work>/<format>.onnx for every requested format. Returns ({format: path}, {format: error}):
    fp32 and its fused graph are the base every format starts from (an error there stops the pass); a
    derived format (fp16, INT8) that cannot be built is reported and refused, not fatal."""
    example = {k: torch.from_numpy(v[:1]) for k, v in check_batches[0].items()}
    fp32 = work / "fp32.onnx"
    onnx_export.export_fp32(model, fp32, example, kind)
    config = model.config
    layer_heads = getattr(config, "layer_heads", None)
    uniform = not layer_heads or len(set(layer_heads)) == 1
    heads = (layer_heads[0] if layer_heads else config.num_attention_heads) if uniform else 0
    head_size = getattr(config, "head_size", config.hidden_size // config.num_attention_heads)
    fused = work / "fp32-fused.onnx"
    optimizer_model = onnx_export.fuse(fp32, fused, heads, heads * head_size)  # 0, 0: detect per layer
    made = {"fp32": fp32, "fp32-fused": fused}
    builders = {"fp16": lambda path: onnx_export.to_fp16(optimizer_model, path),
                "int8-dynamic": lambda path: onnx_export.quantize_int8_dynamic(fused, path),
                "int8-qdq": lambda path: onnx_export.quantize_int8_qdq(fp32, path, calibration)}
    errors = {}
    for variant, build in builders.items():
        if variant in formats:
            try:
                build(work / f"{variant}.onnx")
                made[variant] = work / f"{variant}.onnx"
            except Exception as err:  # noqa: BLE001 (ONNX Runtime raises its own classes; the reason is kept)
                errors[variant] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return {variant: made[variant] for variant in formats if variant in made}, errors


def _stage_folder(onnx_path: Path, staged: Path, final: Path, model_dir: Path, result, max_len: int,
                  tensorrt: bool) -> Path:
    """The artifact folder, complete (TensorRT engine or command included), written at ``staged``."""
    extra = {"fused_ops": {k: v for k, v in onnx_export.fused_op_counts(onnx_path).items()
                           if k in ("Attention", "SkipLayerNormalization", "BiasGelu", "QLinearMatMul",
                                    "DynamicQuantizeMatMul", "MatMulInteger", "QuantizeLinear")}}
    onnx_export.write_folder(onnx_path, staged, model_dir, result, extra)
    variant = result.variant
    if variant in ("fp16", "int8-qdq") and tensorrt:
        precision = "fp16" if variant == "fp16" else "int8"
        engine = onnx_export.build_tensorrt_engine(staged / "model.onnx", precision, max_len)
        if engine is None:
            cmd = onnx_export.trtexec_command(final / "model.onnx", precision, max_len)
            (staged / "tensorrt.txt").write_text(cmd + "\n")
            print(f"[export] tensorrt is not installed here; on the target device run:\n  {cmd}")
    return staged
