"""Model selection on the dev score: a NaN score (Pearson of constant predictions) is the worst."""
import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import TrainConfig
from distill.stages.context import save_hf_folder
from distill.data.task_data import load_local
from distill.engine.objectives import FineTuneObjective
from distill.engine.tracking import Tracker
from distill.engine.trainer import train


@pytest.mark.parametrize("scores, best_step", [([math.nan, 0.5, 0.3], 2), ([math.nan, math.nan, 0.2], 3)])
def test_nan_dev_score_never_wins_model_selection(tmp_path, tiny_teacher_dir, tokenizer, task_folder, scores,
                                                  best_step):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    loader = make_loader(tokenize(load_local(task_folder).train, tokenizer, 32), tokenizer, 8, shuffle=True, seed=0)
    cfg = TrainConfig(max_steps=3, batch_size=8, eval_every=1, save_every=0, log_every=1, mixed_precision="no")
    given = iter(scores)
    steps = []

    def evaluate(m):
        steps.append(len(steps) + 1)
        return {"score": next(given)}

    result = train(FineTuneObjective(model), loader, cfg, tmp_path, evaluate=evaluate,
                   save_model=lambda m, folder: save_hf_folder(m, tokenizer, folder),
                   tracker=Tracker(tmp_path, "t", mode="disabled"))
    assert steps == [1, 2, 3]
    best = max(s for s in scores if not math.isnan(s))
    assert result.best_score == best
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("dev_score") == best] == [best_step]
