import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.batching import make_loader, tokenize
from distill.data import load_local
from distill.layer_map import build_layer_map
from distill.losses import soft_ce, token_mse
from distill.objectives import DistillObjective, with_teacher_logits
from tests.conftest import tiny_config


def _student():
    torch.manual_seed(1)
    return BertForSequenceClassification(tiny_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                                     intermediate_size=32)).eval()


def test_distill_objective_sums_weighted_terms_and_projects_widths(tiny_teacher_dir, tokenizer, task_folder):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    student = _student()
    matches = build_layer_map({"hidden_mse": 2.0, "soft_ce": 0.5}, "uniform", 2, 4)
    objective = DistillObjective(student, teacher, matches, temperature=2.0)
    assert set(objective.projections) == {"hidden"}  # 16 -> 32, shared by the mapped layers
    objective.trainable.eval()
    enc = dict(tokenizer(["a wonderful film", "dull"], padding=True, return_tensors="pt"))
    loss, terms = objective(enc)
    with torch.no_grad():
        s = student(**enc, output_hidden_states=True)
        t = teacher(**enc, output_hidden_states=True)
        proj = objective.projections["hidden"]
        hidden = sum(float(token_mse(proj(s.hidden_states[m]), t.hidden_states[2 * m], enc["attention_mask"]))
                     for m in (1, 2))
        soft = float(soft_ce(s.logits, t.logits, temperature=2.0))
    assert abs(terms["hidden_mse"] - hidden) < 1e-5
    assert abs(terms["soft_ce"] - soft) < 1e-5
    assert abs(float(loss) - (2.0 * hidden + 0.5 * soft)) < 1e-4


def test_cached_teacher_logits_give_the_same_loss(tiny_teacher_dir, tokenizer, task_folder):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    student = _student()
    data = tokenize(load_local(task_folder).train, tokenizer, 32)
    cached = with_teacher_logits(teacher, data, lambda d: make_loader(d, tokenizer, 16, shuffle=False))
    objective = DistillObjective(student, teacher, build_layer_map({"soft_ce": 1.0}, "uniform", 2, 4))
    assert objective.output_only
    objective.trainable.eval()
    batch = next(iter(make_loader(cached, tokenizer, 8, shuffle=False)))
    with_cache, _ = objective(batch)
    without = {k: v for k, v in batch.items() if k != "teacher_logits"}
    direct, _ = objective(without)
    torch.testing.assert_close(with_cache, direct, atol=1e-5, rtol=1e-5)
