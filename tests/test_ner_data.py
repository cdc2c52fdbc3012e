"""NER data: the embedded CoNLL-2003, local CoNLL/JSONL/Parquet/save_to_disk sources, and the one-line
errors for bad input."""
import json

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from distill.config import TaskConfig
from distill.data.task_data import DataError, load_task
from distill.tasks import TOKEN_CLASSIFICATION
from distill.data.ner import to_iob2

TRAIN = [(["John", "Smith", "visited", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"]),
         (["Reuters", "reported", "it"], ["B-ORG", "O", "O"]),
         (["Mary", "left", "Berlin"], ["B-PER", "O", "B-LOC"])]


def conll(path, sentences, columns="{w} NNP B-NP {t}"):
    body = "\n\n".join("\n".join(columns.format(w=w, t=t) for w, t in zip(*s)) for s in sentences)
    path.write_text("-DOCSTART- -X- -X- O\n\n" + body + "\n")
    return path


def folder(tmp_path, train=TRAIN, dev=TRAIN[:2], test=TRAIN[1:], **kw):
    for name, rows in (("train", train), ("valid", dev), ("test", test)):
        conll(tmp_path / f"{name}.txt", rows, **kw)
    return tmp_path


def test_embedded_conll2003_has_the_published_sentence_counts():
    data = load_task(TaskConfig(name="conll2003"))
    assert (len(data.train), len(data.dev), len(data.test)) == (14041, 3250, 3453)
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert data.kind is TOKEN_CLASSIFICATION and data.metric == "entity_f1"
    first = data.train[0]
    assert first["tokens"] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert [data.label_names[t] for t in first["tags"]] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]


def test_local_conll_folder_with_a_chosen_tag_column(tmp_path):
    path = folder(tmp_path, columns="{w} {t} NNP")  # tag in column 1, not the last
    data = load_task(TaskConfig(name=str(path), tag_column=1))
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert [data.label_names[t] for t in data.train[0]["tags"]] == ["B-PER", "I-PER", "O", "B-LOC"]
    with pytest.raises(DataError, match="tag 'NNP' in sentence 0 is not IOB"):
        load_task(TaskConfig(name=str(path)))  # default -1 reads the POS column


def test_jsonl_parquet_and_save_to_disk_sources(tmp_path):
    rows = [{"tokens": t, "tags": g} for t, g in TRAIN * 4]
    jsonl = tmp_path / "ner.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_task(TaskConfig(name=str(jsonl)))  # one file: split 80/10/10 by sentence
    assert (len(data.train), len(data.dev), len(data.test)) == (9, 1, 2)
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]  # hub order, not ours
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    ds = Dataset.from_dict({"tokens": [t for t, _ in TRAIN], "ner_tags": [[names.index(x) for x in g] for _, g in TRAIN]},
                           features=features)
    parquet = tmp_path / "pq"
    parquet.mkdir()
    for split in ("train", "validation", "test"):
        ds.to_parquet(str(parquet / f"{split}.parquet"))
    data = load_task(TaskConfig(name=str(parquet)))
    assert [data.label_names[t] for t in data.test[0]["tags"]] == ["B-PER", "I-PER", "O", "B-LOC"]
    disk = tmp_path / "disk"
    DatasetDict({"train": ds, "validation": ds, "test": ds}).save_to_disk(str(disk))
    data = load_task(TaskConfig(name=str(disk)))
    assert data.kind is TOKEN_CLASSIFICATION and len(data.test) == 3
    assert [data.label_names[t] for t in data.train[1]["tags"]] == ["B-ORG", "O", "O"]


def test_iob1_is_converted_to_iob2():
    tags, converted = to_iob2([["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]], "x")
    assert tags == [["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]] and converted == 2


@pytest.mark.parametrize("train, match", [
    ([(["John"], ["PER"])], r"tag 'PER' in sentence 0 is not IOB/IOB2; tags must be O"),
    ([(["John"], ["S-PER"])], r"BIOES/BILOU style"),
    ([(["John", "x", "Paris"], ["B-PER", "O", "I-LOC"])], r"mixed tagging schemes: 1 entities start with I-"),
])
def test_bad_tags_are_refused_with_one_line(tmp_path, train, match):
    with pytest.raises(DataError, match=match) as err:
        load_task(TaskConfig(name=str(folder(tmp_path, train=train + TRAIN))))
    assert "\n" not in str(err.value)


def test_bad_files_are_refused_with_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.txt").write_text("John B-PER\nSmith\n")
    with pytest.raises(DataError, match=r"train.txt:2: a line with one column \('Smith'\) has no tag column"):
        load_task(TaskConfig(name=str(tmp_path / "a")))
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match="sentence 0 has 2 tokens but 1 tags"):
        load_task(TaskConfig(name=str(bad)))
    (tmp_path / "c").mkdir()
    empty = folder(tmp_path / "c", test=[])
    (empty / "test.txt").write_text("-DOCSTART- -X- -X- O\n\n")
    with pytest.raises(DataError, match="the test split has no sentences"):
        load_task(TaskConfig(name=str(empty)))
    (tmp_path / "d").mkdir()
    unseen = folder(tmp_path / "d", test=[(["Goldman"], ["B-BANK"])])
    with pytest.raises(DataError, match=r"test has entity type 'BANK' \('B-BANK' x1\) that train never has"):
        load_task(TaskConfig(name=str(unseen)))


def test_a_task_kind_that_contradicts_the_data_is_refused(tmp_path, task_folder):
    (tmp_path / "ner").mkdir()
    ner = folder(tmp_path / "ner")
    with pytest.raises(DataError, match="set task.kind=token_classification"):
        load_task(TaskConfig(name=str(ner), kind="sequence_classification"))
    with pytest.raises(DataError, match="conll2003 is token classification"):
        load_task(TaskConfig(name="conll2003", kind="sequence_classification"))
    with pytest.raises(DataError, match="holds sentence classification data"):
        load_task(TaskConfig(name=str(task_folder), kind="token_classification"))
    with pytest.raises(DataError, match="is a sentence classification task"):
        load_task(TaskConfig(name="rotten_tomatoes", kind="token_classification"))
    assert load_task(TaskConfig(name=str(task_folder))).kind.name == "sequence_classification"  # auto


def test_a_classification_folder_with_other_text_files_stays_classification(task_folder):
    (task_folder / "corpus.txt").write_text("some unlabeled text\n")  # a .txt beside train.csv is not CoNLL data
    assert load_task(TaskConfig(name=str(task_folder))).kind.name == "sequence_classification"


def test_an_unknown_hub_name_fails_with_one_line():
    with pytest.raises(DataError, match="could not be loaded from the hub") as err:
        load_task(TaskConfig(name="no-such-user/no-such-ner-set", kind="token_classification"))
    assert "\n" not in str(err.value)


def test_example_caps_apply_to_token_tasks(tmp_path):
    data = load_task(TaskConfig(name=str(folder(tmp_path)), max_train_examples=2, max_eval_examples=1))
    assert (len(data.train), len(data.dev), len(data.test)) == (2, 1, 1)
    assert "entity F1" in data.note


def test_a_json_array_of_tokens_and_tags_is_token_data(tmp_path):
    # .json (an array of records, or JSON lines) is read like .jsonl, never refused as sentence data
    rows = [{"tokens": t, "tags": g} for t, g in TRAIN * 4]
    array = tmp_path / "ner.json"
    array.write_text(json.dumps(rows))
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    for path in (array, lines):
        data = load_task(TaskConfig(name=str(path), kind="token_classification"))
        assert data.kind is TOKEN_CLASSIFICATION and len(data.train) == 9
    pretty = tmp_path / "squad.json"  # a pretty-printed JSON object is not token data, and not a crash
    pretty.write_text(json.dumps({"version": "1.1", "data": []}, indent=2))
    from distill.data.ner import _looks_like_tokens

    assert not _looks_like_tokens(pretty)
