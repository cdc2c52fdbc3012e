"""Question answering task kind: losses over sequence positions, post-processing and EM/F1 through the kind,
data sources and the errors that stop a mismatched experiment before training."""
import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from distill.config import TaskConfig, load_config
from distill.data.task_data import DataError, load_task
from distill.engine.losses import hard_ce, soft_ce
from distill.tasks import TaskKindError
from distill.tasks.question_answering import WINDOW_COLUMNS, QuestionAnswering
from tests.qa_data import squad_folder, squad_json

CONTEXT = ("Super Bowl 50 was an American football game to determine the champion of the National Football "
           "League for the 2015 season. The American Football Conference champion Denver Broncos defeated the "
           "National Football Conference champion Carolina Panthers 24 to 10 to earn their third title. The game "
           "was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara.")


def _record(qid, question, answer):
    return {"id": qid, "title": "sb50", "context": CONTEXT, "question": question,
            "answers": {"text": [answer], "answer_start": [CONTEXT.index(answer)]}}


def _reference_ce(student, teacher, mask, temperature):
    """Element by element: per window and per end (start, end), CE over that window's real positions."""
    total, rows = 0.0, 0
    for i in range(student.shape[0]):
        n = int(mask[i].sum())
        for j in range(2):
            t = [float(x) / temperature for x in teacher[i, :n, j]]
            s = [float(x) / temperature for x in student[i, :n, j]]
            t_norm = math.log(sum(math.exp(x) for x in t))
            s_norm = math.log(sum(math.exp(x) for x in s))
            total += -sum(math.exp(a - t_norm) * (b - s_norm) for a, b in zip(t, s))
            rows += 1
    return total / rows


def test_qa_soft_and_hard_ce_match_an_element_by_element_reference():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 7, 2), torch.randn(3, 7, 2)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    student[mask == 0] = 40.0  # padding values must not matter
    teacher[mask == 0] = -25.0
    labels = torch.tensor([[1, 6, 0], [0, 4, 1], [2, 2, 2]])
    batch = {"attention_mask": mask, "labels": labels}
    kind = QuestionAnswering()
    s, t, m = kind.loss_inputs(student, teacher, batch, "logits")
    assert s.shape == (6, 7)  # (2 * windows, seq)
    for temperature in (1.0, 2.5):
        got = soft_ce(s, t, m, temperature=temperature)
        assert got.item() == pytest.approx(_reference_ce(student, teacher, mask, temperature), rel=1e-5)
    s, gold, m = kind.loss_inputs(student, labels, batch, "labels")
    expected = 0.0
    for i in range(3):
        n = int(mask[i].sum())
        for j in range(2):
            row = [float(x) for x in student[i, :n, j]]
            expected -= row[int(labels[i, j])] - math.log(sum(math.exp(x) for x in row))
    assert hard_ce(s, gold, m).item() == pytest.approx(expected / 6, rel=1e-5)


def _gold(kind, windows, tokenizer, order=None):
    """Windows through the kind's collator as make_loader formats them (torch), then ``kind.gold``."""
    columns = ["input_ids", "token_type_ids", "attention_mask", "labels", *WINDOW_COLUMNS]
    formatted = windows.with_format("torch", columns=columns)
    batch = kind.collator(tokenizer)([formatted[i] for i in (order or range(len(windows)))])
    return kind.gold(batch)


def test_post_processing_picks_the_best_span_over_all_windows_of_a_question(tokenizer):
    data = Dataset.from_list([_record("q1", "Which team won Super Bowl 50?", "Denver Broncos"),
                              _record("q2", "Who won the AFC?", "Denver Broncos")])
    kind = QuestionAnswering(doc_stride=10, max_question_len=16)
    windows = kind.tokenize(data, tokenizer, 40, "dev")
    labels = [np.asarray(x) for x in windows["labels"]]
    assert all(x.shape == (2,) for x in labels)  # what the model trains on: [start, end], nothing else
    gold = _gold(kind, windows, tokenizer)
    assert [w.question_id for w in gold] == list(windows["question_id"])
    by_question = {0: [], 1: []}
    for w, window in enumerate(gold):
        by_question[["q1", "q2"].index(window.question_id)].append(w)
        assert window.offsets.shape == (len(windows["input_ids"][w]), 2)  # real tokens only, padding cut
    assert len(by_question[0]) > 2  # the context needs several windows
    rows = [np.zeros((len(ids), 2), np.float32) for ids in windows["input_ids"]]
    hit = {q: next(w for w in ws if labels[w][0] > 0) for q, ws in by_question.items()}
    for q, w in hit.items():
        ids = windows["input_ids"][w]
        start, end = int(labels[w][0]), int(labels[w][1])
        assert tokenizer.decode(ids[start:end + 1]) == "denver broncos"
        rows[w][1, :] = 50.0  # a question token: the best logits, but not part of the context
        if q == 0:
            rows[w][start, 0], rows[w][end, 1] = 5.0, 5.0  # the gold span
            other = next(v for v in by_question[0] if v != w)  # a weaker span in another window
            ctx = [i for i, o in enumerate(gold[other].offsets) if o[0] >= 0]
            rows[other][ctx[0], 0], rows[other][ctx[1], 1] = 4.0, 4.0
        else:
            rows[w][end, 0], rows[w][end, 1] = 5.0, 5.0  # "Broncos" only: EM 0, F1 2/3
    answers = kind.answers(rows, gold, data)
    assert answers == {"q1": "Denver Broncos", "q2": "Broncos"}
    scores = kind.metrics(rows, gold, "squad_f1", None, examples=data)
    assert scores["exact_match"] == pytest.approx(0.5)  # fractions, as every metric here
    assert scores["f1"] == pytest.approx((1.0 + 2.0 / 3) / 2)
    assert scores["score"] == scores["f1"]
    # only q2's windows: the metric covers the questions present
    only_q2 = by_question[1]
    assert kind.metrics([rows[w] for w in only_q2], [gold[w] for w in only_q2], "", None,
                        examples=data)["exact_match"] == 0.0
    # no state: windows batched in another order, by another instance with the same settings (another process
    # rebuilds it from the config), give the same answers and scores
    order = list(reversed(range(len(windows))))
    again = QuestionAnswering(doc_stride=10, max_question_len=16)
    shuffled = _gold(again, again.tokenize(data, tokenizer, 40, "dev"), tokenizer, order)
    assert again.metrics([rows[w] for w in order], shuffled, "squad_f1", None, examples=data) == scores
    with pytest.raises(TaskKindError, match="untokenized split"):
        kind.metrics(rows, gold, "squad_f1", None)
    with pytest.raises(TaskKindError, match="question_id and offset_mapping"):
        kind.metrics(rows, labels, "squad_f1", None, examples=data)  # [start, end] labels cannot be scored
    with pytest.raises(TaskKindError, match="'q1' of a window is not in the examples"):
        kind.metrics(rows, gold, "squad_f1", None, examples=data.select([1]))


def test_the_train_split_carries_labels_only_and_ids_must_be_unique(tokenizer):
    data = Dataset.from_list([_record("q1", "Which team won Super Bowl 50?", "Denver Broncos"),
                              _record("q2", "Who won the AFC?", "Denver Broncos")])
    kind = QuestionAnswering(doc_stride=10, max_question_len=16)
    train, dev = kind.tokenize(data, tokenizer, 40, "train"), kind.tokenize(data, tokenizer, 40, "dev")
    assert not set(WINDOW_COLUMNS) & set(train.column_names)  # a training batch stays all tensors
    assert train["labels"] == dev["labels"] and train["input_ids"] == dev["input_ids"]
    batch = kind.collator(tokenizer)([train.with_format("torch", columns=["input_ids", "attention_mask",
                                                                          "labels"])[i] for i in range(3)])
    assert all(isinstance(v, torch.Tensor) for v in batch.values())
    assert np.array_equal(kind.gold(batch), batch["labels"].numpy())
    twice = Dataset.from_list([_record("q1", "Which team won Super Bowl 50?", "Denver Broncos")] * 2)
    with pytest.raises(TaskKindError, match="question id 'q1' appears twice in the dev split"):
        kind.tokenize(twice, tokenizer, 40, "dev")


def test_tokenizing_a_split_does_not_depend_on_the_splits_tokenized_before(tokenizer):
    """``datasets`` fingerprints the map function: a function that closed over recorded windows made every later
    split hash all of them (10 dev questions: 0.78 s after 20k windows, 2.97 s after 80k) and changed the dev
    split's fingerprint, so caches keyed on it missed."""
    dev = Dataset.from_list([_record("q1", "Which team won Super Bowl 50?", "Denver Broncos")])
    train = Dataset.from_list([_record(f"t{i}", f"Who won game {i}?", "Denver Broncos") for i in range(60)])
    fresh = QuestionAnswering(doc_stride=10, max_question_len=16).tokenize(dev, tokenizer, 40, "dev")
    kind = QuestionAnswering(doc_stride=10, max_question_len=16)
    kind.tokenize(train, tokenizer, 40, "train")
    kind.tokenize(train, tokenizer, 40, "test")  # a scored split: windows with offsets
    later = kind.tokenize(dev, tokenizer, 40, "dev")
    assert later._fingerprint == fresh._fingerprint
    assert later["offset_mapping"] == fresh["offset_mapping"]


def test_export_rows_exclude_padding(tokenizer):
    kind = QuestionAnswering()
    logits = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    flat = kind.flat_outputs(logits, mask)
    assert flat.shape == (4, 512)
    np.testing.assert_array_equal(flat[2, :2], logits[1, :2, 0])  # window 1 start row
    np.testing.assert_array_equal(flat[3, :2], logits[1, :2, 1])  # window 1 end row
    assert (flat[3, 2:] == flat[0, 4:].min()).all()  # padding: one constant, never the argmax


# ---- data -------------------------------------------------------------------------------------------


def test_squad_json_file_and_folder_are_detected_as_question_answering(tmp_path):
    path = squad_json(tmp_path / "mine.json", [f"a{i}" for i in range(10)])
    data = load_task(TaskConfig(name=str(path)))
    assert data.kind.name == "question_answering" and data.metric == "squad_f1" and not data.is_regression
    titles = [set(split["title"]) for split in (data.train, data.dev, data.test)]
    assert not (titles[0] & titles[1]) and not (titles[0] & titles[2]) and not (titles[1] & titles[2])
    folder = load_task(TaskConfig(name=str(squad_folder(tmp_path / "f")), kind="question_answering"))
    assert (len(folder.train), len(folder.dev), len(folder.test)) == (32, 8, 8)
    assert folder.kind == data.kind  # settings only: a kind records nothing, equal settings score alike


def test_hub_style_dataset_loads_from_a_local_copy_and_is_checked(tmp_path):
    def rows(prefix, n, bad=False):
        out = []
        for i in range(n):
            context = f"the capital of land{i} is city{i}."
            start = context.index(f"city{i}") + (3 if bad and i == 0 else 0)
            out.append({"id": f"{prefix}{i}", "title": f"{prefix}-t{i % 20}", "context": context,
                        "question": f"what is the capital of land{i}?",
                        "answers": {"text": [f"city{i}"], "answer_start": [start]}})
        return out

    folder = tmp_path / "hub_squad"
    folder.mkdir()
    for split, data in (("train", rows("tr", 60, bad=True)), ("validation", rows("va", 10))):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in data))
    task = load_task(TaskConfig(name=f"hub:{folder}"))
    assert task.kind.name == "question_answering"
    assert len(task.train) + len(task.dev) == 59  # the answer whose answer_start misses its text is skipped
    assert len(task.test) == 10
    v2 = tmp_path / "hub_v2"
    v2.mkdir()
    unanswerable = rows("tr", 5)
    unanswerable[2]["answers"] = {"text": [], "answer_start": []}
    (v2 / "train.jsonl").write_text("\n".join(json.dumps(r) for r in unanswerable))
    (v2 / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows("va", 3)))
    with pytest.raises(DataError, match="SQuAD 2.0"):
        load_task(TaskConfig(name=f"hub:{v2}"))
    with pytest.raises(DataError, match="could not load it from the hub"):
        load_task(TaskConfig(name="hub:no-such-user/no-such-squad"))


def test_a_kind_that_contradicts_the_data_is_refused(tmp_path, task_folder):
    with pytest.raises(DataError, match="task.kind=question_answering but task.name=rotten_tomatoes is a classif"):
        load_task(TaskConfig(name="rotten_tomatoes", kind="question_answering"))
    with pytest.raises(DataError, match="is not SQuAD-format JSON"):
        load_task(TaskConfig(name=str(task_folder), kind="question_answering"))
    squad = squad_json(tmp_path / "q.json", ["a", "b"])
    for kind in ("sequence_classification", "token_classification"):
        with pytest.raises(DataError, match="is question answering .SQuAD. data but task.kind="):
            load_task(TaskConfig(name=str(squad), kind=kind))
    with pytest.raises(DataError, match="is question answering"):
        load_task(TaskConfig(name="squad", kind="sequence_classification"))  # refused before any fetch
    # a classification experiment (task.type set) pointed at SQuAD JSON; with task.type/kind auto the switch is said
    with pytest.raises(DataError, match="'task.type': task.name=.* is question answering .SQuAD. data, which has no "
                                        "classification labels"):
        load_task(TaskConfig(name=str(squad), type="classification"))
    many = squad_json(tmp_path / "many.json", [f"a{i}" for i in range(10)])
    assert "question answering, detected from the data (task.kind=auto)" in load_task(TaskConfig(name=str(many))).note


def test_settings_question_answering_cannot_honour_are_refused():
    kind = QuestionAnswering(doc_stride=100, max_question_len=64)
    cfg = load_config(None, ["task.max_len=160"])
    with pytest.raises(TaskKindError, match="task.max_len=160 leaves 93 context tokens .* task.doc_stride=100"):
        kind.check_config(cfg)
    QuestionAnswering(doc_stride=64, max_question_len=64).check_config(cfg)
    with pytest.raises(TaskKindError, match="logits_mse': a regression loss on a question answering task"):
        kind.check_losses({"soft_ce": 1.0, "logits_mse": 1.0}, "prune.recovery_losses")
    kind.check_config(load_config(None, ["task.max_len=384", "task_distill.augment.enabled=true"]))  # question words only


def test_export_agreement_counts_near_ties_as_agreeing_and_real_flips_as_not():
    kind = QuestionAnswering()
    reference = np.array([[0.0, 5.0, 4.5, 0.0], [0.0, 5.0, 4.5, 0.0], [3.0, 0.0, 0.0, 1.0]])
    candidate = np.array([[0.0, 4.6, 4.7, 0.0], [6.0, 4.0, 4.5, 0.0], [3.0, 0.0, 0.0, 1.0]])
    # row 0: a near-tie flips (4.5 is within 1 logit of 5.0); row 1: position 0 is 5 logits below the best
    assert kind.agreement(reference, candidate) == pytest.approx(2 / 3)
    assert QuestionAnswering.__mro__[1].agreement(kind, reference, candidate) == pytest.approx(1 / 3)  # exact argmax
