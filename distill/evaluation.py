"""Run a model over a split and score it with the task's metric."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.batching import to_model_inputs
from distill.metrics import compute_metrics


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) over the whole loader, in the dataset's order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels, order = [], [], []
    batches = loader.batch_sampler.batches() if hasattr(loader.batch_sampler, "batches") else None
    for i, batch in enumerate(loader):
        out = model(**{k: v.to(device) for k, v in to_model_inputs(batch).items()})
        logits.append(out.logits.float().cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
        if batches is not None:
            order += batches[i]
    model.train(was_training)
    all_logits, all_labels = np.concatenate(logits), np.concatenate(labels)
    if batches is not None:  # undo the length grouping
        inverse = np.empty(len(order), dtype=int)
        inverse[np.asarray(order)] = np.arange(len(order))
        all_logits, all_labels = all_logits[inverse], all_labels[inverse]
    return all_logits, all_labels


def evaluate(model: nn.Module, loader: DataLoader, metric: str) -> dict[str, float]:
    logits, labels = predict(model, loader)
    return compute_metrics(logits, labels, metric)
