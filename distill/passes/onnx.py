"""ONNX export, ONNX Runtime graph fusion, quantization (dynamic INT8, static QDQ INT8) and FP16.

Each artifact is a folder (model.onnx + config.json + tokenizer) that ONNX Runtime users can load with
no code of ours. Before a folder is kept, its logits on the dev set are compared with the PyTorch
model it came from (largest logit difference, prediction agreement, and the drop of the task's dev
metric). A format that fails is refused (left out, its figures kept by the caller); the rest are kept.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from distill.tasks.metrics import compute_metrics
from distill.base.fsutil import commit_replace
from distill.passes.quiet import quiet_step
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17

# (max |logit difference|, minimum prediction agreement) a format must meet against its PyTorch source
TOLERANCE = {
    "fp32": (1e-3, 0.999),
    "fp32-fused": (1e-2, 0.995),
    "fp16": (5e-2, 0.99),
    "int8-dynamic": (float("inf"), 0.97),
    "int8-qdq": (float("inf"), 0.95),
}


class ExportCheckError(RuntimeError):
    pass


@dataclass
class CheckResult:
    variant: str
    max_abs_diff: float
    agreement: float
    max_abs_diff_limit: float
    agreement_limit: float
    examples: int
    metric: str  # the task's dev metric, scored on the same examples for the source and the artifact
    reference_score: float  # PyTorch source
    score: float  # this artifact
    metric_drop_limit: float  # largest allowed reference_score - score (0.01 = 1 point of accuracy)
    unit: str = "examples"  # what one compared row is: examples, or real tokens (token classification)

    @property
    def metric_drop(self) -> float:
        """How much worse the artifact scores than its source (negative: better); NaN on one side only is inf."""
        if math.isnan(self.reference_score) and math.isnan(self.score):
            return 0.0
        if math.isnan(self.reference_score) or math.isnan(self.score):
            return math.inf
        return self.reference_score - self.score

    @property
    def ok(self) -> bool:
        return (self.max_abs_diff <= self.max_abs_diff_limit and self.agreement >= self.agreement_limit
                and self.metric_drop <= self.metric_drop_limit)

    def failures(self) -> list[str]:
        """The limits this artifact missed, each with its figure (empty when it passed)."""
        out = []
        if self.max_abs_diff > self.max_abs_diff_limit:
            out.append(f"max logit diff {self.max_abs_diff:.2e} (limit {self.max_abs_diff_limit:g})")
        if self.agreement < self.agreement_limit:
            out.append(f"agreement {self.agreement:.2%} (limit {self.agreement_limit:.1%})")
        if self.metric_drop > self.metric_drop_limit:
            out.append(f"dev {self.metric} drop {100 * self.metric_drop:.2f} points (limit "
                       f"{100 * self.metric_drop_limit:.2f})")
        return out

    def describe(self) -> str:
        return (f"max |logit diff| {self.max_abs_diff:.2e} (limit {self.max_abs_diff_limit:g}), agreement "
                f"{self.agreement:.2%} (limit {self.agreement_limit:.1%}), dev {self.metric} {self.score:.4f} vs "
                f"{self.reference_score:.4f} in PyTorch (drop {100 * self.metric_drop:.2f} points, limit "
                f"{100 * self.metric_drop_limit:.2f}) on {self.examples} dev {self.unit}")

    def to_json(self) -> dict:
        return {**asdict(self), "metric_drop": self.metric_drop, "ok": self.ok}


@quiet_step
def export_fp32(model: nn.Module, path: Path, example: dict[str, torch.Tensor],
                kind: TaskKind = SEQUENCE_CLASSIFICATION) -> None:
    """TorchScript-based export (dynamo=False): with eager attention ORT's optimizer can fuse it.
    The graph's outputs are the task kind's (``logits``; QA: ``start_logits`` and ``end_logits``), with
    its dynamic axes, e.g. (batch, sequence) for per-token outputs. The model is exported in eval mode with
    eager attention and handed back as it came (training flag and attention kernel restored)."""
    was_training, attention = model.training, getattr(model.config, "_attn_implementation", None)
    model.eval()
    model.set_attn_implementation("eager")
    try:
        _export(model, path, example, kind)
    finally:
        model.train(was_training)
        if attention and attention != "eager":
            model.set_attn_implementation(attention)
    onnx.checker.check_model(str(path))


def _export(model: nn.Module, path: Path, example: dict[str, torch.Tensor], kind: TaskKind) -> None:
    names = [n for n in INPUTS if n in example]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(kind.onnx_axes())

    class Outputs(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return tuple(getattr(out, n) for n in kind.output_names)

    with torch.no_grad():
        torch.onnx.export(Outputs(model), tuple(example[n] for n in INPUTS), str(path), input_names=list(INPUTS),
                          output_names=list(kind.output_names), dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)


@quiet_step
def fuse(src: Path, dst: Path, num_heads: int, hidden_size: int):
    """ORT transformer optimizer: fused Attention / SkipLayerNorm / BiasGelu. Returns the optimizer model."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1,
                         use_gpu=False)
    opt.save_model_to_file(str(dst))
    return opt


def fused_op_counts(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@quiet_step
def quantize_int8_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


class _Calibration:
    """CalibrationDataReader over a few task batches (the inputs TensorRT will also see), served one batch
    at a time (``set_range``), so batches keep their own lengths: no padding to a common shape, whose
    activations would also enter the calibration ranges."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.all = batches
        self.batches = iter(batches)

    def __len__(self) -> int:
        return len(self.all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.batches = iter(self.all[start_index:end_index])

    def get_next(self):
        return next(self.batches, None)


@quiet_step
def quantize_int8_qdq(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> None:
    """Static INT8 in QDQ form (symmetric, per-channel weights): the explicit quantization TensorRT builds from.
    The percentile histograms are collected batch by batch (CalibStridedMinMax=1: ORT merges them)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name("pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.Percentile,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibStridedMinMax": 1})
    pre.unlink(missing_ok=True)


@quiet_step
def to_fp16(optimizer_model, dst: Path) -> None:
    optimizer_model.convert_float_to_float16(keep_io_types=True)
    optimizer_model.save_model_to_file(str(dst))


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_logits(sess: ort.InferenceSession, feed: dict[str, np.ndarray],
               kind: TaskKind = SEQUENCE_CLASSIFICATION) -> np.ndarray:
    """The pipeline's logits of one batch from an ONNX session (the kind joins its named outputs)."""
    wanted = {i.name for i in sess.get_inputs()}
    return kind.join_outputs(sess.run(list(kind.output_names), {k: v for k, v in feed.items() if k in wanted}))


def onnx_logits(sess: ort.InferenceSession, batches: list[dict[str, np.ndarray]],
                kind: TaskKind = SEQUENCE_CLASSIFICATION) -> np.ndarray:
    return np.concatenate([run_logits(sess, b, kind) for b in batches])


def onnx_batch_logits(sess: ort.InferenceSession, batches: list[dict[str, np.ndarray]],
                      kind: TaskKind = SEQUENCE_CLASSIFICATION) -> list[np.ndarray]:
    """Logits per batch (per-token logits of different batches have different lengths)."""
    return [run_logits(sess, b, kind) for b in batches]


# regression: an artifact's score "agrees" with its source's when within this fraction of the labels' standard
# deviation (a fixed absolute width would be strict for labels spread over -4..4 and loose for 0..1)
REGRESSION_AGREEMENT_SD = 0.25


def regression_width(labels) -> float:
    """How close two regression outputs must be to count as agreeing: a quarter of the labels' spread."""
    values = np.asarray(labels, dtype=np.float64).reshape(-1)
    sd = float(values.std()) if len(values) > 1 else 0.0
    return REGRESSION_AGREEMENT_SD * sd if sd > 0 else 0.1


def check(variant: str, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, metric: str,
          max_metric_drop: float, score_fn: Callable[[np.ndarray], float] | None = None,
          unit: str = "examples", kind: TaskKind = SEQUENCE_CLASSIFICATION) -> CheckResult:
    """Compare an artifact's dev logits (n, C) with its PyTorch source's, and both with the dev labels.
    ``score_fn(logits) -> dev score`` replaces compute_metrics when a task kind scores otherwise (e.g.
    NER: rows are real tokens, the metric is entity F1 over sentences); ``unit`` names what a row is."""
    if score_fn is None and len(labels) != len(reference):
        raise ValueError(f"{len(labels)} dev labels for {len(reference)} logits rows")
    limit_diff, limit_agree = TOLERANCE[variant]
    diff = float(np.abs(reference - candidate).max())
    if reference.shape[-1] == 1:  # regression: agreement = within a quarter of the labels' sd of the reference
        agree = float(np.mean(np.abs(reference - candidate).reshape(-1) < regression_width(labels)))
    else:
        agree = kind.agreement(reference, candidate)  # argmax agreement; QA: near-ties count as agreeing
    if score_fn is None:
        score_fn = lambda logits: compute_metrics(logits, labels, metric)["score"]  # noqa: E731
    return CheckResult(variant, diff, agree, limit_diff, limit_agree, len(reference), metric, score_fn(reference),
                       score_fn(candidate), max_metric_drop, unit)


def write_folder(onnx_path: Path, folder: Path, model_dir: Path, result: CheckResult, extra: dict) -> None:
    """Fill a new folder: model.onnx + config.json + tokenizer files + check.json."""
    folder.mkdir(parents=True)
    shutil.move(str(onnx_path), folder / "model.onnx")
    for item in Path(model_dir).iterdir():
        if item.suffix in (".json", ".txt") and item.name != "check.json":
            shutil.copy(item, folder / item.name)
    (folder / "check.json").write_text(json.dumps({**result.to_json(), **extra}, indent=1))


def swap_in(staged: Path, folder: Path) -> None:
    """Put a finished folder in place of ``folder``: at every instant ``folder`` or ``folder.old`` is complete."""
    commit_replace(folder, staged)


def trtexec_command(onnx_path: Path, precision: str, max_len: int, max_batch: int = 32) -> str:
    shapes = lambda b, s: ",".join(f"{n}:{b}x{s}" for n in INPUTS)  # noqa: E731
    flags = "--fp16" if precision == "fp16" else "--int8 --fp16"
    return (f"trtexec --onnx={onnx_path} --saveEngine={Path(onnx_path).with_suffix('.plan')} {flags} "
            f"--minShapes={shapes(1, 1)} --optShapes={shapes(1, max_len)} --maxShapes={shapes(max_batch, max_len)}")


def build_tensorrt_engine(onnx_path: Path, precision: str, max_len: int, max_batch: int = 32) -> Path | None:
    """Build a TensorRT engine where tensorrt is importable (e.g. a Jetson); otherwise return None."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name in INPUTS:
        profile.set_shape(name, (1, 1), (1, max_len), (max_batch, max_len))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    path = Path(onnx_path).with_suffix(".plan")
    path.write_bytes(engine)
    return path

