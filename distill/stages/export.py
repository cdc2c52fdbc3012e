"""Export: ONNX fp32 / fused / fp16 / INT8 dynamic / INT8 static QDQ of the students (and the teacher's
reference rows), each checked against PyTorch on dev before it is kept."""
from __future__ import annotations

import numpy as np

from distill.engine.batching import to_model_inputs
from distill.passes.export import CHECK_FILE, export_model, refused_formats, write_checks
from distill.stages.common import batches_and_labels, teacher_baseline_formats
from distill.stages.context import RunContext
from distill.stages.spec import Output, Stage

SOURCES = {"teacher": "teacher", "student-task": "2b", "student-pruned": "prune"}  # export.models -> stage


def settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    names = ["teacher", "2b"] + (["prune"] if ctx.cfg.prune.enabled else [])
    return {"upstream": [upstream[n] for n in names], "export": ctx.cfg.export}


def _numpy_batches(loader, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    out = []
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        out.append({k: v.numpy().astype(np.int64) for k, v in to_model_inputs(batch).items()})
    return out


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    """ONNX artifacts for every configured model and format, each checked before it is kept; a format that
    fails its check is refused (left out, reason in export/check.json) and the rest are kept."""
    e = ctx.cfg.export
    sources = {name: inputs[SOURCES[name]].model_dir for name in e.models}
    dev_set = ctx.tokenized["dev"]
    if e.check_examples:
        dev_set = dev_set.select(range(min(e.check_examples, len(dev_set))))
    check_batches, check_labels = batches_and_labels(ctx.loader("dev", 64, dataset=dev_set), ctx.data.kind)
    # each calibration batch at its own length (quantize_int8_qdq feeds them one at a time)
    calibration = _numpy_batches(ctx.loader("train", 32, shuffle=True), e.calibration_batches)
    results = {}
    for name, folder in sources.items():
        results[name] = export_model(folder, stage.dir, name, e.formats, check_batches, check_labels, ctx.data.metric,
                                     calibration, ctx.cfg.task.max_len, e.tensorrt, e.max_metric_drop,
                                     kind=ctx.data.kind, label_names=ctx.data.label_names, examples=ctx.data.dev)
    if teacher_baseline_formats(e):  # reference rows only: a refused format drops its row, never the run
        results["teacher"] = export_model(inputs["teacher"].model_dir, stage.dir, "teacher", teacher_baseline_formats(e),
                                          check_batches, check_labels, ctx.data.metric, calibration,
                                          ctx.cfg.task.max_len, False, e.max_metric_drop, kind=ctx.data.kind,
                                          label_names=ctx.data.label_names, examples=ctx.data.dev)
    write_checks(stage.dir, results)
    refused = refused_formats(stage.dir)
    if refused:
        print(f"[export] refused (left out, the rest kept): {', '.join(refused)}; reasons in {stage.dir / CHECK_FILE}")
    return {"artifacts": results, "refused": refused}


def _reads(cfg) -> tuple[str, ...]:
    return ("teacher", "2b", "prune") if cfg.prune.enabled else ("teacher", "2b")


STAGE = Stage("export", "export", "ONNX fp32 / fused / fp16 / INT8 dynamic / INT8 static QDQ, each checked",
              settings, work, reads=_reads, enabled=lambda cfg: cfg.export.enabled, trains=False, artifact="",
              describe=lambda out: (f"{len(out.result.get('refused', {}))} format(s) refused"
                                    if out.result.get("refused") else ""))
