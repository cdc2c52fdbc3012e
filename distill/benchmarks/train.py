"""Distillation training throughput: this project's engine against TextBrewer on identical batches.

Same work on both sides: the embedded MiniLM-L6 teacher, a 3-layer 384-wide student (12 heads, FFN
1536, random init), Rotten Tomatoes snippets in a fixed random order (numpy seed 42), batch 32 padded
to the batch's longest (max_len 64), 5 untimed warm-up steps then 30 timed steps, 2 threads.

  intermediate: embedding + hidden-state MSE and pre-softmax attention-score MSE, uniform layer map
                (TinyBERT 2a)
  task:         soft CE at T=1 + hard-label CE, teacher forward every step (TinyBERT 2b)

Engines, each run in its own subprocess (so one's memory and threads never disturb the other), the
runs alternating, the order reversed every repeat; the table shows medians over the repeats:

  ours          distill.engine.trainer.train on the fixed batches (the loop every stage uses)
  ours-grouped  the same examples, batched by the project's length-grouped sampler (the product view:
                what grouping adds on top of the engine)
  textbrewer    TextBrewer 0.2.1's GeneralDistiller loop (student with eager attention, as in its
                README), only when TextBrewer is importable from a separate folder:
                --textbrewer-path DIR or TEXTBREWER_PATH=DIR. It is never a project dependency:

    TB=$(mktemp -d)
    .venv/bin/python -m pip install -q --no-deps --target $TB textbrewer==0.2.1.post1 tensorboard absl-py
    make bench-train ARGS="--textbrewer-path $TB"

The machine is often shared: every run reports the CPU cores other processes used while it was timed.

--device cuda (or cpu): the shapes of a real run instead, all in one process. A BERT-large-shaped teacher
(random weights, 24 x 1024, 16 heads, FFN 4096; --teacher-shape tiny for tests) and the TinyBERT-4
student (4 x 312, 12 heads, FFN 1200), embedding + hidden-state MSE through a 312 -> 1024 projection, on
full-length random batches at the general stage's shape (batch 256, 128 tokens) and 2a's (32, 64):

  ours        distill.engine.trainer.train with DistillObjective (mixed_precision auto: bf16 on CUDA)
  bare        a plain PyTorch loop doing the same: teacher forward under no_grad, student forward and
              backward, the same losses in float32, fused AdamW, clipping, bf16 autocast on CUDA (fp32 on CPU)
  textbrewer  TextBrewer's GeneralDistiller under the same autocast, when importable

One untimed warm-up round each, then the engines alternate (order reversed every repeat), every round
starting from the same student weights; steps end in a host sync (the loss read) and a device sync.
Printed: sequences/s, the linear layers' achieved TFLOP/s (2 * in * out * tokens per nn.Linear forward,
x3 for the student's forward + backward, x1 for the teacher's forward) and engine / bare beside its target
(>= 0.9x at batch 256, >= 0.8x at batch 32):

    make bench-train ARGS="--device cuda"
"""
# The docstring above is the command's --help. This file is the command line and its two tables; the CPU mode
# lives in train_fixed.py, the --device mode in train_device.py, what both share in train_common.py.
from __future__ import annotations

import argparse
import math
import os
import statistics

from distill.benchmarks.train_device import STAGE_SHAPES, TEACHER_SHAPES, run_device
from distill.benchmarks.train_fixed import ENGINES, MODES, run_fixed


def table(results: list[dict]) -> str:
    """Medians per (mode, engine), and each engine's ratio to TextBrewer's median in the same mode."""
    lines = ["| mode | engine | samples/s (median) | runs | vs TextBrewer | CPU ms/sample (median) | CPU ratio | "
             "other processes (CPU cores) | padded len |", "|---|---|---|---|---|---|---|---|---|"]
    for mode in dict.fromkeys(r["mode"] for r in results):
        rows = [r for r in results if r["mode"] == mode]
        medians = {e: statistics.median(r["samples_per_s"] for r in rows if r["engine"] == e)
                   for e in ENGINES if any(r["engine"] == e for r in rows)}
        cpu = {e: statistics.median(r.get("cpu_ms_per_sample", math.nan) for r in rows if r["engine"] == e)
               for e in medians}
        for engine, med in medians.items():
            runs = [r for r in rows if r["engine"] == engine]
            ratio = f"{med / medians['textbrewer']:.2f}x" if "textbrewer" in medians else "n/a"
            cpu_ratio = f"{cpu['textbrewer'] / cpu[engine]:.2f}x" if "textbrewer" in cpu else "n/a"
            cpu_ratio = "n/a" if "nan" in cpu_ratio else cpu_ratio  # runs without the CPU figure
            lines.append(f"| {mode} | {engine} | {med:.2f} | " + ", ".join(f"{r['samples_per_s']:.1f}" for r in runs)
                         + f" | {ratio} | {cpu[engine]:.0f} | {cpu_ratio} | "
                         f"{statistics.median(r['other_procs_cpu_cores'] for r in runs):.2f} | "
                         f"{runs[0]['mean_padded_len']:.1f} |")
    return "\n".join(lines)


def device_table(rows: list[dict]) -> str:
    """One line per (shape, engine): median seq/s, linear TFLOP/s and the ratio to the bare loop beside its target."""
    lines = ["| shape | batch x tokens | engine | seq/s (median) | runs | linear TFLOP/s | vs bare | target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = ""
        if r["target"] is not None and r["vs_bare"] is not None:
            target = f">= {r['target']:.1f}x: {'met' if r['vs_bare'] >= r['target'] else 'MISSED'}"
        ratio = f"{r['vs_bare']:.2f}x" if r["vs_bare"] is not None else "n/a"
        lines.append(f"| {r['shape']} | {r['batch_size']} x {r['seq_len']} | {r['engine']} | "
                     f"{r['samples_per_s']:.1f} | "
                     + ", ".join(f"{v:.1f}" for v in r["runs"]) + f" | {r['linear_tflops']:.3f} | {ratio} | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES + ("both",), default="both")
    parser.add_argument("--repeats", type=int, default=3, help="alternations per mode (medians over these)")
    parser.add_argument("--engines", default=",".join(ENGINES[:3]), help="comma-separated subset of " + ",".join(ENGINES))
    parser.add_argument("--textbrewer-path", default=os.environ.get("TEXTBREWER_PATH"),
                        help="folder TextBrewer is installed in (default: $TEXTBREWER_PATH); without it, no TextBrewer")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--baseline-tree", default=None,
                        help="another checkout of this project (e.g. `git worktree add /tmp/old main~1`): adds an "
                             "ours-baseline engine timed on that checkout's engine, for before/after figures")
    parser.add_argument("--out", default=None, help="also write every run's JSON line to this file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="a real run's shapes instead: random BERT-large-shaped teacher -> TinyBERT-4, this "
                             "engine against a bare PyTorch loop (and TextBrewer when importable) in one process")
    parser.add_argument("--teacher-shape", choices=tuple(TEACHER_SHAPES), default="large",
                        help="with --device: the random teacher's shape (tiny: for tests on a CPU)")
    parser.add_argument("--shapes", default=",".join(STAGE_SHAPES),
                        help="with --device: general (batch 256, 128 tokens), 2a (32, 64) or BATCHxTOKENS, "
                             "comma-separated")
    args = parser.parse_args(argv)
    if args.device:
        results = run_device(args)
        print(device_table(results))
        print("linear TFLOP/s: 2 * in * out * tokens per nn.Linear forward, x3 for the student's forward and backward, "
              f"x1 for the teacher's forward; {results[0]['precision']} ({results[0]['attention']}).")
        return results
    results = run_fixed(args)
    print(table(results))
    print(f"{os.cpu_count()} CPUs on this machine, {args.threads} threads per run; 'other processes' is the CPU "
          "other programs used during the timed steps (0 when the machine was quiet).")
    return results


if __name__ == "__main__":
    main()
