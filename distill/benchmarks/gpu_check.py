"""`make gpu-check`: this project's GPU paths on one CUDA machine, in at most 8 minutes, ending in one table.

  1. the CUDA tests: tests whose names hold "cuda", in the test files that mention CUDA
     (pytest -m "not slow" -k cuda <those files>)
  2. the embedded default on the GPU: python -m distill distill --config experiments/rotten_tomatoes_minilm.yaml
     run_id=gpu-check (a previous gpu-check run folder is moved to gpu-check.old first, so every stage runs
     and its timings are this machine's)
  3. bench-train --device cuda at reduced steps (engine against the bare PyTorch loop, BERT-large-shaped teacher)

Each step runs in its own process with its own time limit (their sum is the 8 minutes); a step that fails or
runs out of time is reported and the next one still runs. The table: each step's status and seconds, the stage
seconds (the run's timings.json), the bench-train ratios beside their targets, and the bench's GPU rows
(bench.json). Exit status 0 when every step passed. On a machine without CUDA it stops at once with one line.

    make gpu-check
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENT = "experiments/rotten_tomatoes_minilm.yaml"  # the embedded default: no network needed
RUN_ID = "gpu-check"
# seconds each step may take; together the 8 minutes of the check
LIMITS = {"tests": 90, "distill": 270, "bench-train": 120}
BENCH_TRAIN_ARGS = ["--steps", "10", "--warmup", "3", "--repeats", "2"]  # reduced from 30 / 5 / 3


@dataclass
class Step:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    note: str = ""
    lines: list[str] = field(default_factory=list)  # the step's output, last lines kept

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def run_step(step: Step, cmd: list[str], limit: float, root: Path, keep: int = 400) -> Step:
    """Run ``cmd`` in its own process group, echoing its output; killed (the whole group) after ``limit`` s."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    env.setdefault("WANDB_MODE", "disabled")
    print(f"\n[gpu-check] {step.name} (limit {limit:.0f} s): {' '.join(cmd)}", flush=True)
    lines: collections.deque[str] = collections.deque(maxlen=keep)
    killed = threading.Event()
    start = time.perf_counter()
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", start_new_session=True) as proc:
        def kill():
            killed.set()
            os.killpg(proc.pid, signal.SIGKILL)  # the group this check started, and nothing else

        timer = threading.Timer(limit, kill)
        timer.start()
        try:
            for line in proc.stdout:
                print(f"  | {line}", end="", flush=True)
                lines.append(line.rstrip("\n"))
            proc.wait()
        finally:
            timer.cancel()
    step.seconds = time.perf_counter() - start
    step.lines = list(lines)
    if killed.is_set():
        step.status = f"timed out ({limit:.0f} s)"
    else:
        step.status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return step


def cuda_test_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted((root / "tests").glob("test_*.py")) if "cuda" in p.read_text()]


def run_tests(root: Path, limit: float) -> Step:
    files = cuda_test_files(root)
    step = Step("CUDA tests")
    if not files:
        step.status, step.note = "ok", "no test file mentions CUDA"
        return step
    run_step(step, [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-m", "not slow", "-k", "cuda",
                    *files], limit, root)
    if step.status == "failed (exit 5)":  # pytest: nothing collected
        step.status, step.note = "ok", "no test named *cuda* collected"
    summary = [line for line in step.lines if any(w in line for w in (" passed", " failed", " error", " skipped"))]
    if summary:
        step.note = summary[-1].strip("= ")
    return step


def run_dir(root: Path) -> Path:
    from distill.config import load_config

    folder = load_config(root / EXPERIMENT, [f"run_id={RUN_ID}"]).run_dir
    return folder if folder.is_absolute() else root / folder


def run_distill(root: Path, limit: float) -> Step:
    folder = run_dir(root)
    # output_dir may lie outside the checkout (an absolute path): name the folder as it is then
    note = folder.relative_to(root) if folder.is_relative_to(root) else folder
    step = Step(f"embedded default (run_id={RUN_ID})", note=str(note))
    if folder.exists():  # every stage must run here: a previous check's folder is kept once, aside
        old = folder.with_name(f"{RUN_ID}.old")
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
        print(f"[gpu-check] moved the previous {folder} to {old}")
    run_step(step, [sys.executable, "-m", "distill", "distill", "--config", EXPERIMENT, f"run_id={RUN_ID}"],
             limit, root)
    return refusals_pass(step)


def refusals_pass(step: Step) -> Step:
    """The pipeline's own exit status for 'finished with its report, some export formats refused by their checks'
    is a result of the run, not a failure of the GPU paths: the step passes and names them."""
    from distill.runner.pipeline import REFUSED_EXIT

    if step.status == f"failed (exit {REFUSED_EXIT})":
        said = [line for line in step.lines if line.startswith("[distill] finished, but")]
        step.status = "ok"
        step.note += "; " + (said[-1].removeprefix("[distill] ") if said else "export formats refused by their checks")
    return step


def run_bench_train(root: Path, limit: float, out: Path) -> Step:
    step = Step("bench-train --device cuda", note=" ".join(BENCH_TRAIN_ARGS))
    return run_step(step, [sys.executable, "-m", "distill.benchmarks.train", "--device", "cuda", *BENCH_TRAIN_ARGS,
                           "--out", str(out)], limit, root)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def figures(steps: list[Step], folder: Path, bench_train_out: Path) -> list[tuple[str, str, str]]:
    """(part, item, figure) rows of the final table."""
    rows = [("check", s.name, f"{s.status}, {s.seconds:.1f} s" + (f" ({s.note})" if s.note else "")) for s in steps]
    timings = _read_json(folder / "timings.json")
    if isinstance(timings, dict):
        rows += [("stage seconds", k, str(v)) for k, v in timings.items() if isinstance(v, (int, float))]
    else:
        rows.append(("stage seconds", "timings.json", f"missing in {folder} (the run did not finish)"))
    train_rows = []
    if bench_train_out.is_file():
        train_rows = [json.loads(line) for line in bench_train_out.read_text().splitlines() if line.strip()]
    for r in train_rows:
        item = f"{r['shape']} ({r['batch_size']} x {r['seq_len']}) {r['engine']}"
        figure = f"{r['samples_per_s']:.0f} seq/s, {r['linear_tflops']:.1f} linear TFLOP/s, {r['precision']}"
        if r["engine"] != "bare" and r.get("vs_bare") is not None:
            figure += f", {r['vs_bare']:.2f}x bare"
            if r.get("target") is not None:
                figure += f" (target >= {r['target']:.1f}x: {'met' if r['vs_bare'] >= r['target'] else 'MISSED'})"
        rows.append(("bench-train", item, figure))
    if not train_rows:
        rows.append(("bench-train", "rows", "none written"))
    bench = _read_json(folder / "bench.json") or []
    gpu = [r for r in bench if str(r.get("device", "")).startswith("cuda")]
    for r in gpu:
        rows.append(("bench GPU rows", f"{r['name']} {r['runtime']}",
                     f"p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms, {r['throughput_b32']:.0f} ex/s (b32), "
                     f"score {r['score']:.4f}"))
    if not gpu:
        rows.append(("bench GPU rows", "rows", "none in bench.json"))
    skipped = {line.strip() for s in steps for line in s.lines if line.startswith("[bench]") and " skipped:" in line}
    rows += [("bench GPU rows", "skipped", line.removeprefix("[bench] ")) for line in sorted(skipped)]
    return rows


def table(rows: list[tuple[str, str, str]]) -> str:
    return "\n".join(["| part | item | figure |", "|---|---|---|"]
                     + [f"| {part} | {item} | {figure.replace('|', '/')} |" for part, item, figure in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: torch {torch.__version__} sees no CUDA device on this machine; run `make gpu-check` on "
              "one with an NVIDIA GPU (and a CUDA build of torch)")
        return 2
    root = project_root()
    device = f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    print(f"[gpu-check] on {device}; limits {LIMITS} s")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench_train_out = Path(tmp) / "bench_train.jsonl"
        steps = [run_tests(root, LIMITS["tests"]), run_distill(root, LIMITS["distill"]),
                 run_bench_train(root, LIMITS["bench-train"], bench_train_out)]
        rows = figures(steps, run_dir(root), bench_train_out)
    print(f"\n## gpu-check on {device}: {time.perf_counter() - began:.0f} s\n")
    print(table(rows))
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
