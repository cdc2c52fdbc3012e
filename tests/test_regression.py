"""Regression tasks (float labels, e.g. glue/stsb): the task stages train on scores, not classes."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertModel

from distill.runner import pipeline
from distill.config import load_config
from distill.stages.context import RunContext
from distill.stages.common import check_task_losses, losses_for_task, student_shape
from distill.engine.evaluation import evaluate
from distill.engine.layer_map import LayerMapError, build_layer_map
from distill.engine.objectives import DistillObjective
from students.build import build_student
from tests.conftest import tiny_config

SCORES = {"wonderful": 4.5, "pleasant": 3.0, "dull": 1.5, "dreadful": 0.2}


def write_stsb(folder, n=240):
    """glue/stsb-shaped: sentence pairs, similarity scores in [0, 5] with fractional values."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        word = list(SCORES)[i % 4]
        rows.append({"text": f"a {word} film number {i}", "text_pair": f"the story of case {i % 7}",
                     "label": round(SCORES[word] + float(rng.uniform(-0.25, 0.25)), 3)})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    folder.mkdir()
    frame.iloc[:n * 2 // 3].to_csv(folder / "train.tsv", sep="\t", index=False)
    frame.iloc[n * 2 // 3:n * 5 // 6].to_csv(folder / "dev.tsv", sep="\t", index=False)
    frame.iloc[n * 5 // 6:].to_json(folder / "test.jsonl", orient="records", lines=True)
    return folder


@pytest.fixture()
def stsb_folder(tmp_path):
    return write_stsb(tmp_path / "stsb")


def _cfg(tmp_path, teacher, task, *extra):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the film number {i} was shown in the old cinema on a rainy day." for i in range(100)))
    overrides = [f"output_dir={tmp_path / 'runs'}", f"teacher.name={teacher}", f"task.name={task}", "task.max_len=32",
                 "student.preset=custom", "student.layers=2", "student.hidden=32", "student.heads=4", "student.ffn=32",
                 f"general.corpus={corpus}", "general.max_len=32", "seed=0"]
    for section, steps, lr in (("teacher.finetune", 80, 5e-3), ("general.train", 2, 1e-3),
                               ("task_distill.intermediate", 10, 1e-3), ("task_distill.prediction", 60, 5e-3),
                               ("prune.recovery", 3, 1e-3)):
        overrides += [f"{section}.{k}={v}" for k, v in (("max_steps", steps), ("batch_size", 16), ("lr", lr),
                                                         ("save_every", 0), ("log_every", 1), ("warmup_ratio", 0.0))]
    return load_config(None, overrides + list(extra))


def test_stsb_shaped_data_distils_end_to_end_and_beats_the_untrained_student(tmp_path, tiny_encoder_dir, stsb_folder):
    cfg = _cfg(tmp_path, tiny_encoder_dir, stsb_folder, "prune.taylor_batches=2")
    pipeline.run_task(cfg)  # teacher -> general -> 2a -> 2b with the default prediction losses
    run = cfg.run_dir
    teacher = json.loads((run / "teacher" / "result.json").read_text())
    distilled = json.loads((run / "student-task" / "result.json").read_text())
    terms = json.loads((run / "student-task" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"logits_mse", "hard_mse"} <= set(terms) and "soft_ce" not in terms  # chosen by task type
    ctx = RunContext(cfg)
    torch.manual_seed(0)
    untrained = build_student(student_shape(ctx), BertModel.from_pretrained(tiny_encoder_dir),
                              kind="classifier", label_names=None, init="random", seed=cfg.seed)
    before = evaluate(untrained, ctx.loader("dev", 64), "pearson")["score"]
    print(f"teacher dev {teacher['dev']['score']:.3f}, untrained student {before:.3f}, "
          f"distilled {distilled['dev']['score']:.3f}")
    assert teacher["dev"]["score"] > 0.8  # the toy scores follow one word: a teacher that learnt them
    assert distilled["dev"]["score"] > 0.8 and distilled["dev"]["score"] > before + 0.3

    pipeline.run_prune(cfg)  # recovery: the default {hidden_mse, soft_ce} becomes {hidden_mse, logits_mse}
    terms = json.loads((run / "student-pruned" / "metrics.jsonl").read_text().splitlines()[0])
    assert "logits_mse" in terms and "soft_ce" not in terms


def test_classification_losses_set_for_a_regression_task_are_refused_before_training(tmp_path, tiny_encoder_dir,
                                                                                       stsb_folder):
    cfg = _cfg(tmp_path, tiny_encoder_dir, stsb_folder, "task_distill.prediction_losses={soft_ce: 1.0}")
    with pytest.raises(ValueError, match=r"task_distill\.prediction_losses\.soft_ce.*regression task.*logits_mse"):
        pipeline.run_task(cfg)
    assert not (cfg.run_dir / "teacher").exists()
    cfg = _cfg(tmp_path, tiny_encoder_dir, stsb_folder, "prune.recovery_losses={hard_ce: 1.0}")
    with pytest.raises(ValueError, match=r"prune\.recovery_losses\.hard_ce"):
        check_task_losses(cfg, is_regression=True)
    check_task_losses(cfg, is_regression=False)
    with pytest.raises(ValueError, match=r"hard_mse is a regression loss"):
        check_task_losses(_cfg(tmp_path, tiny_encoder_dir, stsb_folder, "task_distill.prediction_losses={hard_mse: 1}"),
                          is_regression=False)


def test_default_losses_follow_the_task_type_and_user_losses_are_kept():
    assert losses_for_task({"soft_ce": 1.0, "hard_ce": 0.0}, True) == {"logits_mse": 1.0, "hard_mse": 0.0}
    assert losses_for_task({"hidden_mse": 1.0, "soft_ce": 1.0}, True) == {"hidden_mse": 1.0, "logits_mse": 1.0}
    assert losses_for_task({"soft_ce": 1.0, "hard_ce": 0.0}, False) == {"soft_ce": 1.0, "hard_ce": 0.0}
    assert losses_for_task({"soft_ce": 2.0}, True) == {"soft_ce": 2.0}  # set by the user: refused in preflight


def test_zero_weight_term_that_cannot_run_on_a_regression_head_is_skipped_weighted_one_refused():
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_config(tiny_config(num_labels=1)).eval()
    student = AutoModelForSequenceClassification.from_config(
        tiny_config(num_labels=1, num_hidden_layers=2, hidden_size=16, intermediate_size=32)).eval()
    objective = DistillObjective(student, teacher, build_layer_map({"logits_mse": 1.0, "hard_ce": 0.0}, "uniform", 2, 4))
    assert [m.loss for m in objective.skipped] == ["hard_ce"]
    batch = {"input_ids": torch.randint(1000, 2000, (3, 8)), "attention_mask": torch.ones(3, 8, dtype=torch.long),
             "labels": torch.tensor([0.5, 2.0, 4.0])}
    loss, terms = objective(batch)  # the old code ran cross_entropy on the 1-logit head here and crashed
    assert set(terms) == {"logits_mse"} and torch.isfinite(loss)
    with pytest.raises(LayerMapError, match="soft_ce needs class probabilities"):
        DistillObjective(student, teacher, build_layer_map({"soft_ce": 1.0}, "uniform", 2, 4))
