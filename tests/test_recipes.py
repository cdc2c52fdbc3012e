"""The BERT-large recipes build and run a few steps against a local BERT-large-shaped teacher folder
with random weights and a local GLUE-shaped task (no network). Slow: a 335M-parameter teacher on CPU."""
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from distill import pipeline
from distill.config import load_config

RECIPES = ["tinybert_sst2", "tinybert_mrpc", "tinybert_rte", "distilbert_sst2"]


@pytest.fixture(scope="module")
def bert_large_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("bert_large_random")
    config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        architectures=["BertForMaskedLM"])
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _glue_folder(root: Path, pair: bool) -> Path:
    rows = {"sentence1" if pair else "sentence": [f"the film number {i} is {'good' if i % 2 else 'bad'}" for i in range(48)],
            "label": [i % 2 for i in range(48)], "idx": list(range(48))}
    if pair:
        rows["sentence2"] = [f"number {i} is a film" for i in range(48)]
    frame = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / "train.parquet")
    frame.iloc[:16].to_parquet(root / "validation.parquet")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_a_few_steps_on_a_bert_large_shaped_teacher(recipe, tmp_path, bert_large_folder):
    cfg = load_config(f"experiments/{recipe}.yaml")
    pair = cfg.task.name in ("glue/mrpc", "glue/rte")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"sentence {i} of the general corpus about films and books." for i in range(300)))
    steps = ["max_steps=2", "batch_size=4", "eval_every=0", "save_every=0", "log_every=1"]
    overrides = [f"output_dir={tmp_path / 'runs'}", f"teacher.name={bert_large_folder}",
                 f"task.data_dir={_glue_folder(tmp_path / 'glue', pair)}", "task.max_len=32",
                 f"general.corpus={corpus}", "general.max_len=32", "task_distill.augment.copies=1",
                 "export.enabled=false", "bench.repeats=5", "bench.test_examples=8",
                 "teacher.gate=warn"]  # a 2-step random teacher learns nothing: the gate would stop it
    for section in ("teacher.finetune", "general.train", "task_distill.intermediate", "task_distill.prediction",
                    "prune.recovery"):
        overrides += [f"{section}.{s}" for s in steps]
    cfg = load_config(f"experiments/{recipe}.yaml", overrides)
    pipeline.run_distill(cfg)
    assert (cfg.run_dir / "student-task" / "DONE").is_file()
    assert (cfg.run_dir / "student-pruned" / "DONE").is_file()
    assert (cfg.run_dir / "report.md").is_file()
