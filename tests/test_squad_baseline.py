"""The trivial QA baseline (word-overlap sentence) worked out by hand, and its place in the baseline registry."""
import pytest
from datasets import Dataset

from distill.tasks.baselines import task_baseline
from distill.data.task_data import TaskData
from distill.tasks.squad_baseline import answer_length, overlap_answer

CONTEXT = "The tower was built in 1889. It was designed by Gustave Eiffel for the fair."


def _split(rows):
    return Dataset.from_list([{"id": str(i), "title": "t", "context": CONTEXT, "question": q,
                               "answers": {"text": golds, "answer_start": [CONTEXT.index(g) for g in golds]}}
                              for i, (q, golds) in enumerate(rows)])


def test_overlap_answer_by_hand():
    # question words {who, designed, it, for, fair}: sentence 2 shares 4, sentence 1 none; dropping them from
    # "It was designed by Gustave Eiffel for the fair." leaves was, by, Gustave, Eiffel ("the" normalises to "")
    assert overlap_answer("Who designed it for the fair?", CONTEXT, 3) == "was by Gustave"
    assert overlap_answer("Who designed it for the fair?", CONTEXT, 9) == "was by Gustave Eiffel"
    # {when, was, tower, built}: sentence 1 shares 3 (tower, was, built), sentence 2 one (was)
    assert overlap_answer("When was the tower built?", CONTEXT, 3) == "in 1889."
    # no shared word at all: the first sentence (ties keep the first)
    assert overlap_answer("Why?", CONTEXT, 2) == "tower was"


def test_qa_baseline_is_registered_and_scored_with_the_official_metric():
    train = _split([("q", ["Gustave Eiffel for"]), ("q", ["The tower was built"]), ("q", ["1889"])])
    assert answer_length(train) == 3  # word counts 3, 4, 1: median 3
    test = _split([("Who designed it for the fair?", ["Gustave Eiffel"]),
                   ("When was the tower built?", ["1889", "in 1889"])])
    data = TaskData("toy_squad", train, test, test, ["start", "end"], "squad_f1")
    base = task_baseline(data)
    # q1 "was by Gustave" vs "Gustave Eiffel": 1 common token, P 1/3, R 1/2, F1 0.4
    # q2 "in 1889." vs "in 1889": exact match after normalisation, F1 1 (the best of the two gold answers)
    assert base.test == pytest.approx((0.4 + 1.0) / 2)
    assert base.dev == base.test and base.metric == "squad_f1"
    assert "first 3 non-question words" in base.rule
