"""Benchmark the teacher and every artifact side by side in one process: task metric on the test
split, latency p50/p95 at batch 1, throughput at batch 32, size on disk, parameters, FLOPs.

Threads are fixed (torch and ONNX Runtime alike) and every model is warmed up before it is timed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import students  # noqa: F401  (PrunedBert folders)
from distill.passes import onnx as onnx_export
from distill.engine.evaluation import score_batches
from distill.passes.flops import encoder_flops
from distill.passes.export import refused_formats
from distill.stages.common import teacher_baseline_formats
from distill.stages.spec import Output, Stage
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind


@dataclass
class BenchRow:
    name: str
    runtime: str  # pytorch-fp32 | onnxruntime-<variant>
    score: float | None
    metric: str
    p50_ms: float
    p95_ms: float
    p50_ms_real: float  # batch 1 at the task's real lengths (test examples)
    throughput_b32: float  # examples/s at batch 32, seq 128
    throughput_b32_real: float  # examples/s at batch 32 over the test split at its real lengths
    size_mb: float
    params: int
    flops_128: int
    metrics: dict = field(default_factory=dict)  # every test metric of the task (QA: exact_match and f1)


def folder_size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".safetensors", ".onnx", ".data")]
    return sum(p.stat().st_size for p in files) / 2**20


def synthetic(batch: int, seq: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Random token ids below ``vocab_size`` (the tokenizer's), skipping the low ids BERT keeps for specials."""
    rng = np.random.default_rng(0)
    low = min(1000, vocab_size // 2)
    return {"input_ids": rng.integers(low, vocab_size, (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}


def _time(run, inputs: list[dict], repeats: int, warmup: int) -> np.ndarray:
    for i in range(warmup):
        run(inputs[i % len(inputs)])
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(inputs[i % len(inputs)])
        times.append(time.perf_counter() - start)
    return np.asarray(times) * 1000.0


class Runner:
    """A model behind one call signature: numpy inputs -> numpy logits.

    ``variant`` is the export format of an ONNX file (fp32-fused, int8-dynamic...); None for a PyTorch folder."""

    def __init__(self, path: Path, threads: int, variant: str | None = None, kind: TaskKind = SEQUENCE_CLASSIFICATION):
        self.path, self.kind = Path(path), kind
        if (self.path.suffix == ".onnx") != (variant is not None):
            raise ValueError(f"{self.path}: an ONNX file needs its export variant, a PyTorch folder none")
        if variant is not None:
            self.runtime = f"onnxruntime-{variant}"
            self.sess = onnx_export.session(self.path, threads)
            self.model = None
        else:
            self.runtime = "pytorch-fp32"
            self.model = kind.auto_class.from_pretrained(self.path).eval()
            self.model.set_attn_implementation("sdpa")

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.model is None:
            return onnx_export.run_logits(self.sess, feed, self.kind)
        with torch.inference_mode():
            return self.kind.logits(self.model(**{k: torch.from_numpy(v) for k, v in feed.items()})).numpy()


_SOURCE_SIZES: dict[tuple[str, str], tuple[int, float]] = {}


def _source_size(source_dir: str, kind: TaskKind) -> tuple[int, float]:
    """Parameters and encoder FLOPs at 128 tokens of a PyTorch folder (loaded once for all its artifacts)."""
    from distill.engine.logit_cache import weights_stamp

    key = (str(Path(source_dir).resolve()), json.dumps(weights_stamp(Path(source_dir))), type(kind).__name__)
    if key not in _SOURCE_SIZES:
        source = kind.auto_class.from_pretrained(source_dir)
        _SOURCE_SIZES[key] = (sum(p.numel() for p in source.parameters()), encoder_flops(source, 128))
    return _SOURCE_SIZES[key]


def bench_one(name: str, path: Path, variant: str | None, source_dir: Path, test_batches: list[dict],
              labels: list[np.ndarray], real_singles: list[dict], task, threads: int, vocab_size: int,
              repeats: int = 50) -> BenchRow:
    """One row of the table: ``path`` is a PyTorch folder (variant None) or an exported model.onnx.
    ``task``: the TaskData, whose kind scores the outputs (entity F1, word-aligned, for NER), or a metric
    name (sentence classification); ``labels``: one array per test batch (or, for one label per example,
    all of them in one array)."""
    if isinstance(labels, np.ndarray):
        labels = np.split(labels, np.cumsum([len(b["input_ids"]) for b in test_batches])[:-1])
    kind = getattr(task, "kind", SEQUENCE_CLASSIFICATION)
    metric = getattr(task, "metric", task)
    torch.set_num_threads(threads)
    runner = Runner(path, threads, variant, kind)
    runner(test_batches[0])  # warm-up
    start = time.perf_counter()
    logits = [runner(b) for b in test_batches]
    real_throughput = sum(len(out) for out in logits) / (time.perf_counter() - start)
    scores = score_batches(task, logits, labels, [b["attention_mask"] for b in test_batches])
    score = scores["score"]
    b1 = _time(runner, [synthetic(1, 128, vocab_size)], repeats, warmup=5)
    real = _time(runner, real_singles, min(repeats * 2, len(real_singles)), warmup=5)
    b32 = _time(runner, [synthetic(32, 128, vocab_size)], max(3, repeats // 10), warmup=1)
    params, flops = _source_size(str(source_dir), kind)
    return BenchRow(name, runner.runtime, score, metric, float(np.percentile(b1, 50)), float(np.percentile(b1, 95)),
                    float(np.percentile(real, 50)), 32 * 1000.0 / float(np.median(b32)), real_throughput,
                    folder_size_mb(Path(path) if Path(path).suffix == ".onnx" else Path(path)),
                    params, flops,
                    {k: float(v) for k, v in scores.items() if k != "score"})



def work(ctx, stage, inputs: dict[str, Output], threads: int = 0) -> dict:
    """Teacher, students and every exported artifact of the run, on the test split, side by side; writes
    report.md, report.html, bench.json (and left_out.json: refused or failed rows)."""
    import yaml

    from distill.config import to_dict
    from distill.engine.batching import to_model_inputs
    from distill.report.report import write_report

    cfg = ctx.cfg
    threads = threads or cfg.bench.threads or torch.get_num_threads()
    sources = {"teacher": inputs["teacher"].model_dir, "student-task": inputs["2b"].model_dir}
    if cfg.prune.enabled:
        sources["student-pruned"] = inputs["prune"].model_dir
    # (name, path, export variant or None for PyTorch, source folder)
    artifacts: list[tuple[str, Path, str | None, Path]] = [(name, folder, None, folder)
                                                           for name, folder in sources.items()]
    left_out: list[dict] = []  # rows the table shows without figures: refused by export, or failed here
    if cfg.export.enabled:
        export_dir = inputs["export"].model_dir
        refused = refused_formats(export_dir)
        exported = [(name, variant) for name in cfg.export.models for variant in cfg.export.formats]
        exported += [("teacher", variant) for variant in teacher_baseline_formats(cfg.export)]
        for name, variant in exported:
            path = export_dir / f"{name}-{variant}" / "model.onnx"
            if variant in cfg.bench.skip_formats:
                continue
            if f"{name}-{variant}" in refused or not path.is_file():
                reason = refused.get(f"{name}-{variant}", f"{path} is missing")
                left_out.append({"name": name, "runtime": f"onnxruntime-{variant}", "status": "refused",
                                 "reason": reason})
                continue
            artifacts.append((name, path, variant, sources[name]))
    test = ctx.tokenized["test"]
    if cfg.bench.test_examples:
        test = test.select(range(min(cfg.bench.test_examples, len(test))))
    batches, labels = [], []
    for batch in ctx.loader("test", 32, dataset=test):
        batches.append({k: v.numpy().astype(np.int64) for k, v in to_model_inputs(batch).items()})
        labels.append(batch["labels"].numpy())
    singles = [{k: v[i:i + 1] for k, v in b.items()} for b in batches for i in range(0, len(b["input_ids"]), 7)][:100]
    rows = []
    print(f"[bench] {len(artifacts)} artifacts, {len(test)} test examples, {threads} threads")
    for name, path, variant, source in artifacts:
        try:
            row = bench_one(name, path, variant, source, batches, labels, singles, ctx.data, threads,
                            len(ctx.tokenizer), cfg.bench.repeats)
        except Exception as err:  # noqa: BLE001 (one artifact that cannot run never costs the others their report)
            runtime = f"onnxruntime-{variant}" if variant else "pytorch-fp32"
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"[bench] {name:<16} {runtime:<26} FAILED: {reason}")
            left_out.append({"name": name, "runtime": runtime, "status": "failed", "reason": reason})
            continue
        print(f"[bench] {name:<16} {row.runtime:<26} score {row.score:.4f}  p50 {row.p50_ms:7.1f} ms  "
              f"p95 {row.p95_ms:7.1f} ms  b32 {row.throughput_b32:7.0f} ex/s  {row.size_mb:6.1f} MB")
        rows.append(asdict(row))
    extra = [f"Latency: CPU, {threads} threads, batch 1, sequence 128 (synthetic tokens), {cfg.bench.repeats} timed "
             "runs after 5 warm-up runs; 'real lengths' uses 100 test examples at their own lengths."]
    md, page = write_report(ctx.run_dir, rows, yaml.safe_dump(to_dict(cfg), sort_keys=False), extra, left_out)
    print(f"[bench] report: {md} and {page}")
    tracker = ctx.tracker(ctx.run_dir / "bench", "bench")
    for row in rows:
        tracker.summary({f"{row['name']}/{row['runtime']}/{k}": v for k, v in row.items()
                         if isinstance(v, (int, float))})
    folders = dict(sources)
    if cfg.export.enabled:
        folders.update({p.parent.name: p.parent for _, p, variant, _ in artifacts if variant is not None})
    tracker.log_artifacts(folders)
    tracker.finish()
    return {"rows": len(rows), "left_out": left_out}


def _reads(cfg) -> tuple[str, ...]:
    return ("teacher", "2b") + (("prune",) if cfg.prune.enabled else ()) + (("export",) if cfg.export.enabled else ())


STAGE = Stage("bench", "", "teacher and every artifact side by side: test metric, latency, size; writes the report",
              lambda ctx, upstream: dict(upstream), work, reads=_reads, trains=False)
