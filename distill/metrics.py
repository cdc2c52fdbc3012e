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
