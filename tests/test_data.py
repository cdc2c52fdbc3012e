import collections

import pandas as pd
import pytest

from distill.batching import LengthGroupedBatchSampler, make_loader, tokenize
from distill.config import TaskConfig
from distill.data import DataError, load_glue, load_local, load_rotten_tomatoes, load_task
from distill.metrics import compute_metrics


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
    from distill import assets

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
