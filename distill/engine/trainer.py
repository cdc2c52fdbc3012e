"""The one training loop. Every stage (teacher fine-tuning, general and task distillation, recovery
after pruning) hands it an objective and data; nothing else trains a model.

Accelerate handles devices, mixed precision, gradient accumulation and distributed runs. A run killed
at any point and restarted with the same command continues from its last checkpoint: model,
optimizer, scheduler, RNG states and position in the data (epoch and batch) are restored, so the
resumed run ends with the weights an uninterrupted run would have (same machine, same process count).
"""
from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from distill.base.fsutil import begin_replace, commit_replace, recover_folder, scratch_path
from distill.engine.placement import resolve_attention, resolve_precision, use_attention
from distill.base.ranks import is_main_process, process_group_kwargs, wait_for_everyone
from distill.engine.tracking import Tracker


if TYPE_CHECKING:  # the engine takes any object with these fields; the config layer sits above it
    from distill.config import TrainConfig

BEST = "model"
CHECKPOINT = "checkpoint"  # the loop's resumable state inside a stage folder, removed when the stage is recorded done


class Objective(Protocol):
    """What a stage trains: ``trainable`` holds every updated parameter (student, projections);
    calling it on a batch returns the weighted total loss and each unweighted term as a float."""

    trainable: nn.Module

    def to(self, device: torch.device) -> "Objective": ...

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class TrainResult:
    step: int
    best_score: float | None
    best_dir: Path
    history: list[dict] = field(default_factory=list)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all parameters) on CPU and CUDA: the same update rule; the per-tensor
    loop took about 0.4 s a step for a 17M-parameter student on 2 CPU threads (fused about half)."""
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def steps_per_epoch(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps in one whole epoch: accelerate steps at the end of each epoch's data even when
    fewer than ``grad_accum`` batches have accumulated, so every epoch ends on a step of its own."""
    return math.ceil(batches_per_epoch / cfg.grad_accum)


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """``max_steps``, or the steps that train every batch of ``epochs`` epochs (a fractional last epoch:
    its share of the batches, counted up to whole accumulation windows)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    whole = math.floor(cfg.epochs)
    part_batches = math.ceil(round((cfg.epochs - whole) * batches_per_epoch, 6))  # (0.3 * 10 is 3.0000000000000004)
    return max(1, whole * steps_per_epoch(cfg, batches_per_epoch) + math.ceil(part_batches / cfg.grad_accum))


def fresh_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator with this stage's precision and accumulation. accelerate keeps both in process-wide
    singletons that refuse a second value, so a pipeline whose stages differ would crash at the second
    stage: the per-stage state is reset first (the process group, PartialState, is kept). The process
    group, when this creates it, gets the long timeout of distill.base.ranks (ranks wait at barriers
    while the main process runs a teacher pass)."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=resolve_precision(cfg.mixed_precision),
                       gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False,
                       kwargs_handlers=[process_group_kwargs()])


def freeze_unreached(objective: Objective, batch: dict, accelerator: Accelerator) -> list[str]:
    """Freeze the trainable parameters this stage's loss never reaches, and return their names.

    A stage's loss can leave parameters of its model out: the pooler in general distillation, the
    classifier in 2a. One process ignores them (no gradient, so AdamW leaves them as they are), but DDP
    waits for a gradient of every parameter and fails at the second step ("Expected to have finished
    reduction in the prior iteration"). ``find_unused_parameters`` does not help: the pooler output is part
    of the model's output, so DDP counts it as used. One probe of the loss on the first batch tells which
    parameters get no gradient; it runs under a forked RNG and does not touch ``.grad``, so training
    afterwards is exactly what it would have been."""
    named = [(name, p) for name, p in objective.trainable.named_parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        with accelerator.autocast():
            loss, _ = objective(send_to_device(batch, accelerator.device))
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    unreached = [name for (name, _), grad in zip(named, grads) if grad is None]
    for name, param in named:
        if name in unreached:
            param.requires_grad_(False)
    return unreached


def _across_ranks(accelerator: Accelerator, record: dict[str, float], throughput: float) -> tuple[dict, float]:
    """Loss terms averaged over the ranks (each rank's window holds its own share of the examples) and
    the throughput summed; every rank reaches the same logging step, so the collective is safe. A term
    only some ranks computed is averaged over those."""
    from accelerate.utils import gather_object

    records = gather_object([(record, throughput)])
    names = {k for r, _ in records for k in r}
    mean = {k: sum(r[k] for r, _ in records if k in r) / sum(k in r for r, _ in records) for k in sorted(names)}
    return mean, sum(t for _, t in records)


# TrainConfig keys added after checkpoints and run folders were written, with the value they had before:
# left out of resume settings and stage fingerprints at that value, so those are still resumed and reused
ADDED_LATER = {"attention": "auto"}


def added_later(key: str, value) -> bool:
    return key in ADDED_LATER and ADDED_LATER[key] == value


def _resume_settings(cfg: TrainConfig) -> dict:
    """The settings a checkpoint's position depends on (how often it saves or logs does not matter)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("save_every", "log_every") and not added_later(k, v)}


def _check_resumable(saved: dict, fresh: dict, ckpt: Path) -> None:
    if saved.get("processes", fresh["processes"]) != fresh["processes"]:
        raise RuntimeError(f"{ckpt} was written by {saved['processes']} processes and this run has "
                           f"{fresh['processes']}: resume with the same number of processes, or delete that folder")
    old = saved.get("settings", fresh["settings"])
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in fresh["settings"].items() if old.get(k) != v]
    if changed:
        raise RuntimeError(f"{ckpt} was written with other training settings ({'; '.join(changed)}): restore "
                           "them to resume, or delete that folder to start this training again")


def _improves(score: float, best: float | None) -> bool:
    """A NaN score (e.g. Pearson of constant predictions) is the worst: it never beats a number."""
    if math.isnan(score):
        return best is None
    return best is None or math.isnan(best) or score > best


def train(objective: Objective, loader: DataLoader, cfg: TrainConfig, out_dir: Path, *,
          save_model: Callable[[nn.Module, Path], None],
          evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          tracker: Tracker | None = None, seed: int = 42, desc: str = "train") -> TrainResult:
    """Optimise ``objective.trainable`` on ``loader``; keep the best model in ``out_dir/model``.

    ``evaluate(trainable)`` returns metrics with a ``score`` (higher is better); without it the last
    model is kept. ``save_model(trainable, folder)`` writes the artifact (e.g. a Hugging Face folder).

    ``out_dir/checkpoint`` is left behind marked finished: called again, train() returns at once. The
    caller deletes it once the result is recorded (``StageRun.finish``), so a kill in between never
    trains the stage again. Under several processes only the main one writes; the others wait.
    """
    out_dir = Path(out_dir)
    ckpt, best_dir = out_dir / CHECKPOINT, out_dir / BEST
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        recover_folder(ckpt)  # a kill mid-swap left the complete copy under checkpoint.old
        recover_folder(best_dir)
    wait_for_everyone()
    saved = json.loads((ckpt / "trainer_state.json").read_text()) if (ckpt / "trainer_state.json").is_file() else None
    if saved is not None and saved.get("finished"):
        if is_main_process():
            print(f"[{desc}] already trained ({saved['step']} steps, {ckpt} marked finished)")
        return TrainResult(saved["step"], saved["best_score"], best_dir, saved.get("history", []))

    set_seed(seed)
    accelerator = fresh_accelerator(cfg)
    objective.to(accelerator.device)
    kernel = use_attention(objective.trainable, resolve_attention(cfg.attention, accelerator.device))
    if kernel != "eager" and is_main_process():
        print(f"[{desc}] attention: {kernel} ({cfg.attention}; the losses read queries and keys, never the maps)")
    model = objective.trainable
    sampler = getattr(loader, "batch_sampler", None)  # our own; accelerate's wrappers do not pass set_epoch on
    if len(loader) == 0:
        raise ValueError(f"{desc}: no training batches (the training set is empty); check the task data or corpus")
    if accelerator.num_processes > 1:  # DDP needs a gradient for every parameter it averages
        frozen = freeze_unreached(objective, next(iter(loader)), accelerator)
        if frozen:
            accelerator.print(f"[{desc}] {len(frozen)} parameters get no gradient from this stage's loss and stay "
                              f"as they are: {', '.join(frozen[:4])}{' ...' if len(frozen) > 4 else ''}")
    optimizer = _adamw(_param_groups(model, cfg.weight_decay), cfg.lr, accelerator.device)
    loader = accelerator.prepare(loader)  # first: with N processes each one sees 1/N of the batches
    steps = total_steps(cfg, len(loader))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    objective.trainable = model

    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best_score": None, "best_step": None, "history": [],
             "settings": _resume_settings(cfg), "processes": accelerator.num_processes}
    rng_at_checkpoint = None
    if saved is not None:
        _check_resumable(saved, state, ckpt)
        accelerator.load_state(str(ckpt))
        rng_at_checkpoint = _rng_state()  # re-applied once the data iterator exists (creating it draws a seed)
        state = {**state, **saved}
        accelerator.print(f"[{desc}] resuming from step {state['step']}/{steps} ({ckpt})")
    if tracker and accelerator.is_main_process:
        tracker.rewind(state["step"])  # records past the checkpoint are logged again below
    history: list[dict] = state["history"]

    def save_checkpoint(finished: bool = False) -> None:
        """Model, optimizer, scheduler, RNG of every rank and the loop's position, swapped in crash-safely."""
        if accelerator.is_main_process:
            begin_replace(ckpt)
        accelerator.wait_for_everyone()
        tmp = scratch_path(ckpt)
        if finished:  # the model folder is final: only the loop's record is needed
            if accelerator.is_main_process:
                tmp.mkdir()
        else:
            accelerator.save_state(str(tmp))  # each rank writes its RNG state; the main rank the rest
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({**state, "finished": finished}))
            commit_replace(ckpt)
        accelerator.wait_for_everyone()

    def keep_model() -> None:
        if accelerator.is_main_process:
            save_model(accelerator.unwrap_model(model), best_dir)
        accelerator.wait_for_everyone()

    def run_eval() -> None:
        model.eval()
        with torch.no_grad():
            metrics = evaluate(accelerator.unwrap_model(model))
        model.train()
        if tracker and accelerator.is_main_process:
            tracker.log({f"dev_{k}": v for k, v in metrics.items()}, state["step"])
        score = metrics["score"]
        if accelerator.num_processes > 1:  # every rank must take the same branch: keep_model() holds a barrier
            from accelerate.utils import broadcast_object_list

            score = broadcast_object_list([score], from_process=0)[0]
        if _improves(score, state["best_score"]):
            state["best_score"], state["best_step"] = score, state["step"]
            keep_model()
        if accelerator.is_main_process:
            bar.write(f"[{desc}] step {state['step']}: dev " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                      + f" (best {state['best_score']:.4f} @ {state['best_step']})")

    model.train()
    bar = tqdm(total=steps, initial=state["step"], desc=desc, dynamic_ncols=True, disable=not accelerator.is_main_process)
    window_terms: dict[str, float] = {}
    window_count, window_examples, window_start = 0, 0, time.perf_counter()
    while state["step"] < steps:
        # the batch order depends on (seed, epoch) only: set it on the sampler itself, before any skip
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state["epoch"])
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(state["epoch"])
        epoch_loader = accelerator.skip_first_batches(loader, state["batches_in_epoch"]) \
            if state["batches_in_epoch"] else loader
        batches = iter(epoch_loader)
        if rng_at_checkpoint is not None:  # the first fetch draws the loader's seed, as it did before the kill
            first = next(batches, None)
            _set_rng_state(rng_at_checkpoint)
            rng_at_checkpoint = None
            batches = itertools.chain([first] if first is not None else [], batches)
        for batch in batches:
            with accelerator.accumulate(model):
                with accelerator.autocast():  # the teacher's forward too, not only the prepared student's
                    loss, terms = objective(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state["batches_in_epoch"] += 1
            window_examples += batch["input_ids"].shape[0]
            for k, v in {"loss": float(loss.detach()), **terms}.items():
                window_terms[k] = window_terms.get(k, 0.0) + v
            window_count += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            bar.update(1)
            elapsed = time.perf_counter() - window_start
            if cfg.log_every and (state["step"] % cfg.log_every == 0 or state["step"] == steps):
                record = {k: v / window_count for k, v in window_terms.items()}
                throughput = window_examples / max(elapsed, 1e-9)
                if accelerator.num_processes > 1:  # the logged loss is over all ranks' examples, as in one process
                    record, throughput = _across_ranks(accelerator, record, throughput)
                record.update(lr=scheduler.get_last_lr()[0], examples_per_s=throughput, epoch=state["epoch"])
                history.append({"step": state["step"], **record})
                if tracker and accelerator.is_main_process:
                    tracker.log(record, state["step"])
                bar.set_postfix(loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_s']:.0f}")
                window_terms, window_count, window_examples, window_start = {}, 0, 0, time.perf_counter()
            if evaluate and cfg.eval_every and state["step"] % cfg.eval_every == 0 and state["step"] < steps:
                run_eval()
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < steps:
                save_checkpoint()
            if state["step"] >= steps:
                break
        else:
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
    bar.close()
    if evaluate:
        if state["best_step"] != state["step"]:
            run_eval()
    else:
        keep_model()
    save_checkpoint(finished=True)
    accelerator.free_memory()
    return TrainResult(state["step"], state["best_score"], best_dir, history)
