"""bench-train --device cpu|cuda: this project's engine against a bare PyTorch loop at a real run's shapes.

Why: on a GPU the engine's work per step should stay close to the least a loop can do. A BERT-large-shaped
teacher (random weights) and the TinyBERT-4 student train on full-length random batches at the general stage's
shape and 2a's; the engine, a hand-written PyTorch loop with the same losses, optimizer and precision, and
TextBrewer (when importable) alternate in this process, each round from the same student weights. Rows carry
sequences/s, the linear layers' achieved TFLOP/s and engine / bare beside its target (TARGETS); the top of
distill/benchmarks/train.py (the CLI's help) describes the setup in full."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.benchmarks.train_common import BenchTrainError, recording_distiller, textbrewer_folder

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
        distiller = recording_distiller(device, out, len(batches), dcfg, teacher, student, adaptor, adaptor, losses)
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
                "TEXTBREWER_PATH, see `python -m distill.benchmarks.train --help`; it is never a project dependency)")
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
    return results
