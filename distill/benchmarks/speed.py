"""Speed benchmark at BERT-large scale: a PyTorch fp32 teacher of BERT-large's exact shape against a
TinyBERT-4-shaped student as fused INT8 ONNX, batch 1, seq 128, CPU, measured in one process.

Random weights are fine for speed. Prints both latencies, the measured ratio and the ideal ratio
(FLOP ratio x 4 for INT8), and where the student's time goes (ONNX Runtime's per-op profile).

    python -m distill.benchmarks.speed [--threads N] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from distill.passes import onnx as onnx_export
from distill.stages.bench import _time, synthetic
from distill.passes.flops import encoder_flops

BERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
TINYBERT_4 = dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)


VOCAB_SIZE = 30522  # BERT-base/large uncased


def _model(shape: dict) -> BertForSequenceClassification:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=VOCAB_SIZE, num_labels=2, **shape)).eval()
    return model


def _profile(sess_path: Path, feed: dict, threads: int, runs: int = 20) -> dict[str, float]:
    """Milliseconds per run by operator type; ONNX Runtime's trace file goes to a temporary folder."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as trace_dir:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(trace_dir) / "ort_profile")  # default: ./onnxruntime_profile_*
        sess = ort.InferenceSession(str(sess_path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(["logits"], feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1000.0 / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for both")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model after warm-up")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    feed = synthetic(1, 128, VOCAB_SIZE)
    teacher = _model(BERT_LARGE)
    teacher.set_attn_implementation("sdpa")
    with torch.inference_mode():
        t_ms = _time(lambda f: teacher(**{k: torch.from_numpy(v) for k, v in f.items()}), [feed], args.repeats, 3)
    student = _model(TINYBERT_4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_export.export_fp32(student, tmp / "fp32.onnx", {k: torch.from_numpy(v) for k, v in feed.items()})
        onnx_export.fuse(tmp / "fp32.onnx", tmp / "fused.onnx", 12, 312)
        onnx_export.quantize_int8_dynamic(tmp / "fused.onnx", tmp / "int8.onnx")
        sess = onnx_export.session(tmp / "int8.onnx", args.threads)
        s_ms = _time(lambda f: sess.run(["logits"], f), [feed], args.repeats * 10, 10)
        fp32_sess = onnx_export.session(tmp / "fused.onnx", args.threads)
        f_ms = _time(lambda f: fp32_sess.run(["logits"], f), [feed], args.repeats * 10, 10)
        profile = _profile(tmp / "int8.onnx", feed, args.threads)
    flop_ratio = encoder_flops(teacher, 128) / encoder_flops(student, 128)
    result = {"threads": args.threads, "teacher_pytorch_fp32_ms": float(np.median(t_ms)),
              "student_ort_fp32_fused_ms": float(np.median(f_ms)), "student_ort_int8_ms": float(np.median(s_ms)),
              "measured_speedup": float(np.median(t_ms) / np.median(s_ms)), "flop_ratio": flop_ratio,
              "ideal_speedup_int8": flop_ratio * 4, "student_int8_ms_by_op": profile}
    print(f"BERT-large-shaped teacher, PyTorch fp32:      {result['teacher_pytorch_fp32_ms']:8.1f} ms  (batch 1, seq 128, "
          f"{args.threads} threads)")
    print(f"TinyBERT-4-shaped student, ORT fp32 fused:    {result['student_ort_fp32_fused_ms']:8.2f} ms")
    print(f"TinyBERT-4-shaped student, ORT INT8 fused:    {result['student_ort_int8_ms']:8.2f} ms")
    print(f"measured speed-up {result['measured_speedup']:.0f}x; encoder FLOP ratio {flop_ratio:.0f}x, ideal with INT8 "
          f"(x4) {result['ideal_speedup_int8']:.0f}x")
    total = sum(profile.values())
    print("where the student's time goes (ORT kernel time per run): " + ", ".join(
        f"{op} {ms:.2f} ms ({ms / total:.0%})" for op, ms in list(profile.items())[:6]))
    return result


if __name__ == "__main__":
    main()
