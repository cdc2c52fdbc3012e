"""Task metrics: each GLUE task's own, accuracy for the rest."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def compute_metrics(logits: np.ndarray, labels: np.ndarray, metric: str) -> dict[str, float]:
    """All the figures a task reports; ``metric`` names the headline one, returned as 'score' too."""
    if metric == "pearson":
        preds = logits.reshape(-1)
        out = {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
    else:
        preds = logits.argmax(-1)
        out = {"accuracy": float(accuracy_score(labels, preds))}
        if metric == "f1":
            out["f1"] = float(f1_score(labels, preds))
        if metric == "mcc":
            out["mcc"] = float(matthews_corrcoef(labels, preds))
    out["score"] = out[metric]
    return out


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 (seqeval, conlleval-compatible default mode) over IOB2
    tag sequences, one list per sentence; plus token accuracy. 'score' is the entity F1."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    tokens = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, predicted) for a, b in zip(g, p))
    out = {"entity_f1": float(f1_score(gold, predicted, zero_division=0)),
           "precision": float(precision_score(gold, predicted, zero_division=0)),
           "recall": float(recall_score(gold, predicted, zero_division=0)),
           "token_accuracy": correct / tokens if tokens else 0.0}
    out["score"] = out["entity_f1"]
    return out
