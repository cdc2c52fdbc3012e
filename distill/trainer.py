"""The one training loop. Every stage (teacher fine-tuning, general and task distillation, recovery
after pruning) hands it an objective and data; nothing else trains a model.

Accelerate handles devices, mixed precision, gradient accumulation and distributed runs. A run killed
at any point and restarted with the same command continues from its last checkpoint: model,
optimizer, scheduler, RNG states and position in the data are restored.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from distill.config import TrainConfig
from distill.tracking import Tracker

CHECKPOINT = "checkpoint"
BEST = "model"


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


def resolve_precision(mode: str) -> str:
    if mode != "auto":
        return mode
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


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
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    accelerator = Accelerator(mixed_precision=resolve_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False)
    objective.to(accelerator.device)
    model = objective.trainable
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    if len(loader) == 0:
        raise ValueError(f"{desc}: no training batches (the training set is empty); check the task data or corpus")
    steps = total_steps(cfg, len(loader))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    objective.trainable = model

    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best_score": None, "best_step": None}
    rng_at_checkpoint = None
    ckpt = out_dir / CHECKPOINT
    if (ckpt / "trainer_state.json").is_file():
        accelerator.load_state(str(ckpt))
        rng_at_checkpoint = _rng_state()  # re-applied once the data iterator exists (creating it draws a seed)
        state = json.loads((ckpt / "trainer_state.json").read_text())
        accelerator.print(f"[{desc}] resuming from step {state['step']}/{steps} ({ckpt})")

    def save_checkpoint() -> None:
        tmp = out_dir / (CHECKPOINT + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.save_state(str(tmp))
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)  # atomic: a kill during save leaves the previous checkpoint intact

    def run_eval() -> None:
        model.eval()
        with torch.no_grad():
            metrics = evaluate(accelerator.unwrap_model(model))
        model.train()
        if tracker:
            tracker.log({f"dev_{k}": v for k, v in metrics.items()}, state["step"])
        if _improves(metrics["score"], state["best_score"]):
            state["best_score"], state["best_step"] = metrics["score"], state["step"]
            save_model(accelerator.unwrap_model(model), out_dir / BEST)
        bar.write(f"[{desc}] step {state['step']}: dev " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                  + f" (best {state['best_score']:.4f} @ {state['best_step']})")

    model.train()
    bar = tqdm(total=steps, initial=state["step"], desc=desc, dynamic_ncols=True, disable=not accelerator.is_main_process)
    history: list[dict] = []
    window_terms: dict[str, float] = {}
    window_count, window_examples, window_start = 0, 0, time.perf_counter()
    while state["step"] < steps:
        epoch_loader = accelerator.skip_first_batches(loader, state["batches_in_epoch"]) \
            if state["batches_in_epoch"] else loader
        if hasattr(epoch_loader, "set_epoch"):  # the batch order depends on (seed, epoch) only
            epoch_loader.set_epoch(state["epoch"])
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
                record.update(lr=scheduler.get_last_lr()[0], examples_per_s=window_examples / max(elapsed, 1e-9),
                              epoch=state["epoch"])
                history.append({"step": state["step"], **record})
                if tracker:
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
        save_model(accelerator.unwrap_model(model), out_dir / BEST)
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: the model folder is the artifact
    accelerator.free_memory()
    return TrainResult(state["step"], state["best_score"], out_dir / BEST, history)
