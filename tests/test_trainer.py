import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.batching import make_loader, tokenize
from distill.config import TrainConfig
from distill.context import save_hf_folder
from distill.data import load_local
from distill.evaluation import evaluate
from distill.objectives import FineTuneObjective
from distill.tracking import Tracker, read_metrics
from distill.trainer import train


class Crash(Exception):
    pass


class CrashingObjective(FineTuneObjective):
    """Dies on its n-th call, like a run killed mid-epoch."""

    def __init__(self, model, crash_at):
        super().__init__(model)
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash()
        return super().__call__(batch)


def _setup(tiny_teacher_dir, task_folder, tokenizer):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    data = load_local(task_folder)
    loader = make_loader(tokenize(data.train, tokenizer, 32), tokenizer, batch_size=8, shuffle=True, seed=3)
    return model, loader


def _run(objective, loader, out_dir, tokenizer, cfg, evaluate_fn=None):
    tracker = Tracker(out_dir, "t", mode="disabled")
    return train(objective, loader, cfg, out_dir, tracker=tracker, seed=5, desc="t", evaluate=evaluate_fn,
                 save_model=lambda m, folder: save_hf_folder(m, tokenizer, folder))


def test_killed_run_resumes_from_its_step_and_matches_an_uninterrupted_run(tmp_path, tiny_teacher_dir,
                                                                           task_folder, tokenizer):
    cfg = TrainConfig(max_steps=7, batch_size=8, lr=1e-3, save_every=2, log_every=1, warmup_ratio=0.2)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    _run(FineTuneObjective(model), loader, tmp_path / "a", tokenizer, cfg)  # 5 batches/epoch: crosses epochs
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "model").state_dict()

    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    with pytest.raises(Crash):
        _run(CrashingObjective(model, crash_at=6), loader, tmp_path / "b", tokenizer, cfg)
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["epoch"] == 0 and state["batches_in_epoch"] == 4

    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)  # fresh weights: must come from checkpoint
    result = _run(FineTuneObjective(model), loader, tmp_path / "b", tokenizer, cfg)
    assert result.step == 7
    resumed = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b" / "model").state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert not (tmp_path / "b" / "checkpoint").exists()  # finished: checkpoint removed, model kept
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert steps[:4] == [1, 2, 3, 4] and steps[-3:] == [5, 6, 7]  # the resumed run logged from step 5


def test_best_checkpoint_is_kept_and_training_lowers_the_loss(tmp_path, tiny_teacher_dir, task_folder, tokenizer):
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    data = load_local(task_folder)
    dev = make_loader(tokenize(data.dev, tokenizer, 32), tokenizer, batch_size=16, shuffle=False)
    cfg = TrainConfig(epochs=20, batch_size=8, lr=3e-3, eval_every=10, log_every=5, save_every=0, warmup_ratio=0.0)
    scores = []

    def evaluate_fn(m):
        out = evaluate(m, dev, "accuracy")
        scores.append(out["score"])
        return out

    result = _run(FineTuneObjective(model), loader, tmp_path, tokenizer, cfg, evaluate_fn)
    assert result.best_score == max(scores)
    best = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert evaluate(best, dev, "accuracy")["score"] == pytest.approx(result.best_score)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.best_score >= 0.9  # the toy task is linearly separable by one word
