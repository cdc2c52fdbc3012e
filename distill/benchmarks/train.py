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
from __future__ import annotations

from distill.base.errors import UserError
import argparse
import contextlib
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("intermediate", "task")
ENGINES = ("textbrewer", "ours", "ours-grouped", "ours-baseline")
LABEL_NAMES = ["0", "1"]
STUDENT = dict(layers=3, hidden=384, heads=12, ffn=1536)


class BenchTrainError(UserError, ValueError):
    pass


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat (Linux; zeros elsewhere)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


class Clock:
    """Wall, own-process CPU and machine CPU stamps; ``contention`` = cores other processes used."""

    def __init__(self):
        self.wall, self.own, self.machine = [], [], []

    def stamp(self) -> None:
        self.wall.append(time.perf_counter())
        self.own.append(time.process_time())
        self.machine.append(machine_cpu_s()[0])

    def own_cpu_s(self, first: int, last: int) -> float:
        return self.own[last] - self.own[first]

    def other_cores(self, first: int, last: int) -> float:
        wall = self.wall[last] - self.wall[first]
        own = self.own[last] - self.own[first]
        return round((self.machine[last] - self.machine[first] - own) / max(wall, 1e-9), 2)


def labelled_snippets(path: Path) -> tuple[list[str], list[int]]:
    """Rotten Tomatoes review snippets (fresh = 1, rotten = 0), in file order."""
    import pandas as pd

    df = pd.read_csv(path)
    df = df[df.category.isin(["fresh", "rotten"])].dropna(subset=["text"])
    return df.text.astype(str).tolist(), (df.category == "fresh").astype(int).tolist()


def fixed_order(n_examples: int, n_batches: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Example indices of each batch: one numpy permutation, read in order, wrapping past the end."""
    order = np.random.default_rng(seed).permutation(n_examples)
    return [order[np.arange(b * batch_size, (b + 1) * batch_size) % n_examples] for b in range(n_batches)]


def fixed_batches(tokenizer, texts: list[str], labels: list[int], n_batches: int, batch_size: int, max_len: int,
                  seed: int) -> list[dict[str, torch.Tensor]]:
    """The benchmark's batches: padded to each batch's longest, truncated to ``max_len``, with labels."""
    batches = []
    for idx in fixed_order(len(texts), n_batches, batch_size, seed):
        enc = tokenizer([texts[i] for i in idx], padding="longest", truncation=True, max_length=max_len,
                        return_tensors="pt")
        batch = dict(enc)  # a plain dict: TextBrewer dispatches on `type(batch) is dict`
        batch["labels"] = torch.tensor([labels[i] for i in idx])
        batches.append(batch)
    return batches


def grouped_batches(tokenizer, texts: list[str], labels: list[int], n_batches: int, batch_size: int, max_len: int,
                    seed: int) -> list[dict[str, torch.Tensor]]:
    """The same examples as ``fixed_batches``, batched by the project's length-grouped sampler."""
    from transformers import DataCollatorWithPadding

    from distill.engine.batching import LengthGroupedBatchSampler

    idx = np.concatenate(fixed_order(len(texts), n_batches, batch_size, seed))
    enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_len)
    rows = [{"input_ids": enc["input_ids"][j], "attention_mask": enc["attention_mask"][j],
             "token_type_ids": enc["token_type_ids"][j], "labels": labels[i]} for j, i in enumerate(idx)]
    sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], batch_size, shuffle=True, seed=seed)
    collate = DataCollatorWithPadding(tokenizer)
    return [dict(collate([rows[j] for j in chunk])) for chunk in list(sampler)[:n_batches]]


def loss_weights(mode: str) -> dict[str, float]:
    if mode == "task":
        return {"soft_ce": 1.0, "hard_ce": 1.0}
    return {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_scores_mse": 1.0}


def _summary(args, engine: str, step_s: list[float], batches, clock: Clock, window: tuple[int, int],
             loss_first: float, loss_last: float, extra: dict) -> dict:
    timed = batches[args.warmup:args.warmup + args.steps]
    samples = sum(b["input_ids"].shape[0] for b in timed)
    other_cores = clock.other_cores(*window)
    return {"engine": engine, "mode": args.mode, "samples_per_s": round(samples / sum(step_s), 3),
            # this process's CPU time per sample: less sensitive than wall time to other programs on the machine
            "cpu_ms_per_sample": round(1000 * clock.own_cpu_s(*window) / (samples * (window[1] - window[0])
                                                                          / len(timed)), 2),
            "median_step_s": round(statistics.median(step_s), 5), "timed_steps": len(step_s),
            "batch_size": args.batch_size, "max_len": args.max_len,
            "mean_padded_len": round(statistics.mean(b["input_ids"].shape[1] for b in timed), 2),
            "real_token_share": round(float(sum(b["attention_mask"].sum() for b in timed))
                                      / sum(b["attention_mask"].numel() for b in timed), 3),
            "other_procs_cpu_cores": other_cores, "threads": torch.get_num_threads(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "loss_first": round(loss_first, 5), "loss_last_timed": round(loss_last, 5), **extra}


def _data(args, tokenizer, grouped: bool):
    from distill.base import assets

    texts, labels = labelled_snippets(assets.rotten_tomatoes_csv())
    make = grouped_batches if grouped else fixed_batches
    return make(tokenizer, texts, labels, args.warmup + args.steps + 1, args.batch_size, args.max_len, args.seed)


def run_ours(args, grouped: bool) -> dict:
    """This project's engine: DistillObjective in distill.engine.trainer.train, one logged record per step."""
    from distill.base import assets
    from distill.config import TrainConfig
    from distill.engine.layer_map import build_layer_map
    from distill.tasks import SEQUENCE_CLASSIFICATION
    from distill.engine.objectives import DistillObjective
    from distill.engine.trainer import train
    from students.build import build_student
    from students.presets import resolve_shape
    from teachers.load import load_classifier, load_tokenizer

    torch.manual_seed(args.seed)
    teacher_dir = str(assets.minilm_dir())
    tokenizer = load_tokenizer(teacher_dir)
    batches = _data(args, tokenizer, grouped)
    teacher = load_classifier(teacher_dir, LABEL_NAMES, SEQUENCE_CLASSIFICATION)
    student = build_student(resolve_shape("custom", **STUDENT), teacher, kind="classifier",
                            label_names=LABEL_NAMES, init="random", seed=args.seed)
    matches = build_layer_map(loss_weights(args.mode), "uniform", STUDENT["layers"], teacher.config.num_hidden_layers)
    objective = DistillObjective(student, teacher, matches, temperature=1.0)
    clock = Clock()
    # a stamp as each batch is fetched (for the contention figure; accelerate fetches one batch ahead)
    loader = torch.utils.data.DataLoader(_Stamped(batches, clock), batch_size=None)
    cfg = TrainConfig(max_steps=len(batches), batch_size=args.batch_size, lr=1e-4, warmup_ratio=0.0, log_every=1,
                      save_every=0, eval_every=0, mixed_precision="no")
    with tempfile.TemporaryDirectory() as out:
        result = train(objective, loader, cfg, out, save_model=lambda m, f: None, seed=args.seed,
                       desc=f"{args.mode} ours")
    first, last = args.warmup, args.warmup + args.steps
    # one record per step (log_every=1): its examples_per_s covers that step's fetch, forward, backward, update
    step_s = [b["input_ids"].shape[0] / h["examples_per_s"] for b, h in zip(batches[first:last], result.history[first:last])]
    # accelerate fetches one batch ahead, so stamp k is taken as step k-1 starts
    window = (first + 1, last) if last > first + 1 else (0, len(clock.wall) - 1)
    return _summary(args, "ours-grouped" if grouped else "ours", step_s, batches, clock, window,
                    result.history[0]["loss"], result.history[last - 1]["loss"],
                    {"student_attention": student.config._attn_implementation})


class _Stamped(torch.utils.data.IterableDataset):
    """A fixed list of batches that records a clock stamp as each one is handed to the loop."""

    def __init__(self, batches, clock: Clock):
        self.batches, self.clock = batches, clock

    def __iter__(self):
        for batch in self.batches:
            self.clock.stamp()
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


def _recording_distiller(device, out: str, steps: int, dcfg, teacher, student, adaptor_t, adaptor_s,
                         losses: list[float]):
    """TextBrewer's GeneralDistiller writing into ``out``, appending each step's total loss to ``losses``."""
    from textbrewer import GeneralDistiller, TrainingConfig

    config = TrainingConfig(device=device, log_dir=None, output_dir=out, ckpt_steps=steps)
    distiller = GeneralDistiller(config, dcfg, model_T=teacher, model_S=student, adaptor_T=adaptor_t,
                                 adaptor_S=adaptor_s)
    write_loss = distiller.write_loss

    def record_loss(total, step, terms=None):
        losses.append(float(total.detach()))
        write_loss(total, step, terms)

    distiller.write_loss = record_loss
    return distiller


def run_textbrewer(args) -> dict:
    """TextBrewer's own loop, GeneralDistiller.train(num_steps), with its README's setup."""
    import random

    import textbrewer
    from textbrewer import DistillationConfig
    from transformers import AutoConfig, AutoTokenizer, BertConfig, BertForSequenceClassification

    from distill.base import assets

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    teacher_dir = str(assets.minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    batches = _data(args, tokenizer, grouped=False)
    tcfg = AutoConfig.from_pretrained(teacher_dir, num_labels=2, attn_implementation="eager")
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir, config=tcfg)
    h = STUDENT["hidden"]
    scfg = BertConfig(vocab_size=tcfg.vocab_size, hidden_size=h, num_hidden_layers=STUDENT["layers"],
                      num_attention_heads=STUDENT["heads"], intermediate_size=STUDENT["ffn"],
                      max_position_embeddings=tcfg.max_position_embeddings, type_vocab_size=tcfg.type_vocab_size,
                      pad_token_id=tcfg.pad_token_id, num_labels=2, attn_implementation="eager")
    student = BertForSequenceClassification(scfg)
    if args.mode == "task":
        dcfg = DistillationConfig(temperature=1, kd_loss_type="ce", kd_loss_weight=1, hard_label_weight=1)
        adaptor_t = lambda batch, out: {"logits": out.logits}  # noqa: E731
        adaptor_s = lambda batch, out: {"logits": out.logits, "losses": out.loss}  # noqa: E731
        forward_args = {}
    else:
        n_t, n_s = tcfg.num_hidden_layers, STUDENT["layers"]
        matches = [{"layer_T": s * n_t // n_s, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
                   for s in range(n_s + 1)]  # hidden_states[0] is the embedding output
        matches += [{"layer_T": s * n_t // n_s - 1, "layer_S": s - 1, "feature": "attention",
                     "loss": "attention_mse", "weight": 1} for s in range(1, n_s + 1)]
        dcfg = DistillationConfig(temperature=1, kd_loss_weight=0, hard_label_weight=0, intermediate_matches=matches)
        adaptor_t = adaptor_s = lambda batch, out: {"hidden": out.hidden_states, "attention": out.attentions,  # noqa: E731
                                                    "inputs_mask": batch["attention_mask"]}
        forward_args = {"output_hidden_states": True, "output_attentions": True}
    clock, losses = Clock(), []

    def stamp(batch):  # TextBrewer calls its batch_postprocessor at the start of every step
        clock.stamp()
        return batch

    with tempfile.TemporaryDirectory() as out:
        distiller = _recording_distiller("cpu", out, len(batches), dcfg, teacher, student, adaptor_t, adaptor_s, losses)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        with distiller:
            distiller.train(optimizer, batches, num_steps=len(batches), batch_postprocessor=stamp, **forward_args)
    first, last = args.warmup, args.warmup + args.steps
    step_s = np.diff(clock.wall)[first:last].tolist()
    return _summary(args, "textbrewer", step_s, batches, clock, (first, last), losses[0], losses[last - 1],
                    {"textbrewer": textbrewer.__version__, "student_attention": "eager"})


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    if args.worker == "textbrewer":
        return run_textbrewer(args)
    return run_ours(args, grouped=args.worker == "ours-grouped")


def textbrewer_folder(path: str | None) -> Path | None:
    """The folder TextBrewer is installed in (None: run without it); checked before any run starts."""
    if not path:
        return None
    folder = Path(path).expanduser()
    if not (folder / "textbrewer" / "__init__.py").is_file():
        raise BenchTrainError(f"--textbrewer-path / TEXTBREWER_PATH {path!r} has no textbrewer package; install it "
                              "with `pip install --no-deps --target DIR textbrewer==0.2.1.post1 tensorboard absl-py`")
    return folder


def _project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def run_engine(engine: str, args, tb: Path | None) -> dict:
    """One timed run in a fresh interpreter; its last stdout line is the JSON summary.

    ours-baseline: this file's "ours" worker on the engine of another checkout (--baseline-tree, e.g. an
    older commit), for before/after figures in the same alternation."""
    root = Path(args.baseline_tree).resolve() if engine == "ours-baseline" else _project_root()
    path = [str(root)] + ([str(tb)] if engine == "textbrewer" else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    worker_engine = "ours" if engine == "ours-baseline" else engine
    cmd = [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(root)!r}); "
           f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')",
           "--worker", worker_engine, "--mode", args.mode,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--max-len", str(args.max_len), "--threads", str(args.threads), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} ({args.mode}) failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "engine": engine}


# ---------------------------------------------------------------------------------------------
# --device cpu|cuda: a real run's shapes, engine and a bare PyTorch loop side by side in one process

TEACHER_SHAPES = {  # random weights: throughput does not depend on their values
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                  vocab_size=30522),  # BERT-large (uncased vocabulary)
    "tiny": dict(num_hidden_layers=8, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                 vocab_size=2000),  # tests on a CPU (the student shares the teacher's vocabulary)
}
STUDENT_PRESET = "tinybert-4l-312"  # TinyBERT-4: 4 layers x 312, 12 heads, FFN 1200
STAGE_SHAPES = {"general": (256, 128), "2a": (32, 64)}  # (batch, tokens) of the general stage and of stage 2a
TARGETS = {"general": 0.9, "2a": 0.8}  # engine / bare the engine should reach at these shapes
DEVICE_LOSSES = {"embedding_mse": 1.0, "hidden_mse": 1.0}  # through a student->teacher projection (312 -> 1024)
DEVICE_ENGINES = ("ours", "bare", "textbrewer")
LR, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-4, 0.01, 1.0  # TrainConfig's decay and clipping, in every loop alike


def parse_shapes(text: str) -> list[tuple[str, int, int]]:
    """``general,2a`` or ``BxS`` entries (e.g. ``4x16``) -> [(name, batch, tokens)]."""
    shapes = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        if entry in STAGE_SHAPES:
            shapes.append((entry, *STAGE_SHAPES[entry]))
            continue
        batch, _, seq = entry.partition("x")
        if not (batch.isdigit() and seq.isdigit() and int(batch) > 0 and int(seq) > 0):
            raise BenchTrainError(f"--shapes entry {entry!r}: use {', '.join(STAGE_SHAPES)} or BATCHxTOKENS, e.g. 4x16")
        shapes.append((entry, int(batch), int(seq)))
    if not shapes:
        raise BenchTrainError("--shapes is empty")
    return shapes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def random_teacher(shape: str, device: torch.device):
    """A BERT encoder of ``TEACHER_SHAPES[shape]`` with random weights, built on ``device``, eval, frozen."""
    from transformers import AutoModel, BertConfig

    config = BertConfig(max_position_embeddings=512, **TEACHER_SHAPES[shape])
    with torch.device(device):
        return AutoModel.from_config(config).eval().requires_grad_(False)


def synthetic_batches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` full-length batches of random ids (a packed corpus has no padding), on the CPU like a loader's."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1000, vocab, (batch, seq), generator=g),  # (batch, seq)
             "attention_mask": torch.ones(batch, seq, dtype=torch.long),
             "token_type_ids": torch.zeros(batch, seq, dtype=torch.long)} for _ in range(n)]


def layer_pairs(matches) -> list[tuple[int, int]]:
    """(student layer, teacher layer) of every hidden-state match (0 = embeddings): the bare loop's map."""
    return [(m.student_layer, m.teacher_layer) for m in matches]


def bare_loss(student, projections, teacher, batch: dict[str, torch.Tensor], pairs) -> torch.Tensor:
    """Embedding + hidden MSE by hand: the teacher under no_grad, each mapped student state projected to the
    teacher's width (under the caller's autocast) and compared in float32, as the engine's token_mse does."""
    with torch.no_grad():
        t_hidden = teacher(**batch, output_hidden_states=True).hidden_states  # (layers + 1) x (batch, seq, d_t)
    s_hidden = student(**batch, output_hidden_states=True).hidden_states  # (layers + 1) x (batch, seq, d_s)
    total = torch.zeros((), device=batch["input_ids"].device)
    for s_layer, t_layer in pairs:
        projected = projections["embedding" if s_layer == 0 else "hidden"](s_hidden[s_layer])  # (batch, seq, d_t)
        with torch.autocast(projected.device.type, enabled=False):
            total = total + F.mse_loss(projected.float(), t_hidden[t_layer].float())
    return total


def linear_flops(models: dict[str, nn.Module], run) -> dict[str, int]:
    """FLOPs of every nn.Linear forward while ``run()`` runs, per named model: 2 * in * out * rows."""
    counts = dict.fromkeys(models, 0)
    handles = []
    for key, model in models.items():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                def count(mod, inputs, _out, key=key):
                    counts[key] += 2 * mod.in_features * mod.out_features * (inputs[0].numel() // mod.in_features)
                handles.append(layer.register_forward_hook(count))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def _decay_groups(params: list[tuple[str, nn.Parameter]]) -> list[dict]:
    """TrainConfig's rule: weight decay on matrices, none on biases and LayerNorm weights."""
    return [{"params": [p for _, p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0}]


def bare_round(student, projections, teacher, batches, pairs, device: torch.device,
               dtype) -> tuple[list[float], list[float]]:
    """The reference loop: fused AdamW, clipping, autocast in ``dtype`` (None: float32); per-step seconds and
    losses, each step ending in the loss read (a host sync, as the engine's logging does) and a device sync."""
    params = [*student.named_parameters(), *projections.named_parameters()]
    optimizer = torch.optim.AdamW(_decay_groups(params), lr=LR, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    student.train()
    step_s, losses = [], []
    for batch in batches:
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            loss = bare_loss(student, projections, teacher, batch, pairs)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for _, p in params], MAX_GRAD_NORM)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        sync(device)
        step_s.append(time.perf_counter() - start)
    return step_s, losses


def engine_round(student, projections, teacher, matches, batches, device: torch.device,
                 seed: int) -> tuple[list[float], list[float]]:
    """distill.engine.trainer.train with DistillObjective, as every stage runs it, its projections starting from
    ``projections``' weights; per-step seconds from its one-record-per-step history (each record's window:
    fetch, forward, backward, update, loss read)."""
    from distill.config import TrainConfig
    from distill.engine.objectives import DistillObjective
    from distill.engine.trainer import train

    objective = DistillObjective(student, teacher, matches)
    objective.projections.load_state_dict(projections.state_dict())  # the bare loop's starting weights
    cfg = TrainConfig(max_steps=len(batches), batch_size=batches[0]["input_ids"].shape[0], lr=LR,
                      weight_decay=WEIGHT_DECAY, warmup_ratio=0.0, max_grad_norm=MAX_GRAD_NORM, log_every=1,
                      save_every=0, eval_every=0, mixed_precision="auto" if device.type == "cuda" else "no")
    try:
        with tempfile.TemporaryDirectory() as out:
            result = train(objective, torch.utils.data.DataLoader(batches, batch_size=None), cfg, out,
                           save_model=lambda m, f: None, seed=seed, desc="bench-train ours")
    finally:  # the taps' hooks on the shared teacher go with this round
        objective.student_tap.remove()
        objective.teacher_tap.remove()
    ran_on = next(student.parameters()).device
    if ran_on.type != device.type:
        raise BenchTrainError(f"the engine trained on {ran_on}, not on --device {device.type} (accelerate chose it)")
    return ([batches[0]["input_ids"].shape[0] / h["examples_per_s"] for h in result.history],
            [h["loss"] for h in result.history])


def textbrewer_round(student, teacher, pairs, batches, device: torch.device, dtype) -> tuple[list[float], list[float]]:
    """TextBrewer's GeneralDistiller on the same batches and losses (one projection per match, its design),
    under the same autocast; a step's time runs from one batch_postprocessor call (after a sync) to the next."""
    from textbrewer import DistillationConfig

    s_width, t_width = student.config.hidden_size, teacher.config.hidden_size
    matches = [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                "proj": ["linear", s_width, t_width]} for s, t in pairs]
    dcfg = DistillationConfig(temperature=1, kd_loss_weight=0, hard_label_weight=0, intermediate_matches=matches)
    adaptor = lambda batch, out: {"hidden": out.hidden_states, "inputs_mask": batch["attention_mask"]}  # noqa: E731
    stamps, losses = [], []

    def stamp(batch):
        sync(device)
        stamps.append(time.perf_counter())
        return batch

    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as out:
        distiller = _recording_distiller(device, out, len(batches), dcfg, teacher, student, adaptor, adaptor, losses)
        optimizer = torch.optim.AdamW(_decay_groups(list(student.named_parameters())), lr=LR, fused=True)
        with distiller, autocast:
            distiller.train(optimizer, batches, num_steps=len(batches), batch_postprocessor=stamp,
                            max_grad_norm=MAX_GRAD_NORM, output_hidden_states=True)
    return np.diff(stamps).tolist(), losses


def textbrewer_importable(folder: Path | None) -> str | None:
    """None when TextBrewer imports (from ``folder`` when given), else the one line saying why it is left out."""
    if folder is not None and str(folder) not in sys.path:
        sys.path.append(str(folder))
    try:
        import textbrewer  # noqa: F401
    except ImportError as err:
        return (f"textbrewer rows skipped: TextBrewer is not importable ({err}; give --textbrewer-path DIR or "
                "TEXTBREWER_PATH, see the top of this file; it is never a project dependency)")
    return None


def time_shape(name: str, batch: int, seq: int, teacher, args, device: torch.device, engines: list[str]) -> list[dict]:
    """Every engine on one shape, alternating (order reversed every repeat) after one untimed warm-up round
    each; the student (and projections) of every round start from the same weights. One row per engine."""
    from distill.engine.layer_map import build_layer_map
    from distill.engine.placement import AUTOCAST_DTYPES, resolve_precision
    from students.build import build_student
    from students.presets import resolve_shape

    dtype = AUTOCAST_DTYPES[resolve_precision("auto")] if device.type == "cuda" else None
    student = build_student(resolve_shape(STUDENT_PRESET), teacher, kind="base", init="random", seed=args.seed)
    student.to(device)
    matches = build_layer_map(DEVICE_LOSSES, "uniform", student.config.num_hidden_layers,
                              teacher.config.num_hidden_layers)
    pairs = layer_pairs(matches)
    batches = synthetic_batches(args.warmup + args.steps + 1, batch, seq, teacher.config.vocab_size, args.seed)
    torch.manual_seed(args.seed)
    width = lambda: nn.Linear(student.config.hidden_size, teacher.config.hidden_size, device=device)  # noqa: E731
    projections = nn.ModuleDict({"embedding": width(), "hidden": width()})
    first = {k: v.to(device) for k, v in batches[0].items()}
    with torch.no_grad():
        flops = linear_flops({"student": nn.ModuleList([student, projections]), "teacher": teacher},
                             lambda: bare_loss(student, projections, teacher, first, pairs))
    step_flops = 3 * flops["student"] + flops["teacher"]  # student forward + backward, teacher forward
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

    def one_round(engine: str) -> tuple[list[float], list[float]]:
        fresh = copy.deepcopy(student)
        if engine == "ours":
            step_s, losses = engine_round(fresh, projections, teacher, matches, batches, device, args.seed)
        elif engine == "bare":
            step_s, losses = bare_round(fresh, copy.deepcopy(projections), teacher, batches, pairs, device, dtype)
        else:
            step_s, losses = textbrewer_round(fresh, teacher, pairs, batches, device, dtype)
        sync(device)
        return step_s[args.warmup:args.warmup + args.steps], losses

    for engine in engines:  # warm-up: kernels chosen, allocator grown, libraries loaded
        one_round(engine)
    runs: dict[str, list[tuple[float, float, float]]] = {e: [] for e in engines}
    for repeat in range(args.repeats):
        for engine in engines if repeat % 2 == 0 else engines[::-1]:
            step_s, losses = one_round(engine)
            runs[engine].append((batch * len(step_s) / sum(step_s), losses[0], losses[args.warmup + args.steps - 1]))
            print(f"[{name} b{batch} s{seq}] run {repeat + 1}/{args.repeats} {engine}: {runs[engine][-1][0]:.1f} seq/s",
                  flush=True)
    rows = []
    for engine, measured in runs.items():
        per_s = statistics.median(r[0] for r in measured)
        rows.append({"shape": name, "batch_size": batch, "seq_len": seq, "engine": engine,
                     "device": device_name(device), "precision": precision, "samples_per_s": round(per_s, 2),
                     "runs": [round(r[0], 2) for r in measured],
                     "linear_tflops": round(step_flops * per_s / batch / 1e12, 4), "flops_per_step": step_flops,
                     "loss_first": round(measured[-1][1], 5), "loss_last_timed": round(measured[-1][2], 5),
                     "attention": f"teacher {teacher.config._attn_implementation}, "
                                  f"student {student.config._attn_implementation}",
                     "teacher_layers": teacher.config.num_hidden_layers, "teacher_hidden": teacher.config.hidden_size})
    bare = next((r["samples_per_s"] for r in rows if r["engine"] == "bare"), None)
    for row in rows:
        row["vs_bare"] = round(row["samples_per_s"] / bare, 3) if bare else None
        row["target"] = TARGETS.get(name) if row["engine"] == "ours" else None
    return rows


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


def run_device(args) -> list[dict]:
    """--device: the engine, a bare PyTorch loop and TextBrewer (when importable) in this process."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchTrainError(f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu")
    shapes = parse_shapes(args.shapes)
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        raise BenchTrainError("bench-train: --repeats and --steps must be >= 1, --warmup >= 0")
    engines = ["ours", "bare"]
    skipped = textbrewer_importable(textbrewer_folder(args.textbrewer_path))
    if skipped:
        print(skipped)
    else:
        engines.append("textbrewer")
    # for this run only: threads, and the engine's Accelerator would take a visible GPU for --device cpu
    saved, threads = {k: os.environ.get(k) for k in ("ACCELERATE_USE_CPU", "TQDM_DISABLE")}, torch.get_num_threads()
    os.environ.update({"TQDM_DISABLE": "1", **({"ACCELERATE_USE_CPU": "true"} if device.type == "cpu" else {})})
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        return _run_device(args, device, shapes, engines)
    finally:
        torch.set_num_threads(threads)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_device(args, device: torch.device, shapes, engines: list[str]) -> list[dict]:
    torch.manual_seed(args.seed)
    teacher = random_teacher(args.teacher_shape, device)
    print(f"bench-train on {device_name(device)}: teacher {args.teacher_shape} (random, "
          f"{teacher.config.num_hidden_layers} x {teacher.config.hidden_size}), student {STUDENT_PRESET}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.repeats} alternations", flush=True)
    results = []
    for name, batch, seq in shapes:
        rows = time_shape(name, batch, seq, teacher, args, device, engines)
        results += rows
        if args.out:
            with open(args.out, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
    print(device_table(results))
    print("linear TFLOP/s: 2 * in * out * tokens per nn.Linear forward, x3 for the student's forward and backward, "
          f"x1 for the teacher's forward; {results[0]['precision']} ({results[0]['attention']}).")
    return results


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


def main(argv: list[str] | None = None) -> list[dict] | dict:
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
    parser.add_argument("--worker", choices=ENGINES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device:
        return run_device(args)
    if args.worker:
        result = worker(args)
        print(json.dumps(result), flush=True)
        return result
    engines = [e.strip() for e in args.engines.split(",") if e.strip() and e.strip() != "ours-baseline"]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        raise BenchTrainError(f"bench-train: unknown engines {unknown} (choose from {ENGINES}) or repeats/steps < 1")
    if args.baseline_tree:
        if not (Path(args.baseline_tree) / "distill" / "objectives.py").is_file():
            raise BenchTrainError(f"--baseline-tree {args.baseline_tree!r} is not a checkout of this project")
        engines.append("ours-baseline")
    tb = textbrewer_folder(args.textbrewer_path)
    if tb is None and "textbrewer" in engines:
        engines.remove("textbrewer")
        print("TextBrewer not given (--textbrewer-path or TEXTBREWER_PATH): timing this project's engine only")
    modes = MODES if args.mode == "both" else (args.mode,)
    results = []
    for mode in modes:
        for repeat in range(args.repeats):
            for engine in engines if repeat % 2 == 0 else engines[::-1]:
                run_args = argparse.Namespace(**{**vars(args), "mode": mode})
                result = run_engine(engine, run_args, tb)
                results.append(result)
                print(f"[{mode}] run {repeat + 1}/{args.repeats} {engine}: {result['samples_per_s']:.2f} samples/s "
                      f"(other processes {result['other_procs_cpu_cores']:.2f} cores)", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(result) + "\n")
    print(table(results))
    print(f"{os.cpu_count()} CPUs on this machine, {args.threads} threads per run; 'other processes' is the CPU "
          "other programs used during the timed steps (0 when the machine was quiet).")
    return results


if __name__ == "__main__":
    main()
