"""Trivial baselines: what a model that learned nothing scores on dev and test, for each task metric.

Every score the suite prints sits next to its baseline, the teacher gate compares against it, and the
report flags artifacts within noise of it. A metric finds its baseline by name in ``BASELINES``; a new
task kind registers its own with ``@register("metric_name")``.

Noise rule (``noise_margin``): an artifact is *within noise* of the baseline when its test score is
below ``reference + 2 * SE``, with n the number of test examples and SE the standard error of the score
of a model that is no better than the baseline: accuracy sqrt(p (1 - p) / n) at the baseline accuracy
p; F1, entity F1 and SQuAD F1 the largest SE of a proportion, 0.5 / sqrt(n); MCC and Pearson their null SE,
1 / sqrt(n).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from distill.tasks.metrics import compute_metrics


@dataclass
class Baseline:
    """A trivial predictor's scores; ``reference`` is what a useless model is held to (NaN scores -> 0)."""

    rule: str  # the trivial predictor, in words
    metric: str
    dev: float  # NaN when the metric is undefined for it (Pearson of a constant)
    test: float
    note: str = ""  # why a score is what it is (e.g. undefined for a constant)

    def reference(self, split: str) -> float:
        score = getattr(self, split)
        return 0.0 if math.isnan(score) else score

    def describe(self, split: str) -> str:
        """``majority class 'fresh' 0.5480`` or ``mean predictor n/a`` (one split)."""
        score = getattr(self, split)
        return f"{self.rule} {'n/a' if math.isnan(score) else f'{score:.4f}'}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update({k: None for k in ("dev", "test") if math.isnan(out[k])})  # JSON has no NaN
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Baseline:
        return cls(**{**data, **{k: math.nan for k in ("dev", "test") if data[k] is None}})


NOISE_RULE = ("within noise = test score below the baseline + 2 standard errors on the n test examples; SE: "
              "accuracy sqrt(p(1-p)/n) at the baseline accuracy p, F1 0.5/sqrt(n), MCC and Pearson 1/sqrt(n)")

BASELINES: dict[str, Callable[..., Baseline]] = {}
SE_RULES: dict[str, Callable[[float, int], float]] = {}


def register(*metrics: str, se: Callable[[float, int], float]):
    """Make ``fn(data) -> Baseline`` the baseline of ``metrics``; ``se(reference, n)`` its standard error."""
    def wrap(fn):
        for metric in metrics:
            BASELINES[metric] = fn
            SE_RULES[metric] = se
        return fn
    return wrap


def _labels(dataset) -> np.ndarray:
    return np.asarray(dataset["label"])


def _proportion_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@register("accuracy", se=_proportion_se)
@register("f1", se=lambda p, n: 0.5 / math.sqrt(n))
@register("mcc", se=lambda p, n: 1 / math.sqrt(n))
def majority_class(data) -> Baseline:
    """Predict the train split's most frequent class for every example."""
    counts = np.bincount(_labels(data.train), minlength=data.num_labels)
    majority = int(counts.argmax())
    name = data.label_names[majority]

    def score(split: str) -> float:
        labels = _labels(getattr(data, split))
        if len(labels) == 0:
            return math.nan
        logits = np.zeros((len(labels), data.num_labels), dtype=np.float32)
        logits[:, majority] = 1.0  # (examples, classes): always the majority class
        with warnings.catch_warnings():  # sklearn warns that precision is ill-defined for a constant
            warnings.simplefilter("ignore")
            return compute_metrics(logits, labels, data.metric)["score"]

    note = "" if data.metric == "accuracy" else f"{data.metric} of the constant prediction"
    return Baseline(f"majority class '{name}' ({counts[majority] / counts.sum():.1%} of train)", data.metric,
                    score("dev"), score("test"), note)


@register("pearson", se=lambda p, n: 1 / math.sqrt(n))
def mean_predictor(data) -> Baseline:
    """Predict the train mean for every example: Pearson is undefined for a constant."""
    mean = float(np.mean(_labels(data.train)))
    return Baseline(f"mean predictor ({mean:.3f})", data.metric, math.nan, math.nan,
                    "Pearson is undefined (NaN) for a constant prediction; a model that learned nothing "
                    "scores about 0, so 0 is the reference")


@register("entity_f1", se=lambda p, n: 0.5 / math.sqrt(n))
def all_outside(data) -> Baseline:
    """Tag every token O: no entity is predicted, so entity F1 is 0 on every split."""
    return Baseline("all-O tagger", data.metric, 0.0, 0.0, "predicting O for every token finds no entity: "
                    "entity F1 is 0")


@register("squad_f1", se=lambda p, n: 0.5 / math.sqrt(n))
def overlap_sentence(data) -> Baseline:
    """Extractive QA: the first k non-question words of the context sentence sharing most question words."""
    from distill.tasks.squad_baseline import answer_length, overlap_scores

    k = answer_length(data.train)

    def score(split: str) -> float:
        dataset = getattr(data, split)
        return overlap_scores(dataset, k)["f1"] / 100.0 if len(dataset) else math.nan

    return Baseline(f"overlap sentence, first {k} non-question words", data.metric, score("dev"), score("test"),
                    "SQuAD F1 of answering with the first k words (k: median train answer length) of the context "
                    "sentence sharing most words with the question, question words dropped")


def task_baseline(data) -> Baseline | None:
    """The trivial baseline of ``data``'s metric, or None when no baseline is registered for it."""
    fn = BASELINES.get(data.metric)
    return None if fn is None else fn(data)


def noise_margin(metric: str, reference: float, n: int) -> float:
    """2 standard errors of a no-better-than-baseline score on n examples (rule in the module docstring)."""
    if n <= 0:
        return math.inf
    return 2 * SE_RULES.get(metric, lambda p, k: 0.5 / math.sqrt(k))(reference, n)


def within_noise(score: float, baseline: Baseline, n: int) -> bool:
    """True when a test ``score`` on n examples is not clearly above the baseline's test reference."""
    reference = baseline.reference("test")
    return score < reference + noise_margin(baseline.metric, reference, n)


def score_line(data, scores: dict, baseline: Baseline | None) -> str:
    """``dev accuracy 0.8012 (majority class 'fresh' 0.5480), test accuracy 0.8200 (... 0.5480)``."""
    parts = []
    for split in ("dev", "test"):
        if split in scores:
            extra = f" (baseline: {baseline.describe(split)})" if baseline else ""
            parts.append(f"{split} {data.metric} {scores[split]['score']:.4f}{extra}")
    return ", ".join(parts)
