"""End-to-end runs on the embedded real assets (real MiniLM teacher, real review snippets, real wiki text).

The fast one runs in `make test`; the full pipeline sits behind the `slow` marker (`make test-slow`).
"""
import json

import pytest
from transformers import AutoModelForSequenceClassification

import students  # noqa: F401
from distill.runner import pipeline
from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import load_config
from distill.data.task_data import load_rotten_tomatoes
from distill.engine.evaluation import evaluate

EXP = "experiments/rotten_tomatoes_minilm.yaml"


def test_real_teacher_learns_the_real_task_in_a_few_steps(tmp_path):
    cfg = load_config(EXP, [f"output_dir={tmp_path}", "task.max_train_examples=1600", "task.max_eval_examples=300", "teacher.finetune.lr=1e-4",
                            "teacher.finetune.max_steps=80", "teacher.finetune.eval_every=0",
                            "teacher.finetune.batch_size=16"])
    pipeline.run_teacher(cfg)
    result = json.loads((cfg.run_dir / "teacher" / "result.json").read_text())
    assert result["steps"] == 80
    assert result["dev"]["accuracy"] > 0.70  # majority class is 58% (78% measured here after 80 steps)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.run_dir / "teacher" / "model")
    assert model.config.id2label == {0: "rotten", 1: "fresh"}


@pytest.mark.slow
def test_full_pipeline_on_embedded_assets_reproduces_its_report(tmp_path):
    cheap = ["teacher.finetune.max_steps=60", "general.train.max_steps=20", "general.max_sequences=300",
             "task_distill.intermediate.max_steps=40", "task_distill.prediction.max_steps=60",
             "prune.recovery.max_steps=40", "task.max_train_examples=2000", "bench.repeats=5",
             "bench.test_examples=300", "general.enabled=true",
             # static QDQ INT8 of a 40-step recovery: dev agreement 94.2-94.8% (padded or per-batch
             # calibration), under the 95% check; QDQ is tested in test_export.py and the full runs
             "export.formats=[fp32, fp32-fused, fp16, int8-dynamic]"]
    cfg = load_config(EXP, [f"output_dir={tmp_path}"] + cheap)
    pipeline.run_distill(cfg)
    run = cfg.run_dir
    assert (run / "report.md").is_file() and (run / "report.html").is_file() and (run / "pareto.png").is_file()
    result = json.loads((run / "student-task" / "result.json").read_text())
    student = AutoModelForSequenceClassification.from_pretrained(run / "student-task" / "model")
    tok_test = tokenize(load_rotten_tomatoes().test, pipeline.RunContext(cfg).tokenizer, cfg.task.max_len)
    again = evaluate(student, make_loader(tok_test, pipeline.RunContext(cfg).tokenizer, 128, False), "accuracy")
    assert again["accuracy"] == pytest.approx(result["test"]["accuracy"], abs=1e-9)
    bench = json.loads((run / "bench.json").read_text())
    assert {r["name"] for r in bench} >= {"teacher", "student-task", "student-pruned"}
