import collections
import signal

import pandas as pd
import pytest
from datasets import Dataset

from distill.engine.batching import LengthGroupedBatchSampler, make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import TaskConfig
from distill.data.task_data import DataError, load_glue, load_local, load_rotten_tomatoes, load_task
from distill.tasks.metrics import compute_metrics


@pytest.fixture(scope="module")
def rotten():
    return load_rotten_tomatoes()


def test_rotten_tomatoes_split_is_deterministic_stratified_and_disjoint(rotten):
    again = load_rotten_tomatoes()
    for split in ("train", "dev", "test"):
        assert getattr(rotten, split)["text"] == getattr(again, split)["text"]
    sizes = [len(rotten.train), len(rotten.dev), len(rotten.test)]
    total = sum(sizes)
    assert 12000 < total < 13000  # 12808 fresh+rotten rows minus duplicates
    assert abs(sizes[0] / total - 0.8) < 0.01 and abs(sizes[1] / total - 0.1) < 0.01
    texts = [set(getattr(rotten, s)["text"]) for s in ("train", "dev", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    ratios = [sum(getattr(rotten, s)["label"]) / len(getattr(rotten, s)) for s in ("train", "dev", "test")]
    assert max(ratios) - min(ratios) < 0.01  # stratified: same share of fresh everywhere
    assert rotten.label_names == ["rotten", "fresh"]


def test_rotten_tomatoes_labels_follow_the_csv(rotten):
    from distill.base import assets

    frame = pd.read_csv(assets.rotten_tomatoes_csv())
    category = dict(zip(frame["text"].str.strip(), frame["category"]))
    for row in rotten.test.select(range(50)):
        assert {"fresh": 1, "rotten": 0}[category[row["text"]]] == row["label"]
    assert "plot" not in {category[t] for t in rotten.train["text"][:500]}


def test_local_folder_with_string_labels(task_folder):
    data = load_local(task_folder)
    assert data.label_names == ["neg", "pos"]  # sorted names -> ids
    assert len(data.train) == 40 and len(data.dev) == 10 and len(data.test) == 10
    assert set(data.train["label"]) == {0, 1}
    row = data.train[0]
    assert row["label"] == (1 if "wonderful" in row["text"] else 0)


def test_local_single_file_with_pairs_and_int_labels(tmp_path):
    rows = [{"text": f"q {i}", "text_pair": f"a {i}", "label": i % 3} for i in range(90)]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.tsv", sep="\t", index=False)
    data = load_local(tmp_path / "pairs.tsv")
    assert data.has_pair and data.label_names == ["0", "1", "2"]
    assert len(data.train) + len(data.dev) + len(data.test) == 90


def test_local_file_missing_column_is_a_clear_error(tmp_path):
    pd.DataFrame({"sentence": ["x"], "label": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="missing column"):
        load_local(tmp_path / "bad.csv")


def test_glue_code_path_on_a_local_folder(tmp_path):
    """Same columns as the hub's GLUE parquet files: pairs (MRPC) and regression (STS-B)."""
    mrpc = pd.DataFrame({"sentence1": [f"s{i}" for i in range(40)], "sentence2": [f"t{i}" for i in range(40)],
                         "label": [i % 2 for i in range(40)], "idx": range(40)})
    mrpc.to_parquet(tmp_path / "train.parquet")
    mrpc.iloc[:10].to_parquet(tmp_path / "validation.parquet")
    data = load_glue("mrpc", tmp_path)
    assert data.has_pair and data.metric == "f1" and data.label_names == ["not_equivalent", "equivalent"]
    assert len(data.test) == 10
    stsb = mrpc.assign(label=[i / 8 for i in range(40)])
    stsb.to_parquet(tmp_path / "train.parquet")
    stsb.iloc[:10].to_parquet(tmp_path / "validation.parquet")
    data = load_glue("stsb", tmp_path)
    assert data.is_regression and data.metric == "pearson"
    cfg = TaskConfig(name="glue/stsb", data_dir=str(tmp_path))
    assert load_task(cfg).num_labels == 1


def test_blank_label_in_a_local_glue_folder_is_a_clear_error(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\na fine film,1\na dull film,\nanother one,0\n")
    (tmp_path / "validation.csv").write_text("sentence,label\nok,1\n")
    with pytest.raises(DataError, match="1 rows have a blank label .first: data row 2"):
        load_glue("sst2", tmp_path)


def test_unknown_task_name_is_a_clear_error():
    with pytest.raises(DataError, match="neither"):
        load_task(TaskConfig(name="no_such_task"))


def test_metrics_against_known_values():
    import numpy as np

    logits = np.array([[2.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 1])
    assert compute_metrics(logits, labels, "accuracy")["score"] == 0.5
    assert compute_metrics(logits, labels, "f1")["f1"] == pytest.approx(0.5)  # tp=1 fp=1 fn=1
    assert compute_metrics(logits, labels, "mcc")["mcc"] == pytest.approx(0.0)
    reg = compute_metrics(np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 6.5]), "pearson")
    assert reg["spearman"] == pytest.approx(1.0)


def test_length_grouped_batches_cover_everything_and_are_tight():
    lengths = [(i * 37) % 50 + 3 for i in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, shuffle=True, seed=1)
    batches = sampler.batches()
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert batches == LengthGroupedBatchSampler(lengths, 16, True, seed=1).batches()  # deterministic
    sampler.set_epoch(1)
    assert sampler.batches() != batches  # a new order each epoch
    padded = sum(16 * max(lengths[i] for i in b) for b in batches)
    naive = 1000 * max(lengths)
    assert padded < 0.6 * naive  # grouping avoids padding short examples to the longest


def test_dynamic_padding_pads_each_batch_to_its_own_longest(rotten, tokenizer):
    small = rotten.train.select(range(64))
    tokenized = tokenize(small, tokenizer, max_len=64)
    loader = make_loader(tokenized, tokenizer, batch_size=8, shuffle=False)
    widths = [batch["input_ids"].shape[1] for batch in loader]
    assert max(widths) <= 64 and len(set(widths)) > 1
    for batch in loader:
        assert batch["attention_mask"][:, -1].any()  # no all-padding column
    counts = collections.Counter(int(v) for b in loader for v in b["labels"])
    assert sum(counts.values()) == 64


# ------------------------------------------------------------------------------------------------
# labels, splits and caps that used to be silently wrong


def _write(folder, name, rows):
    pd.DataFrame(rows).to_csv(folder / name, index=False)


def test_blank_label_cell_is_a_missing_label_not_a_class(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    rows[7]["label"] = ""
    rows[9]["label"] = "  "
    _write(tmp_path, "train.csv", rows)
    with pytest.raises(DataError, match=r"train\.csv: 2 rows have a blank label \(first: data row 8\).*fill in"):
        load_local(tmp_path)


def test_blank_label_in_a_jsonl_file_is_a_missing_label(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)] + [{"text": "x", "label": None}]
    pd.DataFrame(rows).to_json(tmp_path / "all.jsonl", orient="records", lines=True)
    with pytest.raises(DataError, match="1 rows have a blank label"):
        load_local(tmp_path / "all.jsonl")


def test_integer_labels_are_the_values_present_named_as_they_are(tmp_path):
    rows = [{"text": f"review {i}", "label": i % 5 + 1} for i in range(100)]  # star ratings 1..5
    _write(tmp_path, "stars.csv", rows)
    data = load_local(tmp_path / "stars.csv")
    assert data.label_names == ["1", "2", "3", "4", "5"] and data.num_labels == 5
    for split in (data.train, data.dev, data.test):
        for row in split:
            assert data.label_names[row["label"]] == str(int(row["text"].split()[1]) % 5 + 1)


def test_text_labels_that_are_numbers_sort_by_value(tmp_path):
    rows = [{"text": f"t{i}", "label": str([2, 10, 1][i % 3])} for i in range(30)]
    pd.DataFrame(rows).to_json(tmp_path / "x.jsonl", orient="records", lines=True)
    assert load_local(tmp_path / "x.jsonl").label_names == ["1", "2", "10"]


def test_header_only_train_file_is_a_clear_error(task_folder):
    (task_folder / "train.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"train\.csv: no data rows"):
        load_local(task_folder)


def test_empty_training_loader_is_refused_by_the_trainer(tmp_path, tiny_teacher_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from distill.config import TrainConfig
    from distill.engine.objectives import FineTuneObjective
    from distill.engine.trainer import train

    from torch.utils.data import DataLoader

    loader = DataLoader([], batch_size=4)  # before the guard: steps = max(1, 0) and the epochs never end
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)

    def endless(*_):
        raise TimeoutError("train() on an empty loader did not return")

    previous = signal.signal(signal.SIGALRM, endless)
    signal.alarm(60)
    try:
        with pytest.raises(ValueError, match="no training batches"):
            train(FineTuneObjective(model), loader, TrainConfig(), tmp_path, save_model=lambda m, f: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_folder_with_train_and_dev_keeps_dev_as_dev_and_carves_test_from_train(task_folder):
    (task_folder / "test.jsonl").unlink()
    data = load_local(task_folder)
    dev_file = pd.read_csv(task_folder / "dev.csv")
    assert data.dev["text"] == dev_file["text"].tolist()
    train_file = set(pd.read_csv(task_folder / "train.csv")["text"])
    assert set(data.test["text"]) <= train_file and len(data.test) == 4  # 10% of 40
    assert not set(data.test["text"]) & set(data.train["text"])
    assert len(data.train) == 36 and "test split: 10% of train.csv" in data.note


def test_folder_with_train_and_test_keeps_test_and_carves_dev_from_train(task_folder):
    (task_folder / "dev.csv").unlink()
    data = load_local(task_folder)
    assert data.test["text"] == pd.read_json(task_folder / "test.jsonl", lines=True)["text"].tolist()
    assert set(data.dev["text"]) <= set(pd.read_csv(task_folder / "train.csv")["text"])


def _sorted_by_label(tmp_path):
    """Rows sorted by label (first all 'a', then 'b'), as exported from many tools."""
    rows = [{"text": f"a{i}", "label": "a"} for i in range(300)] + [{"text": f"b{i}", "label": "b"} for i in range(100)]
    _write(tmp_path, "train.csv", rows)
    _write(tmp_path, "dev.csv", rows[::10])
    _write(tmp_path, "test.csv", rows[5::10])
    return tmp_path


def test_max_train_examples_is_a_seeded_stratified_sample(tmp_path):
    folder = _sorted_by_label(tmp_path)
    cfg = TaskConfig(name=str(folder), max_train_examples=40)
    data = load_task(cfg)
    labels = data.train["label"]
    assert len(labels) == 40 and labels.count(1) == 10  # 25% 'b' as in the file (the first 40 rows hold none)
    assert load_task(cfg).train["text"] == data.train["text"]  # deterministic
    assert data.train["text"] != [f"a{i}" for i in range(40)]


def test_sample_rows_keeps_each_class_share_with_largest_remainders():
    from distill.data.task_data import sample_rows

    data = Dataset.from_dict({"label": [0] * 50 + [1] * 30 + [2] * 20, "text": [str(i) for i in range(100)]})
    picked = sample_rows(data, 11, stratify=True)["label"]
    assert [picked.count(c) for c in (0, 1, 2)] == [6, 3, 2]  # exact 5.5 / 3.3 / 2.2
    plain = sample_rows(data, 11, stratify=False)["text"]
    assert len(set(plain)) == 11 and plain == sample_rows(data, 11, stratify=False)["text"]


def test_task_type_auto_states_its_decision_and_can_be_overridden(tmp_path, capsys):
    rows = [{"text": f"t{i}", "label": i % 5} for i in range(100)]
    _write(tmp_path, "scores.csv", rows)
    auto = load_task(TaskConfig(name=str(tmp_path / "scores.csv")))
    assert not auto.is_regression and auto.num_labels == 5
    assert "classification with 5 classes" in capsys.readouterr().out
    reg = load_task(TaskConfig(name=str(tmp_path / "scores.csv"), type="regression"))
    assert reg.is_regression and reg.num_labels == 1 and reg.metric == "pearson"
    assert isinstance(reg.train[0]["label"], float)
    _write(tmp_path, "frac.csv", [{"text": f"t{i}", "label": i % 4 / 2} for i in range(100)])
    assert load_task(TaskConfig(name=str(tmp_path / "frac.csv"))).is_regression
    assert "regression: the labels are fractional" in capsys.readouterr().out
    cls = load_task(TaskConfig(name=str(tmp_path / "frac.csv"), type="classification"))
    assert cls.label_names == ["0", "0.5", "1", "1.5"]


def test_task_type_contradicting_a_known_task_is_refused():
    with pytest.raises(DataError, match=r"'task\.type'.*classification task"):
        load_task(TaskConfig(name="rotten_tomatoes", type="regression"))


def test_task_type_regression_needs_numbers(tmp_path):
    _write(tmp_path, "x.csv", [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(20)])
    with pytest.raises(DataError, match="task.type=regression needs numeric labels"):
        load_task(TaskConfig(name=str(tmp_path / "x.csv"), type="regression"))
