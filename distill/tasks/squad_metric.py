"""SQuAD v1.1 exact match and F1, with the official answer normalisation.

A prediction is compared with every gold answer of its question and keeps the best score; both
figures are percentages averaged over questions, as the SQuAD leaderboard reports them.
"""
from __future__ import annotations

import collections
import re
import string

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of precision and recall over the bag of normalised tokens."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """{exact_match, f1} in percent over the questions of ``references``; a question with no
    prediction scores 0 (as the official script counts it)."""
    if not references:
        raise ValueError("no questions to score")
    em = f1 = 0.0
    for qid, golds in references.items():
        if not golds:
            raise ValueError(f"question {qid!r} has no gold answer (SQuAD v1.1 questions always have one)")
        pred = predictions.get(qid, "")
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(token_f1(pred, g) for g in golds)
    n = len(references)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
