"""One placement rule for every model pass: the accelerator's device, the stage's precision.

Each pass is run with mixed_precision=bf16 (a real autocast on the CPU too) and a recording hook on the
model asserts what the pass gave it: autocast on for the placement's device type, in bf16, inputs and
parameters on the placement's device. The expected placement is the code's own rule, ``placement``: the
CPU on a machine without an accelerator, cuda:<local rank> on a GPU machine. A pass that ignores the rule
(runs outside autocast, or leaves the model or its inputs elsewhere) fails.
"""
import math
import types

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import TrainConfig, load_config
from distill.stages.context import save_hf_folder
from distill.data.task_data import load_local
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective, FineTuneObjective
from distill.engine.placement import placement
from distill.engine.tracking import Tracker
from distill.engine.trainer import train
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: leave it as found for the tests that follow (bf16 here)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def concrete(device: torch.device) -> torch.device:
    """``cuda`` as the tensors placed there report it (``cuda:0``); ``cpu`` stays ``cpu``."""
    return torch.empty(0, device=device).device


class Recorder:
    """Forward pre-hook: (autocast on?, autocast dtype, input device, parameter device) of every call, the
    autocast read for the device type the placement rule gives this machine (cpu, or cuda on a GPU one)."""

    def __init__(self, model: torch.nn.Module):
        self.calls = []
        self.model = model
        self.device_type = placement("bf16").device.type
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append((torch.is_autocast_enabled(self.device_type), torch.get_autocast_dtype(self.device_type),
                           ids.device, next(module.parameters()).device))

    def assert_placed(self, place, minimum: int = 1) -> None:
        assert len(self.calls) >= minimum, self.calls
        for enabled, dtype, inputs, params in self.calls:
            assert enabled and dtype == place.dtype, (enabled, dtype)
            assert inputs == concrete(place.device) and params == concrete(place.device), (inputs, params, place)


def _student():
    torch.manual_seed(1)
    return BertForSequenceClassification(tiny_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                                     intermediate_size=32))


def _train_set(tokenizer, task_folder):
    return tokenize(load_local(task_folder).train, tokenizer, 32)


def test_placement_resolves_device_and_precision():
    """The documented rule, written out independently: a CUDA machine places passes on its GPU and auto means
    bf16 there (fp16 on a card without bf16); a machine without one places them on the CPU, auto meaning fp32."""
    if torch.cuda.is_available():
        device_type = "cuda"
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif torch.backends.mps.is_available():
        device_type, auto = "mps", None
    else:
        device_type, auto = "cpu", None
    place = placement("bf16")
    assert place.device.type == device_type and place.dtype == torch.bfloat16
    assert placement("fp16").dtype == torch.float16 and placement("no").dtype is None
    assert placement("auto").dtype == auto and placement("auto").device == place.device
    with place.autocast():
        assert torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16
    with placement("no").autocast():
        assert not torch.is_autocast_enabled(device_type)


def test_teacher_forward_runs_under_the_training_autocast(tmp_path, tiny_teacher_dir, tokenizer, task_folder):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    recorder = Recorder(teacher)
    objective = DistillObjective(_student(), teacher, build_layer_map({"hidden_mse": 1.0}, "uniform", 2, 4))
    loader = make_loader(_train_set(tokenizer, task_folder), tokenizer, 8, shuffle=True, seed=0)
    cfg = TrainConfig(max_steps=2, batch_size=8, save_every=0, log_every=1, mixed_precision="bf16")
    result = train(objective, loader, cfg, tmp_path, tracker=Tracker(tmp_path, "t", mode="disabled"),
                   save_model=lambda m, folder: save_hf_folder(m.student, tokenizer, folder))
    recorder.assert_placed(placement("bf16"), minimum=2)
    assert all(math.isfinite(r["loss"]) for r in result.history)


def test_teacher_logit_caching_runs_on_the_placement(tiny_teacher_dir, tokenizer, task_folder):
    from distill.stages.common import cache_teacher_logits

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    recorder = Recorder(teacher)
    objective = DistillObjective(_student(), teacher, build_layer_map({"soft_ce": 1.0}, "uniform", 2, 4))
    ctx = types.SimpleNamespace(loader=lambda split, size, dataset=None: make_loader(dataset, tokenizer, size, False))
    cached = cache_teacher_logits(ctx, objective, teacher, _train_set(tokenizer, task_folder), "bf16")
    recorder.assert_placed(placement("bf16"))
    assert np.isfinite(np.asarray(cached["teacher_logits"])).all()


def test_teacher_logit_caching_gives_the_teacher_back_where_it_was(tiny_teacher_dir, tokenizer, task_folder):
    """with_teacher_logits borrows the caller's model: it used to leave it on the placement's device (CUDA on a
    GPU machine, where the caller's CPU tensors then failed) and in eval mode. No second device here: the
    model's .to is recorded (and not carried out) under a placement on the meta device, and the inputs
    follow the parameters, which stay on the CPU."""
    from distill.engine.objectives import with_teacher_logits
    from distill.engine.placement import Placement

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).train()
    model.bert.embeddings.dropout.eval()  # a module the caller keeps in eval: its own mode comes back too
    moves = []
    model.to = lambda device: (moves.append(torch.device(device)), model)[1]
    loader = lambda d: make_loader(d, tokenizer, 8, shuffle=False)  # noqa: E731
    away = Placement(torch.device("meta"), None)
    cached = with_teacher_logits(model, _train_set(tokenizer, task_folder), loader, away)
    assert np.isfinite(np.asarray(cached["teacher_logits"])).all()
    assert moves == [torch.device("meta"), torch.device("cpu")]  # there and back
    assert model.training and model.bert.encoder.training and not model.bert.embeddings.dropout.training


def test_mlm_augmentation_runs_on_the_placement(monkeypatch, tiny_mlm_teacher_dir, tokenizer):
    import teachers.load
    from distill.data.augment import _augment_mlm, split_words

    recorders = []
    original = teachers.load.load_backbone

    def recorded(*args, **kwargs):
        model = original(*args, **kwargs)
        recorders.append(Recorder(model))
        return model

    monkeypatch.setattr(teachers.load, "load_backbone", recorded)
    cfg = load_config(None, ["task_distill.intermediate.mixed_precision=bf16", "task_distill.augment.copies=1",
                             "task_distill.augment.top_k=3", "task_distill.augment.batch_size=2"])
    ctx = types.SimpleNamespace(cfg=cfg, tokenizer=tokenizer)
    rows = [split_words(enc["input_ids"], enc["token_type_ids"], tokenizer)
            for enc in (tokenizer("a wonderful film"), tokenizer("a dull story", "truly bad"), tokenizer("fine"))]
    made = _augment_mlm(rows, ctx, str(tiny_mlm_teacher_dir), np.random.default_rng(0))
    assert len(made) == 3
    recorders[0].assert_placed(placement("bf16"), minimum=2)


def test_taylor_importance_runs_on_the_placement(tiny_teacher_dir, tokenizer, task_folder):
    from distill.passes.prune import prune_model

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    calls = []
    place = placement("bf16")

    def record(module, args, kwargs):
        if "labels" in kwargs:  # the importance passes (torch-pruning's own trace has no labels)
            calls.append((torch.is_autocast_enabled(place.device.type), torch.get_autocast_dtype(place.device.type),
                          kwargs["input_ids"].device))

    model.register_forward_pre_hook(record, with_kwargs=True)
    loader = make_loader(_train_set(tokenizer, task_folder), tokenizer, 8, shuffle=False)
    example = dict(tokenizer(["a wonderful film", "dull"], padding=True, return_tensors="pt"))
    pruned, report = prune_model(model, example, 0.5, importance="taylor", loader=loader, taylor_batches=2,
                                 place=place)
    assert calls == [(True, torch.bfloat16, concrete(place.device))] * 2
    assert report.heads_after == [2] * 4


def test_fine_tuning_objective_is_untouched_by_placement(tmp_path, tiny_teacher_dir, tokenizer, task_folder):
    """Full precision (mixed_precision=no) stays full precision: no autocast anywhere."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    recorder = Recorder(model)
    loader = make_loader(_train_set(tokenizer, task_folder), tokenizer, 8, shuffle=True, seed=0)
    cfg = TrainConfig(max_steps=1, batch_size=8, save_every=0, log_every=1, mixed_precision="no")
    train(FineTuneObjective(model), loader, cfg, tmp_path, tracker=Tracker(tmp_path, "t", mode="disabled"),
          save_model=lambda m, folder: save_hf_folder(m, tokenizer, folder))
    assert recorder.calls and not any(enabled for enabled, *_ in recorder.calls)
