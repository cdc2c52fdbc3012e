"""Choose a student shape for a speed budget, measured on this machine.

Users know their budget ("2 ms at batch 1 on this CPU", "4,000 sequences/s on this GPU"), not a shape.
This builds candidate shapes (layers x hidden, heads = hidden / the teacher's head dim, FFN = 4 x hidden),
exports each with random weights to the runtime asked for, times it here, and picks the largest by encoder
FLOPs (distill.passes.flops) that meets the budget. It prints the table of candidates and writes the chosen
`student:` section to <output_dir>/choose-student/<timestamp>/student.yaml, with the ARGS line that passes
it to `make distill`.

budget:
  2ms@128          latency: median milliseconds per call at batch 1, 128 tokens, at most 2
  4000/s@32x128    throughput: sequences per second at batch 32, 128 tokens, at least 4000 (4,000 works too)

runtimes:
  onnx (default)   ONNX Runtime on the fused graph (what `make export` ships as fp32-fused); --int8: the
                   dynamic INT8 quantization `make export` ships as int8-dynamic (CPU only)
  torch            PyTorch eager model (sdpa attention), fp32; on CUDA also --dtype fp16 / bf16.
                   --int8 is refused: the suite ships INT8 only as ONNX Runtime dynamic INT8, so a student
                   chosen on PyTorch INT8 timings would be timed on a runtime nobody deploys from this suite.

Threads: torch.set_num_threads and ONNX Runtime's intra_op_num_threads are both set to --threads (default:
what `make bench` uses, bench.threads or all cores); the table records the count in effect while timing.
Timing follows `make bench` (distill.stages.bench._time): warm-up calls, then the median of timed calls.

    python -m distill choose-student --config experiments/rotten_tomatoes_minilm.yaml --budget 2ms@128
    make choose-student BUDGET="2ms@128" ARGS="--int8"
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from distill.base.errors import InputError, UserError
from distill.passes.flops import config_encoder_flops

LAYERS = (2, 3, 4, 6)
WIDTHS = (128, 256, 384, 512, 768)
FFN_RATIO = 4
LABELS = ["0", "1"]  # a two-way head; its size does not move the timing


class BudgetError(InputError):
    """A budget or an option that cannot work; raised before anything is built or timed."""


class NoCandidateMeetsBudget(UserError):
    """Every candidate missed the budget (the table is printed first)."""


# ---------------------------------------------------------------------------------------------- budget

@dataclass(frozen=True)
class Budget:
    kind: str  # latency | throughput
    value: float  # ms (latency, at most) or sequences/s (throughput, at least)
    batch: int
    seq: int

    def meets(self, measured: float) -> bool:
        return measured <= self.value if self.kind == "latency" else measured >= self.value

    def describe(self) -> str:
        if self.kind == "latency":
            return f"{self.value:g} ms at batch 1, {self.seq} tokens"
        return f"{self.value:,.0f} sequences/s at batch {self.batch}, {self.seq} tokens"

    @property
    def unit(self) -> str:
        return "ms" if self.kind == "latency" else "seq/s"


_GRAMMAR = ("write latency as 2ms@128 (milliseconds at batch 1, 128 tokens) or throughput as 4000/s@32x128 "
            "(sequences/s at batch 32, 128 tokens)")
_NUMBER = r"(\d[\d,]*(?:\.\d+)?|\.\d+)"


def parse_budget(text: str | None, max_positions: int = 512) -> Budget:
    """``2ms@128`` -> latency at batch 1; ``4000/s@32x128`` -> throughput at batch 32. One-line BudgetError
    naming the grammar for anything else."""
    if not text or not text.strip():
        raise BudgetError(f"give a budget: {_GRAMMAR}; through make: make choose-student BUDGET=\"2ms@128\"")
    compact = re.sub(r"\s+", "", text.strip().lower())
    latency = re.fullmatch(_NUMBER + r"ms@(?:(\d+)x)?(\d+)", compact)
    throughput = re.fullmatch(_NUMBER + r"(?:/s|seq/s|sequences/s)@(\d+)x(\d+)", compact)
    if latency:
        value, batch, seq = float(latency[1].replace(",", "")), int(latency[2] or 1), int(latency[3])
        if batch != 1:
            raise BudgetError(f"budget {text!r}: a latency budget is at batch 1; write {latency[1]}ms@{seq}, or a "
                              f"throughput budget at batch {batch} as <n>/s@{batch}x{seq}")
        kind = "latency"
    elif throughput:
        value, batch, seq = float(throughput[1].replace(",", "")), int(throughput[2]), int(throughput[3])
        kind = "throughput"
    elif re.fullmatch(_NUMBER + r"/s@(\d+)", compact):
        raise BudgetError(f"budget {text!r}: a throughput budget names its batch size, e.g. "
                          f"{compact.split('@')[0]}@32x{compact.split('@')[1]}")
    else:
        raise BudgetError(f"budget {text!r} not understood; {_GRAMMAR}")
    if value <= 0:
        raise BudgetError(f"budget {text!r}: the figure must be > 0; {_GRAMMAR}")
    if batch < 1:
        raise BudgetError(f"budget {text!r}: the batch size must be >= 1")
    if not 1 <= seq <= max_positions:
        raise BudgetError(f"budget {text!r}: {seq} tokens is outside 1..{max_positions} (the teacher's position "
                          "embeddings)")
    return Budget(kind, value, batch, seq)


# ---------------------------------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class Candidate:
    layers: int
    hidden: int
    heads: int
    ffn: int

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden}"


@dataclass
class TeacherInfo:
    name: str
    head_dim: int
    config: object  # the teacher's transformers config (vocab, positions, activation for the student config)


def teacher_info(name: str) -> TeacherInfo:
    """The teacher's config, read without its weights (local folder, embedded MiniLM, or the hub/cache)."""
    from teachers.load import load_config

    config = load_config(name)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return TeacherInfo(name, int(head_dim), config)


def candidates(head_dim: int, layers=LAYERS, widths=WIDTHS, ffn_ratios=(FFN_RATIO,)) -> tuple[list[Candidate], list[str]]:
    """Every layers x width x FFN ratio whose width the teacher's head dim divides; and one note per width
    skipped because it does not."""
    out, skipped = [], []
    for width in widths:
        if width % head_dim:
            skipped.append(f"width {width}: not a multiple of the teacher's head dim {head_dim}")
            continue
        for n in layers:
            for ratio in ffn_ratios:
                out.append(Candidate(n, width, width // head_dim, max(1, round(ratio * width))))
    return sorted(set(out), key=lambda c: (c.layers, c.hidden, c.ffn)), skipped


def student_bert_config(cand: Candidate, teacher_config):
    from students.build import student_config
    from students.presets import StudentShape

    return student_config(StudentShape(cand.layers, cand.hidden, cand.heads, cand.ffn), teacher_config, LABELS)


def flops_of(cand: Candidate, teacher_config, seq: int) -> int:
    return config_encoder_flops(student_bert_config(cand, teacher_config), seq)


def _model(cand: Candidate, teacher_config):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(student_bert_config(cand, teacher_config)).eval()


# ---------------------------------------------------------------------------------------------- timing

@dataclass
class Settings:
    device: str = "cpu"  # cpu | cuda
    runtime: str = "onnx"  # onnx | torch
    int8: bool = False
    dtype: str = "fp32"  # fp32 | fp16 | bf16 (fp16/bf16: CUDA only)
    threads: int = 1
    warmup: int = 3
    repeats: int = 20  # timed calls at batch 1; batches > 1: a tenth of it, at least 3
    cache_dir: Path | None = None

    @property
    def label(self) -> str:
        if self.runtime == "onnx":
            precision = "int8-dynamic" if self.int8 else ("fp32-fused" if self.dtype == "fp32" else self.dtype)
            return f"onnxruntime-{precision}"
        return f"pytorch-{self.dtype}"


def check_settings(s: Settings) -> None:
    """Refuse what cannot run here, in one line, before anything is built."""
    if s.device not in ("cpu", "cuda") or s.runtime not in ("onnx", "torch") or s.dtype not in ("fp32", "fp16", "bf16"):
        raise BudgetError(f"device {s.device!r} / runtime {s.runtime!r} / dtype {s.dtype!r}: choose --device cpu|cuda, "
                          "--runtime onnx|torch, --dtype fp32|fp16|bf16")
    if s.threads < 1 or s.repeats < 1 or s.warmup < 0:
        raise BudgetError("--threads and --repeats must be >= 1, --warmup >= 0")
    if s.int8 and s.runtime == "torch":
        raise BudgetError("--int8 with --runtime torch: the suite ships INT8 as ONNX Runtime dynamic INT8 "
                          "(make export), so time that: --runtime onnx --int8")
    if s.int8 and s.device == "cuda":
        raise BudgetError("--int8 is ONNX Runtime's dynamic INT8, a CPU format; on CUDA use --dtype fp16 (TensorRT "
                          "INT8 is timed by make bench)")
    if s.dtype != "fp32" and s.device == "cpu":
        raise BudgetError(f"--dtype {s.dtype} is for --device cuda; on a CPU time fp32 or --runtime onnx --int8")
    if s.dtype == "bf16" and s.runtime == "onnx":
        raise BudgetError("--dtype bf16 is for --runtime torch; ONNX Runtime: --dtype fp16")
    if s.device == "cuda":
        if not torch.cuda.is_available():
            raise BudgetError("--device cuda, but torch sees no CUDA device here; use --device cpu or run on a GPU host")
        if s.runtime == "onnx":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BudgetError("--device cuda --runtime onnx needs onnxruntime-gpu (CUDAExecutionProvider is not "
                                  "available here); use --runtime torch")


@dataclass
class Measured:
    value: float  # ms (latency) or sequences/s (throughput)
    threads: int  # thread count in effect while timing (torch's, or the ORT session's intra-op count)


def _cache_key(cand: Candidate, teacher_config, s: Settings) -> str:
    import onnxruntime as ort

    text = json.dumps([asdict(cand), teacher_config.vocab_size, teacher_config.max_position_embeddings,
                       teacher_config.hidden_act, s.int8, s.dtype, ort.__version__, torch.__version__])
    return f"{cand.name}-ffn{cand.ffn}-{s.label}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def onnx_file(cand: Candidate, teacher_config, s: Settings, seq: int) -> Path:
    """The candidate exported, fused and (``int8``) quantized as `make export` does it, kept in the cache folder
    (random weights, seed 0: the same shape gives the same file)."""
    from distill.passes import onnx as onnx_export
    from distill.stages.bench import synthetic

    cache = Path(s.cache_dir or Path(tempfile.gettempdir()) / "distill-choose-student")
    final = cache / _cache_key(cand, teacher_config, s) / "model.onnx"
    if final.is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = Path(tmp)
        example = {k: torch.from_numpy(v) for k, v in synthetic(1, min(seq, 16), teacher_config.vocab_size).items()}
        onnx_export.export_fp32(_model(cand, teacher_config), tmp / "fp32.onnx", example)
        opt = onnx_export.fuse(tmp / "fp32.onnx", tmp / "fused.onnx", cand.heads, cand.hidden)
        if s.int8:
            onnx_export.quantize_int8_dynamic(tmp / "fused.onnx", tmp / "out.onnx")
        elif s.dtype == "fp16":
            onnx_export.to_fp16(opt, tmp / "out.onnx")
        else:
            (tmp / "fused.onnx").rename(tmp / "out.onnx")
        final.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "out.onnx").replace(final)
    return final


def ort_session(path: Path, s: Settings):
    """An ONNX Runtime session with intra-op threads = ``s.threads`` (one inter-op thread), as `make bench`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = s.threads
    options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if s.device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(cand: Candidate, teacher_config, budget: Budget, s: Settings) -> Measured:
    """Time one candidate at the budget's batch and length: the median over the timed calls."""
    from distill.stages.bench import _time, synthetic

    feed = synthetic(budget.batch, budget.seq, teacher_config.vocab_size)
    repeats = s.repeats if budget.batch == 1 else max(3, s.repeats // 10)
    warmup = s.warmup if budget.batch == 1 else min(s.warmup, 1)
    cuda = s.device == "cuda"
    with torch_threads(s.threads):
        if s.runtime == "onnx":
            sess = ort_session(onnx_file(cand, teacher_config, s, budget.seq), s)
            threads = sess.get_session_options().intra_op_num_threads
            times = _time(lambda f: sess.run(["logits"], f), [feed], repeats, warmup)
        else:
            model = _model(cand, teacher_config)
            model.set_attn_implementation("sdpa")
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[s.dtype]
            model.to("cuda" if cuda else "cpu", dtype)
            inputs = {k: torch.from_numpy(v).to("cuda" if cuda else "cpu") for k, v in feed.items()}
            threads = torch.get_num_threads()

            def run(_):
                with torch.inference_mode():
                    return model(**inputs).logits.float().cpu()

            times = _time(run, [feed], repeats, warmup, cuda=cuda)
    median_ms = float(np.median(times))
    value = median_ms if budget.kind == "latency" else budget.batch * 1000.0 / median_ms
    return Measured(value, int(threads))


# ---------------------------------------------------------------------------------------------- choice

@dataclass
class Row:
    candidate: Candidate
    params: int
    flops: int
    measured: float
    threads: int
    meets: bool


def sweep(cands: list[Candidate], teacher_config, budget: Budget, s: Settings,
          timer: Callable[[Candidate, object, Budget, Settings], Measured] = measure,
          progress: Callable[[str], None] = print) -> list[Row]:
    rows = []
    for i, cand in enumerate(cands):
        config = student_bert_config(cand, teacher_config)
        params = _param_count(config)
        got = timer(cand, teacher_config, budget, s)
        rows.append(Row(cand, params, config_encoder_flops(config, budget.seq), got.value, got.threads,
                        budget.meets(got.value)))
        progress(f"[{i + 1}/{len(cands)}] {cand.name} (heads {cand.heads}, FFN {cand.ffn}): {got.value:,.2f} "
                 f"{budget.unit}, {got.threads} threads")
    return rows


def _param_count(config) -> int:
    """Parameters of a BertForSequenceClassification of this config, counted without building it."""
    h, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
    return embeddings + n * layer + (h * h + h) + (h * config.num_labels + config.num_labels)


def choose(rows: list[Row]) -> Row | None:
    """The largest candidate by encoder FLOPs that meets the budget (ties: the one with fewer parameters)."""
    meeting = [r for r in rows if r.meets]
    return max(meeting, key=lambda r: (r.flops, -r.params)) if meeting else None


def table(rows: list[Row], budget: Budget, chosen: Row | None) -> str:
    head = ["shape", "heads", "FFN", "params (M)", f"GFLOPs @{budget.seq}", budget.unit, "threads", "meets"]
    body = []
    for r in sorted(rows, key=lambda r: r.flops):
        c = r.candidate
        mark = ("yes" if r.meets else "no") + (" <- chosen" if r is chosen else "")
        fig = f"{r.measured:.2f}" if budget.kind == "latency" else f"{r.measured:,.0f}"
        body.append([c.name, str(c.heads), str(c.ffn), f"{r.params / 1e6:.1f}", f"{r.flops / 1e9:.2f}", fig,
                     str(r.threads), mark])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def student_section(cand: Candidate, recipe, teacher_config) -> dict:
    """The `student:` mapping: a custom shape; the recipe's init=teacher kept where the shape allows it
    (same width as the teacher, no more layers), else random."""
    init = "random"
    if (recipe.init == "teacher" and cand.hidden == teacher_config.hidden_size
            and cand.layers <= teacher_config.num_hidden_layers):
        init = "teacher"
    section = {"preset": "custom", "layers": cand.layers, "hidden": cand.hidden, "heads": cand.heads,
               "ffn": cand.ffn, "init": init}
    if init == "teacher":
        section["init_layers"] = recipe.init_layers if recipe.init_layers != "explicit" else "uniform"
    return section


def args_line(section: dict) -> str:
    return " ".join(f"student.{k}={v}" for k, v in section.items())


# ---------------------------------------------------------------------------------------------- command line

def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BudgetError(f"{flag} {text!r}: give comma-separated whole numbers, e.g. {flag} 2,4") from None
    if not values or min(values) < 1:
        raise BudgetError(f"{flag} {text!r}: give comma-separated numbers >= 1")
    return values


def _ffn_ratios(text: str, recipe) -> tuple[float, ...]:
    ratios = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item == "recipe":
            if not (recipe.hidden and recipe.ffn):
                raise BudgetError("--ffn-ratios recipe: the experiment's student has no hidden/ffn of its own; "
                                  "give numbers, e.g. --ffn-ratios 4,2")
            ratios.append(recipe.ffn / recipe.hidden)
            continue
        try:
            ratios.append(float(item))
        except ValueError:
            raise BudgetError(f"--ffn-ratios {text!r}: give numbers or 'recipe', e.g. --ffn-ratios 4,recipe") from None
    if not ratios or min(ratios) <= 0:
        raise BudgetError(f"--ffn-ratios {text!r}: give ratios > 0, e.g. 4")
    return tuple(ratios)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distill choose-student", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", "-b", default=None, help="2ms@128 (latency, batch 1) or 4000/s@32x128 (throughput)")
    p.add_argument("--config", "-c", default=None, help="experiment YAML: its teacher gives vocab and head dim, "
                   "its bench.threads the default threads, its output_dir where student.yaml goes")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--runtime", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--int8", action="store_true", help="ONNX Runtime dynamic INT8 (as make export's int8-dynamic)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="fp16/bf16: --device cuda only")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ORT (default: bench.threads, "
                   "or all cores, as make bench)")
    p.add_argument("--layers", default=",".join(map(str, LAYERS)), help="candidate depths (default %(default)s)")
    p.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="candidate widths (default %(default)s)")
    p.add_argument("--ffn-ratios", default=str(FFN_RATIO),
                   help="FFN = ratio x width, comma-separated; 'recipe' adds the experiment's own ratio (default 4)")
    p.add_argument("--quick", action="store_true", help="only 2 and 4 layers x 128 and 256 wide (a fast look)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls at batch 1 (batches > 1: a tenth, >= 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    p.add_argument("--out", default=None, help="folder for student.yaml and candidates.json "
                   "(default <output_dir>/choose-student/<timestamp>)")
    p.add_argument("--cache-dir", default=None, help="exported candidates are kept here (default: a folder in the "
                   "system's temporary directory)")
    return p


def main(argv: list[str] | None = None, timer=measure) -> dict:
    from distill.config import load_config

    args = build_parser().parse_args(argv)
    budget = parse_budget(args.budget)  # grammar first: before the config or any model is read
    cfg = load_config(args.config)
    settings = Settings(args.device, args.runtime, args.int8, args.dtype,
                        args.threads or cfg.bench.threads or torch.get_num_threads(), args.warmup, args.repeats,
                        Path(args.cache_dir) if args.cache_dir else None)
    check_settings(settings)
    layers = (2, 4) if args.quick else _int_list(args.layers, "--layers")
    widths = (128, 256) if args.quick else _int_list(args.widths, "--widths")
    ratios = _ffn_ratios(args.ffn_ratios, cfg.student)
    teacher = teacher_info(cfg.teacher.name)
    budget = parse_budget(args.budget, teacher.config.max_position_embeddings)
    cands, skipped = candidates(teacher.head_dim, layers, widths, ratios)
    for note in skipped:
        print(f"skipped {note}")
    if not cands:
        raise BudgetError(f"no candidate width is a multiple of the teacher's head dim {teacher.head_dim}; give "
                          f"--widths in multiples of {teacher.head_dim}")
    print(f"[choose-student] budget {budget.describe()}; {settings.label} on {settings.device}, {settings.threads} "
          f"threads; teacher {cfg.teacher.name} (head dim {teacher.head_dim}, vocab {teacher.config.vocab_size}); "
          f"{len(cands)} candidates, random weights")
    rows = sweep(cands, teacher.config, budget, settings, timer=timer)
    chosen = choose(rows)
    print(table(rows, budget, chosen))
    out = Path(args.out) if args.out else (Path(cfg.output_dir) / "choose-student"
                                           / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    record = {"budget": asdict(budget), "settings": {**asdict(settings), "cache_dir": str(settings.cache_dir or ""),
                                                     "label": settings.label},
              "teacher": cfg.teacher.name, "head_dim": teacher.head_dim,
              "rows": [{**asdict(r.candidate), "params": r.params, "encoder_flops": r.flops, "measured": r.measured,
                        "unit": budget.unit, "threads": r.threads, "meets": r.meets} for r in rows],
              "chosen": asdict(chosen.candidate) if chosen else None}
    (out / "candidates.json").write_text(json.dumps(record, indent=1))
    if chosen is None:
        smallest = min(rows, key=lambda r: r.flops)
        raise NoCandidateMeetsBudget(
            f"no candidate meets {budget.describe()}: the smallest, {smallest.candidate.name} (FFN "
            f"{smallest.candidate.ffn}), measured {smallest.measured:,.2f} {budget.unit} with {settings.label}; "
            f"loosen the budget, try --runtime onnx --int8, or shorter sequences (table in {out / 'candidates.json'})")
    section = student_section(chosen.candidate, cfg.student, teacher.config)
    text = (f"# chosen by choose-student for {budget.describe()} ({settings.label}, {settings.device}, "
            f"{settings.threads} threads): measured {chosen.measured:,.2f} {budget.unit}, encoder "
            f"{chosen.flops / 1e9:.2f} GFLOPs\n" + yaml.safe_dump({"student": section}, sort_keys=False))
    (out / "student.yaml").write_text(text)
    exp = f" EXP={args.config}" if args.config else ""
    print(f"\nchosen: {chosen.candidate.name}, heads {chosen.candidate.heads}, FFN {chosen.candidate.ffn} "
          f"(largest by encoder FLOPs meeting {budget.describe()})\n{text}written to {out / 'student.yaml'}\n"
          f"to distil it: make distill{exp} ARGS=\"{args_line(section)}\"")
    return {**record, "student": section, "out": str(out)}


def cli(argv: list[str] | None = None) -> None:
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
