"""The BERT-large recipes build and run a few steps against a local BERT-large-shaped teacher folder
with random weights and a local GLUE-shaped task, the embedded CoNLL-2003 or a small SQuAD-format folder
(no network). Slow: a 335M-parameter teacher on CPU."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForQuestionAnswering

from safetensors import safe_open

from distill.runner import pipeline
from distill.config import load_config
from distill.engine.tracking import read_metrics
from students.presets import resolve_shape
from tests.qa_data import squad_folder

LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)

RECIPES = ["tinybert_sst2", "tinybert_mrpc", "tinybert_rte", "distilbert_sst2", "tinybert_conll2003", "tinybert_squad"]


@pytest.fixture(scope="module")
def bert_large_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("bert_large_random")
    config = BertConfig(**LARGE, architectures=["BertForMaskedLM"])
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_large_qa_folder(tmp_path_factory, tokenizer):
    """BERT-large-shaped and already fine-tuned for QA (random weights), as the SQuAD recipe's teacher."""
    folder = tmp_path_factory.mktemp("bert_large_qa_random")
    torch.manual_seed(0)
    BertForQuestionAnswering(BertConfig(**LARGE)).save_pretrained(folder)
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
def test_recipe_runs_a_few_steps_on_a_bert_large_shaped_teacher(recipe, tmp_path, request):
    cfg = load_config(f"experiments/{recipe}.yaml")
    pair = cfg.task.name in ("glue/mrpc", "glue/rte")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"sentence {i} of the general corpus about films and books." for i in range(300)))
    steps = ["max_steps=2", "batch_size=4", "eval_every=0", "save_every=0", "log_every=1"]
    qa = cfg.task.kind == "question_answering"
    teacher = request.getfixturevalue("bert_large_qa_folder" if qa else "bert_large_folder")
    overrides = [f"output_dir={tmp_path / 'runs'}", f"teacher.name={teacher}", f"general.corpus={corpus}",
                 "general.max_len=32", "task_distill.augment.copies=1", "export.enabled=false", "bench.repeats=5",
                 "bench.test_examples=8",
                 "teacher.gate=warn"]  # a 2-step random teacher learns nothing: the gate would stop it
    for section in ("teacher.finetune", "general.train", "task_distill.intermediate", "task_distill.prediction",
                    "prune.recovery"):
        overrides += [f"{section}.{s}" for s in steps]
    if qa:  # a small local SQuAD-format folder; the recipe's own windows (max_len 384, doc_stride 128)
        overrides += [f"task.name={squad_folder(tmp_path / 'squad')}", "export.enabled=true",
                      "export.formats=[fp32]", "export.check_examples=8"]
    else:
        overrides += [f"task.data_dir={_glue_folder(tmp_path / 'glue', pair)}", "task.max_len=32"]
    if cfg.task.name == "conll2003":  # the embedded NER data: a few sentences are enough here
        overrides += ["task.max_train_examples=64", "task.max_eval_examples=16"]
    cfg = load_config(f"experiments/{recipe}.yaml", overrides)
    pipeline.run_distill(cfg)
    run = cfg.run_dir
    trained = ["teacher", "student-general", "student-intermediate", "student-task", "student-pruned"]
    if cfg.teacher.already_finetuned:  # the SQuAD recipe's teacher is used as given
        trained = trained[1:]
    for stage in trained:  # every stage ran its 2 optimizer steps and logged each
        assert (run / stage / "DONE").is_file(), stage
        assert [r["step"] for r in read_metrics(run / stage / "metrics.jsonl") if "loss" in r] == [1, 2], stage
    assert (run / "report.md").is_file()
    # each stage changed the weights it started from
    if not cfg.teacher.already_finetuned:
        assert not torch.equal(_tensor(teacher, "bert.encoder.layer.0.attention.self.query.weight"),
                               _tensor(run / "teacher" / "model", "bert.encoder.layer.0.attention.self.query.weight"))
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    for before, after in zip(["student-general", "student-intermediate"], ["student-intermediate", "student-task"]):
        assert not torch.equal(_tensor(run / before / "model", name), _tensor(run / after / "model", name)), after
    head = "qa_outputs.weight" if qa else "classifier.weight"
    assert not torch.equal(_tensor(run / "student-task" / "model", head), _tensor(run / "student-pruned" / "model", head))
    # the saved students have the recipe's shape, the pruned one the recipe's ratio in every layer
    shape = resolve_shape(cfg.student.preset, cfg.student.layers, cfg.student.hidden, cfg.student.heads,
                          cfg.student.ffn)
    task = json.loads((run / "student-task" / "model" / "config.json").read_text())
    assert (task["num_hidden_layers"], task["hidden_size"], task["num_attention_heads"], task["intermediate_size"]) == (
        shape.layers, shape.hidden, shape.heads, shape.ffn)
    assert _tensor(run / "student-task" / "model", name).shape == (shape.ffn, shape.hidden)
    pruned = json.loads((run / "student-pruned" / "model" / "config.json").read_text())
    keep = 1.0 - cfg.prune.ratio
    assert pruned["hidden_size"] == shape.hidden
    assert pruned["layer_heads"] == [round(shape.heads * keep)] * shape.layers
    assert pruned["layer_ffn"] == [round(shape.ffn * keep)] * shape.layers
    assert _tensor(run / "student-pruned" / "model", "bert.encoder.layer.0.attention.self.query.weight").shape == (
        round(shape.heads * keep) * shape.hidden // shape.heads, shape.hidden)


def _tensor(folder: Path, name: str) -> torch.Tensor:
    """One saved tensor; ``bert.``-prefixed names also find a bare encoder's (a BertModel general student)."""
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
        return weights.get_tensor(name if name in keys else name.removeprefix("bert."))
