"""A trivial extractive-QA baseline: what answering by word overlap alone scores with the SQuAD metric.

For each question: split the context into sentences, take the sentence that shares the most distinct
(normalised) words with the question (the first such sentence on ties), drop the words the question
already contains, and answer with the first ``k`` remaining words. ``k`` is the median gold answer length
in words on the train split, the baseline's only fitted number. It reads no model and no label of the
split it is scored on; a teacher that does not beat it has learned nothing worth distilling.
"""
from __future__ import annotations

import re

import numpy as np

from distill.tasks.squad_metric import normalize_answer, squad_scores

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _words(text: str) -> set[str]:
    return set(normalize_answer(text).split())


def overlap_answer(question: str, context: str, k: int) -> str:
    """The first ``k`` words, not in the question, of the context sentence sharing most question words."""
    asked = _words(question)
    sentences = [s for s in _SENTENCE_END.split(context) if s.strip()] or [context]
    best = max(sentences, key=lambda s: len(asked & _words(s)))  # max keeps the first of equals
    kept = [w for w in best.split() if normalize_answer(w) and normalize_answer(w) not in asked]
    return " ".join(kept[:k])


def answer_length(dataset) -> int:
    """Median number of words of the first gold answer of each question (at least 1)."""
    lengths = [len(a["text"][0].split()) for a in dataset["answers"] if a["text"]]
    return max(1, int(np.median(lengths))) if lengths else 1


def overlap_scores(dataset, k: int) -> dict[str, float]:
    """SQuAD v1.1 {exact_match, f1} in percent of the overlap baseline on a split with SQuAD columns."""
    predictions, gold = {}, {}
    for i, row in enumerate(dataset):
        predictions[str(i)] = overlap_answer(row["question"], row["context"], k)
        gold[str(i)] = list(row["answers"]["text"])
    return squad_scores(predictions, gold)
