"""Which attention kernel training runs (TrainConfig.attention): sdpa on CUDA by default, eager on CPU, and the
distillation losses agree between the two (they read queries and keys through hooks, never the maps)."""
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.config import TrainConfig
from distill.engine.batching import make_loader
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective, FineTuneObjective
from distill.engine.placement import resolve_attention, use_attention
from distill.engine.trainer import _check_resumable, _resume_settings, train
from distill.fingerprint import stage_value
from distill.tasks.sequence_classification import tokenize
from tests.conftest import tiny_config


def _kernel(model) -> str:
    return model.config._attn_implementation


def test_auto_is_sdpa_on_cuda_and_eager_elsewhere():
    assert resolve_attention("auto", torch.device("cuda", 0)) == "sdpa"
    assert resolve_attention("auto", torch.device("cpu")) == "eager"
    assert resolve_attention("sdpa", torch.device("cpu")) == "sdpa"
    assert resolve_attention("eager", torch.device("cuda", 0)) == "eager"


def test_every_distillation_loss_agrees_between_eager_and_sdpa(tiny_teacher_dir, tokenizer):
    """Embedding, hidden, attention (pre-softmax scores, TinyBERT; MiniLM's attention and value relations) terms
    and the soft cross-entropy, on a padded batch: the kernel changes none of them beyond float rounding."""
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, attn_implementation="eager").eval()
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                                        intermediate_size=32)).eval()
    student.set_attn_implementation("eager")
    weights = {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_scores_mse": 1.0, "attention_kl": 1.0,
               "value_relation_kl": 1.0, "soft_ce": 1.0}
    objective = DistillObjective(student, teacher, build_layer_map(weights, "uniform", 2, 4), temperature=2.0)
    objective.trainable.eval()
    batch = dict(tokenizer(["a wonderful film about the sea", "dull", "not bad at all"], padding=True,
                           return_tensors="pt"))
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # padding is in play
    use_attention(objective.teacher, "eager")
    with torch.no_grad():
        eager_loss, eager_terms = objective(batch)
        assert _kernel(student) == "eager" and _kernel(teacher) == "eager"
        assert use_attention(objective.trainable, "sdpa") == "sdpa"
        use_attention(objective.teacher, "sdpa")
        assert _kernel(student) == "sdpa" and _kernel(teacher) == "sdpa"
        sdpa_loss, sdpa_terms = objective(batch)
    assert set(eager_terms) == set(weights)
    for name in weights:
        assert eager_terms[name] > 0
        assert sdpa_terms[name] == pytest.approx(eager_terms[name], rel=1e-4, abs=1e-6), name
    assert float(sdpa_loss) == pytest.approx(float(eager_loss), rel=1e-4)


def _train(model, data, tokenizer, tmp_path, **cfg):
    loader = make_loader(data, tokenizer, 4, shuffle=True)
    config = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, save_every=0, log_every=1, mixed_precision="no", **cfg)
    return train(FineTuneObjective(model), loader, config, tmp_path, seed=3, desc="t",
                 save_model=lambda m, folder: m.save_pretrained(folder))


def _data(tokenizer):
    from datasets import Dataset

    rows = Dataset.from_dict({"text": ["a wonderful film", "dull and long", "moving", "not good"] * 2,
                              "label": [1, 0, 1, 0] * 2})
    return tokenize(rows, tokenizer, 32)


def test_the_trainer_runs_the_configured_kernel(tiny_teacher_dir, tokenizer, tmp_path, monkeypatch):
    # not only the recorded setting: the fused kernel is called (or not) while training
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    data = _data(tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, attn_implementation="eager")
    _train(model, data, tokenizer, tmp_path / "auto")
    assert _kernel(model) == ("sdpa" if torch.cuda.is_available() else "eager")  # auto, by the device
    assert bool(calls) == torch.cuda.is_available()
    calls.clear()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, attn_implementation="eager")
    _train(model, data, tokenizer, tmp_path / "sdpa", attention="sdpa")
    assert _kernel(model) == "sdpa" and calls
    calls.clear()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, attn_implementation="sdpa")
    _train(model, data, tokenizer, tmp_path / "eager", attention="eager")
    assert _kernel(model) == "eager" and not calls


def test_runs_and_checkpoints_from_before_the_setting_are_still_reused_and_resumed(tmp_path):
    """At its default the key is left out of stage fingerprints and of a checkpoint's resume settings, so folders
    written before it existed still match; a non-default value is part of both."""
    default, sdpa = TrainConfig(), TrainConfig(attention="sdpa")
    assert "attention" not in stage_value(default) and stage_value(sdpa)["attention"] == "sdpa"
    old = {"step": 0, "processes": 1, "settings": _resume_settings(default)}  # as written before the key existed
    assert "attention" not in old["settings"]
    _check_resumable(old, {"processes": 1, "settings": _resume_settings(default)}, tmp_path)
    with pytest.raises(RuntimeError, match="attention"):
        _check_resumable(old, {"processes": 1, "settings": _resume_settings(sdpa)}, tmp_path)


def test_a_bad_value_is_refused_with_the_key_named():
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match="attention"):
        replace(TrainConfig(), attention="flash").validate("task_distill.prediction")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_trains_with_sdpa_on_cuda(tiny_teacher_dir, tokenizer, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, attn_implementation="eager")
    _train(model, _data(tokenizer), tokenizer, tmp_path)
    assert _kernel(model) == "sdpa"
