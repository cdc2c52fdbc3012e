import argparse

import numpy as np
import pytest

from distill.benchmarks import train as bench_train
from distill.benchmarks import train_fixed
from distill.benchmarks.train_common import BenchTrainError, textbrewer_folder

TEXTS = ["one", "two words", "three words here", "a somewhat longer snippet of four", "x", "y z"]
LABELS = [1, 0, 1, 0, 1, 0]


def test_fixed_order_is_one_seeded_permutation_read_in_order_and_wrapping():
    batches = train_fixed.fixed_order(5, 3, 2, seed=42)
    order = np.random.default_rng(42).permutation(5)
    assert [b.tolist() for b in batches] == [order[[0, 1]].tolist(), order[[2, 3]].tolist(), order[[4, 0]].tolist()]


def test_grouped_batches_hold_the_same_examples_with_less_padding(tokenizer):
    fixed = train_fixed.fixed_batches(tokenizer, TEXTS, LABELS, 3, 2, 16, seed=0)
    grouped = train_fixed.grouped_batches(tokenizer, TEXTS, LABELS, 3, 2, 16, seed=0)

    def rows(batches):
        return sorted((tuple(i for i, m in zip(ids.tolist(), mask.tolist()) if m), int(label))
                      for b in batches for ids, mask, label in zip(b["input_ids"], b["attention_mask"], b["labels"]))

    assert rows(grouped) == rows(fixed)
    padded = lambda bs: sum(b["input_ids"].numel() for b in bs)  # noqa: E731
    assert padded(grouped) < padded(fixed)


def test_textbrewer_folder_without_the_package_is_refused_before_any_run(tmp_path):
    assert textbrewer_folder(None) is None
    with pytest.raises(BenchTrainError, match="no textbrewer package"):
        textbrewer_folder(str(tmp_path))
    with pytest.raises(BenchTrainError, match="unknown engines"):
        bench_train.main(["--engines", "ours,deepspeed"])


def test_table_reports_medians_and_the_ratio_to_textbrewer():
    runs = [{"mode": "task", "engine": e, "samples_per_s": v, "cpu_ms_per_sample": 2000 / v,
             "other_procs_cpu_cores": 0.0, "mean_padded_len": 50.0}
            for e, v in [("textbrewer", 10.0), ("ours", 16.0), ("textbrewer", 12.0), ("ours", 14.0),
                         ("textbrewer", 11.0), ("ours", 32.0)]]
    text = bench_train.table(runs)
    assert "| task | textbrewer | 11.00 | 10.0, 12.0, 11.0 | 1.00x | 182 | 1.00x |" in text
    assert "| task | ours | 16.00 | 16.0, 14.0, 32.0 | 1.45x | 125 | 1.45x |" in text


def test_our_engine_worker_times_real_steps_on_the_embedded_assets():
    args = argparse.Namespace(worker="ours", mode="intermediate", steps=2, warmup=1, batch_size=4, max_len=16,
                              threads=2, seed=42)
    result = train_fixed.worker(args)
    assert result["engine"] == "ours" and result["timed_steps"] == 2 and result["samples_per_s"] > 0
    assert result["mean_padded_len"] <= 16 and 0 < result["real_token_share"] <= 1
    assert np.isfinite(result["loss_first"])


def test_worker_runs_from_the_checkout_root_and_a_baseline_tree_must_have_the_layered_engine(tmp_path):
    """The worker interpreter gets the checkout root on its path (not distill/), and --baseline-tree accepts a
    checkout with distill/engine/objectives.py, the module the worker imports, and refuses anything else."""
    from distill.benchmarks import train, train_fixed
    from distill.benchmarks.train_common import BenchTrainError

    root = train_fixed._project_root()
    assert (root / "distill" / "engine" / "objectives.py").is_file() and (root / "Makefile").is_file()
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "objectives.py").write_text("")  # the flat layout the worker cannot import from
    with pytest.raises(BenchTrainError, match="layered engine"):
        train.main(["--baseline-tree", str(tmp_path), "--engines", "ours", "--steps", "1"])
