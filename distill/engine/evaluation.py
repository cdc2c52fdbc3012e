"""Run a model over a split and score it with the task's metric; the task kind turns batches of logits
into per-example rows (padding removed for per-token logits) and computes the metric."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.engine.batching import to_model_inputs
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind


def _kind_and_metric(task) -> tuple[TaskKind, str, list[str] | None]:
    """``task`` is a TaskData, or a metric name (sentence classification)."""
    if isinstance(task, str):
        return SEQUENCE_CLASSIFICATION, task, None
    return task.kind, task.metric, task.label_names


def unsort(rows: list, order: list[int]) -> list:
    """Undo the length grouping of an evaluation loader: rows back in the dataset's order."""
    out = [None] * len(rows)
    for row, index in zip(rows, order):
        out[index] = row
    return out


@torch.no_grad()
def predict_rows(model: nn.Module, loader: DataLoader, kind: TaskKind = SEQUENCE_CLASSIFICATION) -> tuple[list, list]:
    """Per-example (logits, labels) over the whole loader, in the dataset's order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels, order = [], [], []
    batches = loader.batch_sampler.batches() if hasattr(loader.batch_sampler, "batches") else None
    for i, batch in enumerate(loader):
        out = model(**{k: v.to(device) for k, v in to_model_inputs(batch).items()})
        rows, label_rows = kind.rows(kind.logits(out).float().cpu().numpy(), kind.gold(batch),
                                     batch["attention_mask"].cpu().numpy())
        logits += rows
        labels += label_rows
        if batches is not None:
            order += batches[i]
    model.train(was_training)
    if batches is not None:
        logits, labels = unsort(logits, order), unsort(labels, order)
    return logits, labels


def predict(model: nn.Module, loader: DataLoader, kind: TaskKind = SEQUENCE_CLASSIFICATION):
    """(logits, labels) in the dataset's order: arrays for sentence tasks, per-sentence lists for tokens."""
    logits, labels = predict_rows(model, loader, kind)
    return kind.collect(logits), kind.collect(labels)


def evaluate(model: nn.Module, loader: DataLoader, task, examples=None) -> dict[str, float]:
    """Metrics of ``model`` on ``loader``; ``task`` is the TaskData (or a metric name for sentence tasks);
    ``examples``: the untokenized split the loader's rows come from (QA reads contexts and answers there)."""
    kind, metric, names = _kind_and_metric(task)
    logits, labels = predict_rows(model, loader, kind)
    return kind.metrics(logits, labels, metric, names, examples=examples)


def score_batches(task, logits: list[np.ndarray], labels: list[np.ndarray],
                  attention_masks: list[np.ndarray], examples=None) -> dict[str, float]:
    """Metrics from per-batch outputs of any runtime (e.g. ONNX Runtime), batch order kept; ``labels``: each
    batch's ``kind.gold(batch)``; ``examples`` as for ``evaluate``."""
    kind, metric, names = _kind_and_metric(task)
    logit_rows, label_rows = [], []
    for out, gold, mask in zip(logits, labels, attention_masks):
        rows, gold_rows = kind.rows(out, gold, mask)
        logit_rows += rows
        label_rows += gold_rows
    return kind.metrics(logit_rows, label_rows, metric, names, examples=examples)
