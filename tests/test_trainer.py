import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import TrainConfig
from distill.stages.context import save_hf_folder
from distill.data.task_data import load_local
from distill.engine.evaluation import evaluate
from distill.engine.objectives import FineTuneObjective
from distill.engine.tracking import Tracker, read_metrics
from distill.engine.trainer import train


class Crash(Exception):
    pass


class CrashingObjective(FineTuneObjective):
    """Dies on its n-th call, like a run killed mid-epoch."""

    def __init__(self, model, crash_at):
        super().__init__(model)
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.crash_at:  # crash_at=0: never, only counts
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
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["finished"] and state["step"] == 7  # kept, marked finished, until the stage is recorded done
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6, 7]  # step 5 was logged once


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


def test_resume_in_a_later_epoch_keeps_that_epochs_batch_order(tmp_path, tiny_teacher_dir, task_folder, tokenizer):
    """Killed in epoch 2 of 3 (5 batches per epoch), resumed mid-epoch: same weights as never killed."""
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, save_every=2, log_every=1, warmup_ratio=0.2)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    _run(FineTuneObjective(model), loader, tmp_path / "a", tokenizer, cfg)
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "model").state_dict()

    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    with pytest.raises(Crash):
        _run(CrashingObjective(model, crash_at=14), loader, tmp_path / "b", tokenizer, cfg)
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["epoch"] == 2 and state["batches_in_epoch"] == 2

    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    objective = CrashingObjective(model, crash_at=0)  # counts calls, never crashes
    result = _run(objective, loader, tmp_path / "b", tokenizer, cfg)
    assert result.step == 15 and objective.calls == 3
    resumed = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b" / "model").state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_refuses_other_training_settings(tmp_path, tiny_teacher_dir, task_folder, tokenizer):
    cfg = TrainConfig(max_steps=7, batch_size=8, lr=1e-3, save_every=2, log_every=1)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    with pytest.raises(Crash):
        _run(CrashingObjective(model, crash_at=4), loader, tmp_path, tokenizer, cfg)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    with pytest.raises(RuntimeError, match=r"other training settings \(lr: 0.001 -> 0.002\)"):
        _run(FineTuneObjective(model), loader, tmp_path, tokenizer, replace(cfg, lr=2e-3))
    result = _run(FineTuneObjective(model), loader, tmp_path, tokenizer, replace(cfg, save_every=3, log_every=2))
    assert result.step == 7  # how often it saves or logs may change


class CrashOnRename:
    """Raises when ``<name>.tmp`` is renamed onto ``<name>`` for the ``at``-th time: a kill between the two
    renames of a folder swap (the old copy already moved aside, the new one not yet in place)."""

    def __init__(self, monkeypatch, name, at=1):
        self.count = 0
        original = Path.rename

        def rename(src, dst):
            if Path(src).name == name + ".tmp" and Path(dst).name == name:
                self.count += 1
                if self.count == at:
                    raise Crash()
            return original(src, dst)
        monkeypatch.setattr(Path, "rename", rename)


def test_kill_during_the_checkpoint_swap_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                             tiny_teacher_dir, task_folder, tokenizer):
    cfg = TrainConfig(max_steps=7, batch_size=8, lr=1e-3, save_every=2, log_every=1, warmup_ratio=0.2)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    with monkeypatch.context() as patch:
        CrashOnRename(patch, "checkpoint", at=2)  # the step-2 checkpoint is saved; the step-4 swap is killed
        with pytest.raises(Crash):
            _run(FineTuneObjective(model), loader, tmp_path, tokenizer, cfg)
    assert not (tmp_path / "checkpoint").exists() and (tmp_path / "checkpoint.old").is_dir()

    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    objective = CrashingObjective(model, crash_at=0)
    result = _run(objective, loader, tmp_path, tokenizer, cfg)
    assert result.step == 7 and objective.calls == 5  # resumed at step 2, not from scratch
    assert not (tmp_path / "checkpoint.old").exists()


def test_a_finished_training_is_not_run_again(tmp_path, tiny_teacher_dir, task_folder, tokenizer):
    """A kill after train() returned but before the stage was recorded done: the rerun trains nothing."""
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, save_every=0, log_every=1)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    first = _run(FineTuneObjective(model), loader, tmp_path, tokenizer, cfg)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    again = _run(CrashingObjective(model, crash_at=1), loader, tmp_path, tokenizer, cfg)  # any batch would crash
    assert again.step == first.step == 3 and again.history == first.history


def test_model_folder_swap_killed_midway_is_restored(tmp_path, monkeypatch, tiny_teacher_dir, tokenizer):
    from distill.base.fsutil import recover_folder

    first = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    save_hf_folder(first, tokenizer, tmp_path / "model")
    second = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    with torch.no_grad():
        second.classifier.weight.add_(1.0)
    with monkeypatch.context() as patch:
        CrashOnRename(patch, "model")
        with pytest.raises(Crash):
            save_hf_folder(second, tokenizer, tmp_path / "model")
    assert recover_folder(tmp_path / "model")
    restored = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(restored.classifier.weight, first.classifier.weight)
    save_hf_folder(second, tokenizer, tmp_path / "model")  # the next save goes through
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_every_batch_of_every_epoch_trains_with_gradient_accumulation(tmp_path, tiny_teacher_dir, task_folder,
                                                                       tokenizer):
    """accelerate steps the optimizer at the end of each epoch's data, so 5 batches with grad_accum=2 are 3
    steps an epoch: 3 epochs are 9 steps. Counted as ceil(3 * 5 / 2) = 8, the last epoch lost its last batch."""
    from distill.engine.trainer import total_steps

    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, grad_accum=2, save_every=0, log_every=1)
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    assert len(loader) == 5
    objective = CrashingObjective(model, crash_at=0)  # counts the batches it trains on
    result = _run(objective, loader, tmp_path, tokenizer, cfg)
    assert objective.calls == 15 and result.step == 9
    assert [r["epoch"] for r in result.history] == [0] * 3 + [1] * 3 + [2] * 3
    # a fractional last epoch: its share of the batches, in whole accumulation windows
    assert total_steps(replace(cfg, epochs=2.5), 5) == 3 + 3 + 2
    assert total_steps(replace(cfg, epochs=0.3, grad_accum=1), 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floats


def test_stages_with_different_mixed_precision_in_one_process(tmp_path, tiny_teacher_dir, task_folder, tokenizer):
    """accelerate's state is a process-wide singleton; each train() sets its own precision."""
    for i, precision in enumerate(["no", "bf16", "no"]):
        cfg = TrainConfig(max_steps=2, batch_size=8, lr=1e-3, save_every=0, log_every=1, mixed_precision=precision,
                          grad_accum=1 + i % 2)
        model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
        seen = []
        model.classifier.register_forward_hook(lambda module, args, out: seen.append(out.dtype == torch.bfloat16))
        result = _run(FineTuneObjective(model), loader, tmp_path / str(i), tokenizer, cfg)
        assert result.step == 2 and len(seen) == 2 * cfg.grad_accum
        assert all(seen) == (precision == "bf16") and any(seen) == (precision == "bf16")
