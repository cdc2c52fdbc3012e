"""The export pass: one model folder in, one checked ONNX folder per format out (fp32, fused, fp16,
INT8 dynamic, INT8 static QDQ), each compared with the PyTorch model on dev batches before it is kept."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.base.fsutil import write_text_atomic
from distill.passes import onnx as onnx_export
from distill.passes.quiet import quiet_library_output
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind

CHECK_FILE = "check.json"  # export/check.json: every format of every model, kept or refused


def export_model(model_dir: Path, out_dir: Path, name: str, formats: list[str], check_batches, check_labels,
                 metric: str, calibration, max_len: int, tensorrt: bool, max_metric_drop: float,
                 kind: TaskKind = SEQUENCE_CLASSIFICATION, label_names: list[str] | None = None,
                 examples=None) -> dict:
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
        return kind.metrics(kind.unflatten(flat_logits, masks), list(check_labels), metric, label_names,
                            examples=examples)["score"]

    with torch.no_grad():
        reference = flat([kind.logits(model(**{k: torch.from_numpy(v) for k, v in b.items()})).numpy()
                          for b in check_batches])
    work = out_dir / f".work-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    refused: dict[str, dict] = {}
    try:
        with quiet_library_output(log=out_dir / "library-warnings.log"):  # one line per model, not per step
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


def write_checks(export_dir: Path, results: dict[str, dict]) -> None:
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
