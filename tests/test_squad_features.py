import numpy as np
import pytest

from distill.tasks.squad_features import QAFeatureError, WindowStats, best_spans, window_features

CONTEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football "
           "League for the 2015 season. The American Football Conference champion Denver Broncos defeated the "
           "National Football Conference champion Carolina Panthers 24 to 10 to earn their third title. The game "
           "was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara.")
ANSWER = "Denver Broncos"


def _examples(question="Which team won Super Bowl 50?", answer=ANSWER):
    return {"id": ["q1"], "question": [question], "context": [CONTEXT],
            "answers": [{"text": [answer], "answer_start": [CONTEXT.index(answer)]}]}


def test_answer_positions_decode_to_the_answer_and_other_windows_point_at_cls(tokenizer):
    stats = WindowStats()
    feats = window_features(_examples(), tokenizer, max_len=40, doc_stride=10, stats=stats)
    assert stats.windows == len(feats["input_ids"]) > 3 and stats.multi_window == 1
    hits = [i for i, s in enumerate(feats["start_positions"]) if s > 0]
    assert hits, "some window must contain the answer"
    for i in hits:
        span = feats["input_ids"][i][feats["start_positions"][i]:feats["end_positions"][i] + 1]
        assert tokenizer.decode(span) == ANSWER.lower()  # uncased MiniLM vocabulary
    for i in set(range(stats.windows)) - set(hits):
        assert feats["start_positions"][i] == feats["end_positions"][i] == 0
    assert stats.answer_outside == stats.windows - len(hits)
    assert all(len(ids) <= 40 for ids in feats["input_ids"])


def test_windows_overlap_by_doc_stride_and_cover_the_whole_context(tokenizer):
    feats = window_features(_examples(), tokenizer, max_len=40, doc_stride=10)
    covered = set()
    previous = None
    for offs in feats["offset_mapping"]:
        ctx = [tuple(o) for o in offs if o[0] >= 0]
        covered.update(ctx)
        if previous is not None:
            assert len(set(previous) & set(ctx)) == 10  # doc_stride tokens shared with the previous window
        previous = ctx
    full = tokenizer(CONTEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert covered == {tuple(o) for o in full}
    assert set(feats["question_id"]) == {"q1"}


def test_post_processing_picks_the_best_valid_span_over_all_windows(tokenizer):
    feats = window_features(_examples(), tokenizer, max_len=40, doc_stride=10)
    start_logits, end_logits = [], []
    target = None
    for i, offs in enumerate(feats["offset_mapping"]):
        s = np.zeros(len(offs))
        e = np.zeros(len(offs))
        s[0] = e[0] = 50.0  # [CLS] is never an answer
        chars = [o[0] for o in offs]
        if CONTEXT.index(ANSWER) in chars and target is None:
            target = i
            a = chars.index(CONTEXT.index(ANSWER))
            s[a], e[a + 1] = 5.0, 5.0  # "denver" .. "broncos"
            e[a - 3] = 9.0  # an end before the start: invalid
            s[a + 3] = 9.0  # valid start, but its only good end is before it
        start_logits.append(s)
        end_logits.append(e)
    assert target is not None
    preds = best_spans({"q1": CONTEXT}, feats["question_id"], feats["offset_mapping"], start_logits, end_logits)
    assert preds == {"q1": ANSWER}
    # an answer longer than max_answer_len is refused: nothing valid remains but 1-token spans
    short = best_spans({"q1": CONTEXT}, feats["question_id"], feats["offset_mapping"], start_logits, end_logits,
                       max_answer_len=1)
    assert short["q1"] != ANSWER


def test_long_questions_are_cut_and_an_impossible_budget_is_a_clear_error(tokenizer):
    stats = WindowStats()
    long_q = " ".join(["why"] * 100) + "?"
    feats = window_features(_examples(question=long_q), tokenizer, max_len=96, doc_stride=16, max_question_len=20,
                           stats=stats)
    assert stats.long_questions == 1 and all(len(x) <= 96 for x in feats["input_ids"])
    with pytest.raises(QAFeatureError, match="task.doc_stride"):
        window_features(_examples(), tokenizer, max_len=64, doc_stride=60)


def test_an_answer_longer_than_any_window_is_counted_and_warned(tokenizer):
    stats = WindowStats()
    window_features(_examples(), tokenizer, max_len=40, doc_stride=10, stats=stats)
    assert stats.answer_in_no_window == 0 and "WARNING" not in stats.line("train", 40, 10)
    long_answer = CONTEXT[CONTEXT.index("The American"):]  # two sentences: more tokens than a window's context part
    stats = WindowStats()
    feats = window_features(_examples(answer=long_answer), tokenizer, max_len=40, doc_stride=10, stats=stats)
    assert set(feats["start_positions"]) == {0}  # every window points at [CLS]
    assert stats.answer_in_no_window == 1
    assert "WARNING 1 answers fit in no window" in stats.line("train", 40, 10)
