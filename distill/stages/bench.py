"""Benchmark the teacher and every artifact side by side in one process: task metric on the test
split, latency p50/p95 at batch 1, throughput at batch 32, size on disk, parameters, FLOPs.

Threads are fixed (torch and ONNX Runtime alike) and every model is warmed up before it is timed.
Every row records the device it ran on. On a CUDA host the GPU adds rows: PyTorch fp16 and bf16 for the
teacher and every student (batch 1 timed with CUDA events), ONNX Runtime's CUDA and TensorRT execution
providers when onnxruntime-gpu offers them, and TensorRT engines when `tensorrt` imports; each kind
that cannot run here is skipped with one printed line.
"""
from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import students  # noqa: F401  (PrunedBert folders)
from distill.engine.batching import to_model_inputs
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
    device: str = ""  # where it ran: "cpu (16 threads)", "cuda: NVIDIA H200"
    metrics: dict = field(default_factory=dict)  # every test metric of the task (QA: exact_match and f1)


TORCH_GPU = {"pytorch-fp16": torch.float16, "pytorch-bf16": torch.bfloat16}  # the whole model cast, on CUDA
# runtime -> (export variant it reads, ONNX Runtime execution provider, provider options)
ORT_GPU = {
    "onnxruntime-cuda-fp32-fused": ("fp32-fused", "CUDAExecutionProvider", {}),
    "onnxruntime-cuda-fp16": ("fp16", "CUDAExecutionProvider", {}),
    # TensorRT cannot read ORT's fused ops: it builds from the plain graph, in fp16 / from the QDQ graph in int8
    "onnxruntime-trt-fp16": ("fp32", "TensorrtExecutionProvider", {"trt_fp16_enable": "True"}),
    "onnxruntime-trt-int8": ("int8-qdq", "TensorrtExecutionProvider", {"trt_fp16_enable": "True",
                                                                       "trt_int8_enable": "True"}),
}
TENSORRT = {"tensorrt-fp16": ("fp32", "fp16"), "tensorrt-int8": ("int8-qdq", "int8")}  # runtime -> (variant, precision)
GPU_TOKENS = 128  # TensorRT shape profiles cover batch 1..32 up to max(this, task.max_len) tokens


def cpu_device(threads: int) -> str:
    return f"cpu ({threads} threads)"


def cuda_device() -> str:
    return f"cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cuda"


def folder_size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".safetensors", ".onnx", ".data")
                                           and p.name != "projections.safetensors"]  # not part of the model
    return sum(p.stat().st_size for p in files) / 2**20


def synthetic(batch: int, seq: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Random token ids below ``vocab_size`` (the tokenizer's), skipping the low ids BERT keeps for specials."""
    rng = np.random.default_rng(0)
    low = min(1000, vocab_size // 2)
    return {"input_ids": rng.integers(low, vocab_size, (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}


def _time(run, inputs: list[dict], repeats: int, warmup: int, cuda: bool = False) -> np.ndarray:
    """Milliseconds per call after ``warmup`` calls; on CUDA between two events on the GPU's clock (every call
    ends with its outputs copied back, so the end event waits for the whole call)."""
    for i in range(warmup):
        run(inputs[i % len(inputs)])
    times = []
    for i in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(inputs[i % len(inputs)])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
            continue
        start = time.perf_counter()
        run(inputs[i % len(inputs)])
        times.append(time.perf_counter() - start)
    return np.asarray(times) * 1000.0


class Runner:
    """A model behind one call signature: numpy inputs -> numpy logits.

    ``variant`` is the export format of an ONNX file (fp32-fused, int8-dynamic...); None for a PyTorch folder.
    ``backend`` None runs it on the CPU; a key of TORCH_GPU, ORT_GPU or TENSORRT runs it on the GPU."""

    def __init__(self, path: Path, threads: int, variant: str | None = None, kind: TaskKind = SEQUENCE_CLASSIFICATION,
                 backend: str | None = None, max_tokens: int = GPU_TOKENS):
        self.path, self.kind = Path(path), kind
        if (self.path.suffix == ".onnx") != (variant is not None):
            raise ValueError(f"{self.path}: an ONNX file needs its export variant, a PyTorch folder none")
        self.cuda = backend is not None
        self.device = cuda_device() if self.cuda else cpu_device(threads)
        self.sess = self.model = self.engine = None
        if self.cuda:
            self.runtime = backend
            if backend in TORCH_GPU:
                self.model = kind.auto_class.from_pretrained(self.path).eval()
                self.model.set_attn_implementation("sdpa")
                self.model.to("cuda", TORCH_GPU[backend])
            elif backend in ORT_GPU:
                self.sess = _gpu_session(self.path, threads, *ORT_GPU[backend][1:], max_tokens)
            else:
                self.engine = TensorRTEngine(self.path, TENSORRT[backend][1], max_tokens)
        elif variant is not None:
            self.runtime = f"onnxruntime-{variant}"
            self.sess = onnx_export.session(self.path, threads)
            self.model = None
        else:
            self.runtime = "pytorch-fp32"
            self.model = kind.auto_class.from_pretrained(self.path).eval()
            self.model.set_attn_implementation("sdpa")

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.engine is not None:
            outputs = self.engine(feed)
            return self.kind.join_outputs([outputs[name] for name in self.kind.output_names])
        if self.model is None:
            return onnx_export.run_logits(self.sess, feed, self.kind)
        device = "cuda" if self.cuda else "cpu"
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()})
            return self.kind.logits(out).float().cpu().numpy()


def _profile_shapes(max_tokens: int) -> dict[str, str]:
    """TensorRT EP shape profiles: batch 1 at 1 token up to batch 32 at ``max_tokens`` (one engine for all)."""
    shapes = lambda b, s: ",".join(f"{n}:{b}x{s}" for n in onnx_export.INPUTS)  # noqa: E731
    return {"trt_profile_min_shapes": shapes(1, 1), "trt_profile_opt_shapes": shapes(1, max_tokens),
            "trt_profile_max_shapes": shapes(32, max_tokens)}


def _gpu_session(path: Path, threads: int, provider: str, options: dict, max_tokens: int):
    """An ONNX Runtime session whose first provider is ``provider``; refused when ORT fell back to another."""
    import onnxruntime as ort

    options = {**options, **(_profile_shapes(max_tokens) if provider == "TensorrtExecutionProvider" else {})}
    session_options = ort.SessionOptions()
    if threads:
        session_options.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), session_options,
                                providers=[(provider, options), "CUDAExecutionProvider", "CPUExecutionProvider"])
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} did not start for {path.name} (the session runs on {sess.get_providers()})")
    return sess


class TensorRTEngine:
    """A TensorRT engine built from an exported ONNX file (in a temporary folder: the export is left as it
    is), run on torch CUDA buffers: numpy inputs -> {output name: numpy array}."""

    def __init__(self, onnx_path: Path, precision: str, max_tokens: int):
        import tensorrt as trt

        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "model.onnx"
            staged.symlink_to(Path(onnx_path).resolve())
            plan = onnx_export.build_tensorrt_engine(staged, precision, max_tokens)
            data = plan.read_bytes()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                  "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8}
        by_trt = {getattr(trt.DataType, k): v for k, v in dtypes.items() if hasattr(trt.DataType, k)}
        self.dtypes = {n: by_trt[self.engine.get_tensor_dtype(n)] for n in names}

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        held = []  # the input buffers must live until the engine has run
        for name in self.inputs:
            tensor = torch.from_numpy(feed[name]).to("cuda", self.dtypes[name]).contiguous()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            held.append(tensor)
        outputs = {}
        for name in self.outputs:
            outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                        device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("the TensorRT engine failed to run")
        return {name: out.float().cpu().numpy() for name, out in outputs.items()}


def gpu_artifacts(sources: dict[str, Path], exported: list[tuple[str, Path, str, Path]],
                  say=print) -> list[tuple[str, Path, str | None, Path, str]]:
    """The GPU rows this host can run: (name, path, variant, source folder, backend), from the PyTorch
    ``sources`` and the ``exported`` artifacts that passed their check; one line per kind it cannot run."""
    rows: list[tuple[str, Path, str | None, Path, str]] = []
    if torch.cuda.is_available():
        kinds = [b for b in TORCH_GPU if b != "pytorch-bf16" or torch.cuda.is_bf16_supported()]
        rows += [(name, folder, None, folder, backend) for name, folder in sources.items() for backend in kinds]
    else:
        say(f"[bench] PyTorch GPU rows (fp16, bf16) skipped: torch {torch.__version__} sees no CUDA device")
    import onnxruntime as ort

    providers = ort.get_available_providers()
    for provider, label in (("CUDAExecutionProvider", "ONNX Runtime CUDA"),
                            ("TensorrtExecutionProvider", "ONNX Runtime TensorRT")):
        if provider not in providers:
            say(f"[bench] {label} rows skipped: onnxruntime {ort.__version__} has no {provider} (it offers "
                f"{', '.join(providers)}; onnxruntime-gpu brings it)")
            continue
        rows += [(name, path, variant, source, backend) for backend, (wanted, prov, _) in ORT_GPU.items()
                 if prov == provider for name, path, variant, source in exported if variant == wanted]
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        why = "the tensorrt package is not importable" if importlib.util.find_spec("tensorrt") is None \
            else "torch sees no CUDA device"
        say(f"[bench] TensorRT engine rows skipped: {why}")
    else:
        rows += [(name, path, variant, source, backend) for backend, (wanted, _) in TENSORRT.items()
                 for name, path, variant, source in exported if variant == wanted]
    return rows


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
              repeats: int = 50, backend: str | None = None, max_tokens: int = GPU_TOKENS,
              examples=None) -> BenchRow:
    """One row of the table: ``path`` is a PyTorch folder (variant None) or an exported model.onnx; ``backend``
    (a key of TORCH_GPU, ORT_GPU or TENSORRT) runs it on the GPU instead of the CPU.
    ``task``: the TaskData, whose kind scores the outputs (entity F1, word-aligned, for NER), or a metric
    name (sentence classification); ``labels``: one array per test batch (or, for one label per example,
    all of them in one array)."""
    if isinstance(labels, np.ndarray):
        labels = np.split(labels, np.cumsum([len(b["input_ids"]) for b in test_batches])[:-1])
    kind = getattr(task, "kind", SEQUENCE_CLASSIFICATION)
    metric = getattr(task, "metric", task)
    torch.set_num_threads(threads)
    runner = Runner(path, threads, variant, kind, backend, max_tokens)
    for batch in test_batches if runner.cuda else test_batches[:1]:  # warm-up (on a GPU: every batch shape once)
        runner(batch)
    start = time.perf_counter()
    logits = [runner(b) for b in test_batches]
    real_throughput = sum(len(out) for out in logits) / (time.perf_counter() - start)
    scores = score_batches(task, logits, labels, [b["attention_mask"] for b in test_batches], examples=examples)
    score = scores["score"]
    b1 = _time(runner, [synthetic(1, 128, vocab_size)], repeats, warmup=5, cuda=runner.cuda)
    real = _time(runner, real_singles, min(repeats * 2, len(real_singles)), warmup=5, cuda=runner.cuda)
    b32 = _time(runner, [synthetic(32, 128, vocab_size)], max(3, repeats // 10), warmup=1, cuda=runner.cuda)
    params, flops = _source_size(str(source_dir), kind)
    return BenchRow(name, runner.runtime, score, metric, float(np.percentile(b1, 50)), float(np.percentile(b1, 95)),
                    float(np.percentile(real, 50)), 32 * 1000.0 / float(np.median(b32)), real_throughput,
                    folder_size_mb(Path(path) if Path(path).suffix == ".onnx" else Path(path)),
                    params, flops, runner.device,
                    {k: float(v) for k, v in scores.items() if k != "score"})



@dataclass
class _Inputs:
    batches: list[dict]  # test batches of 32 (numpy)
    labels: list  # gold labels per batch
    singles: list[dict]  # up to 100 single test examples at their own lengths
    vocab_size: int  # synthetic timing inputs stay below it
    examples: int  # rows (QA: windows)
    question_ids: list = field(default_factory=list)  # QA: the question of every row


class TestInputs:
    """The test split as the bench feeds it, tokenized once per tokenizer: the run's, or a
    vocabulary-pruned student's own (``folder``), whose token ids differ."""

    def __init__(self, ctx, limit: int = 0):
        self.ctx, self.limit, self.made = ctx, limit, {}

    def __call__(self, folder: Path | None) -> _Inputs:
        if folder not in self.made:
            from transformers import AutoTokenizer

            ctx = self.ctx
            if folder is None:
                tokenizer, rows = ctx.tokenizer, ctx.tokenized["test"]
                if self.limit:
                    rows = rows.select(range(min(self.limit, len(rows))))
                loader = ctx.loader("test", 32, dataset=rows)
            else:  # the same test examples as the run's rows: for QA the questions of its capped windows
                tokenizer = AutoTokenizer.from_pretrained(folder)
                rows = ctx.data.kind.tokenize(ctx.data.test, tokenizer, ctx.cfg.task.max_len, "test")
                if self.limit and "question_id" in rows.column_names:
                    wanted = set(self(None).question_ids)
                    rows = rows.filter(lambda r: r["question_id"] in wanted)
                elif self.limit:
                    rows = rows.select(range(min(self.limit, len(rows))))
                loader = ctx.loader("test", 32, dataset=rows, collator=ctx.data.kind.collator(tokenizer))
            batches, labels = [], []
            for batch in loader:
                batches.append({k: v.numpy().astype(np.int64) for k, v in to_model_inputs(batch).items()})
                labels.append(ctx.data.kind.gold(batch))
            singles = [{k: v[i:i + 1] for k, v in b.items()}
                       for b in batches for i in range(0, len(b["input_ids"]), 7)][:100]
            ids = list(rows["question_id"]) if "question_id" in rows.column_names else []
            self.made[folder] = _Inputs(batches, labels, singles, len(tokenizer),
                                        sum(len(b["input_ids"]) for b in batches), ids)
        return self.made[folder]


def qat_artifacts(qat: Output, sources: dict[str, Path]) -> list[tuple]:
    """The quantization-aware QDQ INT8 students (opt-in qat stage), as '<model>-qat' rows; their parameters and
    FLOPs are the fp32 student's."""
    return [(f"{name}-qat", Path(e["folder"]) / "model.onnx", "int8-qdq", sources[name], None)
            for name, e in qat.result.get("models", {}).items() if (Path(e["folder"]) / "model.onnx").is_file()]


def vocab_artifacts(vocab: Output) -> tuple[list[tuple], dict[str, Path], list[dict]]:
    """The vocabulary-pruned students (opt-in vocab stage) as '<model>-vocab' rows: PyTorch and every ONNX
    format its check kept; for each row name, the folder whose tokenizer its inputs need; and the formats
    its check refused, as left-out rows."""
    found, own, refused = [], {}, []
    for name, e in vocab.result.get("models", {}).items():
        folder, row = Path(e["folder"]), f"{name}-vocab"
        own[row] = folder
        found.append((row, folder, None, folder, None))
        for variant, entry in e.get("export", {}).items():
            path = Path(entry.get("folder", "")) / "model.onnx"
            if entry.get("refused"):
                refused.append({"name": row, "runtime": f"onnxruntime-{variant}", "status": "refused",
                                "reason": entry.get("reason", "")})
            elif path.is_file():
                found.append((row, path, variant, folder, None))
    return found, own, refused


def work(ctx, stage, inputs: dict[str, Output], threads: int = 0) -> dict:
    """Teacher, students and every exported artifact of the run, on the test split, side by side; writes
    report.md, report.html, bench.json (and left_out.json: refused or failed rows)."""
    import yaml

    from distill.config import to_dict
    from distill.report.report import write_report

    cfg = ctx.cfg
    threads = threads or cfg.bench.threads or torch.get_num_threads()
    sources = {"teacher": inputs["teacher"].model_dir, "student-task": inputs["2b"].model_dir}
    if cfg.prune.enabled:
        sources["student-pruned"] = inputs["prune"].model_dir
    # (name, path, export variant or None for PyTorch, source folder, GPU backend or None for the CPU)
    artifacts: list[tuple[str, Path, str | None, Path, str | None]] = [(name, folder, None, folder, None)
                                                                       for name, folder in sources.items()]
    available: list[tuple[str, Path, str, Path]] = []  # every export that passed its check (skipped or not)
    left_out: list[dict] = []  # rows the table shows without figures: refused by export, or failed here
    if cfg.export.enabled:
        export_dir = inputs["export"].model_dir
        refused = refused_formats(export_dir)
        exported = [(name, variant) for name in cfg.export.models for variant in cfg.export.formats]
        exported += [("teacher", variant) for variant in teacher_baseline_formats(cfg.export)]
        for name, variant in exported:
            path = export_dir / f"{name}-{variant}" / "model.onnx"
            usable = f"{name}-{variant}" not in refused and path.is_file()
            if usable:
                available.append((name, path, variant, sources[name]))
            if variant in cfg.bench.skip_formats:  # on the CPU (it may still run on a GPU)
                continue
            if not usable:
                reason = refused.get(f"{name}-{variant}", f"{path} is missing")
                left_out.append({"name": name, "runtime": f"onnxruntime-{variant}", "status": "refused",
                                 "reason": reason})
                continue
            artifacts.append((name, path, variant, sources[name], None))
    artifacts += gpu_artifacts(sources, available)
    own = {}  # artifact name -> the folder whose tokenizer its inputs need (vocabulary-pruned students)
    extra: list[tuple] = []  # the opt-in stages' students: QAT QDQ, vocabulary-pruned
    if cfg.qat.enabled:
        extra += qat_artifacts(inputs["qat"], sources)
    if cfg.vocab.enabled:
        found, own, refused_vocab = vocab_artifacts(inputs["vocab"])
        extra += found
        left_out += refused_vocab
    artifacts += [a for a in extra if a[2] not in cfg.bench.skip_formats]
    inputs_for = TestInputs(ctx, cfg.bench.test_examples)
    rows = []
    print(f"[bench] {len(artifacts)} artifacts, {inputs_for(None).examples} test examples, {threads} threads")
    for name, path, variant, source, backend in artifacts:
        try:
            t = inputs_for(own.get(name))
            row = bench_one(name, path, variant, source, t.batches, t.labels, t.singles, ctx.data, threads,
                            t.vocab_size, cfg.bench.repeats, backend, max(GPU_TOKENS, cfg.task.max_len),
                            examples=ctx.data.test)
        except Exception as err:  # noqa: BLE001 (one artifact that cannot run never costs the others their report)
            runtime = backend or (f"onnxruntime-{variant}" if variant else "pytorch-fp32")
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"[bench] {name:<16} {runtime:<26} FAILED: {reason}")
            left_out.append({"name": name, "runtime": runtime, "status": "failed", "reason": reason})
            continue
        print(f"[bench] {name:<16} {row.runtime:<26} score {row.score:.4f}  p50 {row.p50_ms:7.1f} ms  "
              f"p95 {row.p95_ms:7.1f} ms  b32 {row.throughput_b32:7.0f} ex/s  {row.size_mb:6.1f} MB"
              + (f"  {row.device}" if backend else ""))
        rows.append(asdict(row))
    extra = [f"Latency: CPU, {threads} threads, batch 1, sequence 128 (synthetic tokens), {cfg.bench.repeats} timed "
             "runs after 5 warm-up runs; 'real lengths' uses 100 test examples at their own lengths."]
    if any(backend for *_, backend in artifacts):
        extra.append(f"GPU rows ({cuda_device()}): the same inputs, batch 1 timed between CUDA events (inputs copied "
                     "in and logits copied out included); PyTorch fp16/bf16 rows cast the whole model.")
    md, page = write_report(ctx.run_dir, rows, yaml.safe_dump(to_dict(cfg), sort_keys=False), extra, left_out)
    print(f"[bench] report: {md} and {page}")
    tracker = ctx.tracker(ctx.run_dir / "bench", "bench")
    for row in rows:
        tracker.summary({f"{row['name']}/{row['runtime']}/{k}": v for k, v in row.items()
                         if isinstance(v, (int, float))})
    folders = dict(sources)
    if cfg.export.enabled:
        folders.update({p.parent.name: p.parent for _, p, variant, _, _ in artifacts if variant is not None})
    tracker.log_artifacts(folders)
    tracker.finish()
    return {"rows": len(rows), "left_out": left_out}


def _reads(cfg) -> tuple[str, ...]:
    return (("teacher", "2b") + (("prune",) if cfg.prune.enabled else ()) + (("export",) if cfg.export.enabled else ())
            + (("qat",) if cfg.qat.enabled else ()) + (("vocab",) if cfg.vocab.enabled else ()))


STAGE = Stage("bench", "", "teacher and every artifact side by side: test metric, latency, size; writes the report",
              lambda ctx, upstream: dict(upstream), work, reads=_reads, trains=False)
