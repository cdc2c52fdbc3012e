import pytest

from distill.tasks.squad_metric import exact_match, normalize_answer, squad_scores, token_f1


def test_normalisation_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # 'the' only as a whole word
    assert normalize_answer("U.S.") == "us"


def test_hand_worked_f1_and_em():
    # pred tokens [denver, broncos], gold [broncos]: precision 1/2, recall 1 -> F1 2/3
    assert token_f1("Denver Broncos", "the Broncos") == pytest.approx(2 / 3)
    assert exact_match("Denver Broncos", "the Broncos") == 0.0
    assert exact_match("the Broncos.", "Broncos") == 1.0
    # repeated tokens count as a multiset: pred [a_, a_, b] vs gold [a_, b] -> common 2, P 2/3, R 1 -> 0.8
    assert token_f1("paris paris london", "paris london") == pytest.approx(0.8)
    assert token_f1("", "paris") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalise to nothing: no common token


def test_best_gold_answer_counts_and_missing_predictions_score_zero():
    refs = {"q1": ["Denver Broncos", "Broncos"], "q2": ["1990"], "q3": ["Paris"]}
    preds = {"q1": "the Broncos", "q2": "in 1990"}  # q3 missing
    scores = squad_scores(preds, refs)
    # q1: EM 1 (vs 'Broncos'), F1 1; q2: EM 0, F1 = 2*(1/2*1)/(1/2+1) = 2/3; q3: 0, 0
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
