"""The speed work on the distillation engine must not change what it computes.

The objective (packed token-wise linears, fused teacher attention, one host sync, the einsum score loss)
is checked against a straightforward reference written here: plain Hugging Face forwards with eager
attention, pre-softmax scores from the query/key projections, and each loss as a loop over examples.
"""
import copy
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective
from distill.engine.unpad import PackedRows
from tests.conftest import tiny_config

WEIGHTS = {"embedding_mse": 1.0, "hidden_mse": 2.0, "attention_scores_mse": 0.5, "soft_ce": 1.0, "hard_ce": 0.3}
TEXTS = ["a wonderful, moving and very funny film about two brothers who never speak", "dull",
         "not good", "the best thing this year, by far, and I mean it"]


def _models(tiny_teacher_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    teacher.set_attn_implementation("eager")
    torch.manual_seed(3)
    student = BertForSequenceClassification(tiny_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                                        intermediate_size=48))
    return teacher, student


def _batch(tokenizer):
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 0, 1])
    assert batch["attention_mask"].float().mean() < 0.6  # mostly padding: the packed path is taken
    return batch


def _scores(layer, hidden, heads):
    """Pre-softmax scores of one BERT layer from its input hidden states: (b, H, s, s)."""
    attn = layer.attention.self
    b, s, _ = hidden.shape
    q = attn.query(hidden).view(b, s, heads, -1).transpose(1, 2)
    k = attn.key(hidden).view(b, s, heads, -1).transpose(1, 2)
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def _reference(student, teacher, projection, batch):
    """Each term as the papers define it, summed example by example over real tokens only."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    s = student(**inputs, output_hidden_states=True)
    with torch.no_grad():
        t = teacher(**inputs, output_hidden_states=True)
    lengths = batch["attention_mask"].sum(1).tolist()

    def token_mse(s_h, t_h):
        num = sum(((s_h[i, :n] - t_h[i, :n]) ** 2).sum() for i, n in enumerate(lengths))
        return num / (sum(lengths) * s_h.shape[-1])

    def scores_mse(s_sc, t_sc):
        num = sum(((s_sc[i, :, :n, :n] - t_sc[i, :, :n, :n]) ** 2).sum() for i, n in enumerate(lengths))
        return num / sum(s_sc.shape[1] * n * n for n in lengths)

    terms = {"embedding_mse": token_mse(projection["embedding"](s.hidden_states[0]), t.hidden_states[0])}
    terms["hidden_mse"] = sum(token_mse(projection["hidden"](s.hidden_states[m]), t.hidden_states[2 * m])
                              for m in (1, 2))
    s_layers, t_layers = student.bert.encoder.layer, teacher.bert.encoder.layer
    terms["attention_scores_mse"] = sum(
        scores_mse(_scores(s_layers[m - 1], s.hidden_states[m - 1], 4),
                   _scores(t_layers[2 * m - 1], t.hidden_states[2 * m - 1], 4)) for m in (1, 2))
    p_teacher = torch.softmax(t.logits, -1)
    terms["soft_ce"] = -(p_teacher * torch.log_softmax(s.logits, -1)).sum(-1).mean()
    terms["hard_ce"] = -torch.log_softmax(s.logits, -1)[torch.arange(4), batch["labels"]].mean()
    return sum(WEIGHTS[k] * v for k, v in terms.items()), {k: float(v.detach()) for k, v in terms.items()}


def test_objective_loss_and_gradients_match_a_straightforward_reference(tiny_teacher_dir, tokenizer):
    teacher, student = _models(tiny_teacher_dir)
    reference_teacher, reference_student = copy.deepcopy(teacher), copy.deepcopy(student)
    reference_student.set_attn_implementation("eager")
    reference_student.eval(), reference_teacher.eval()
    objective = DistillObjective(student, teacher, build_layer_map(WEIGHTS, "uniform", 2, 4), temperature=1.0)
    assert objective.student_tap.packer.enabled and objective.teacher_tap.packer.enabled
    objective.trainable.eval()  # no dropout: both sides are deterministic
    batch = _batch(tokenizer)

    loss, terms = objective(batch)
    loss.backward()
    ref_loss, ref_terms = _reference(reference_student, reference_teacher, objective.projections, batch)
    ref_loss.backward()

    assert set(terms) == set(ref_terms)
    for name, value in ref_terms.items():
        assert terms[name] == pytest.approx(value, abs=1e-5, rel=1e-5), name
    assert float(loss) == pytest.approx(float(ref_loss), abs=1e-5, rel=1e-5)
    for (name, p), ref in zip(student.named_parameters(), reference_student.parameters()):
        torch.testing.assert_close(p.grad, ref.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_rows_give_the_padded_values_in_train_mode_with_dropout(tiny_teacher_dir, tokenizer):
    """Same seed, same dropout draws: packing changes no value a loss reads (and leaves nothing on exit)."""
    teacher, student = _models(tiny_teacher_dir)
    batch = _batch(tokenizer)
    results = []
    for unpad in (False, True):
        torch.manual_seed(5)  # the student->teacher projections start equal
        objective = DistillObjective(copy.deepcopy(student), teacher, build_layer_map(WEIGHTS, "uniform", 2, 4),
                                     unpad=unpad)
        objective.trainable.train()
        torch.manual_seed(7)
        loss, terms = objective(batch)
        results.append((float(loss), terms))
        objective.student_tap.remove()
        objective.teacher_tap.remove()
    (loss_plain, terms_plain), (loss_packed, terms_packed) = results
    assert loss_packed == pytest.approx(loss_plain, abs=1e-5, rel=1e-5)
    for name in terms_plain:
        assert terms_packed[name] == pytest.approx(terms_plain[name], abs=1e-5, rel=1e-5), name


def test_packed_rows_are_inert_outside_a_step_and_skip_batches_without_padding(tiny_teacher_dir, tokenizer):
    teacher, _ = _models(tiny_teacher_dir)
    teacher.eval()
    packer = PackedRows(teacher)
    assert len(packer.layers) == 4
    batch = _batch(tokenizer)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        plain = teacher(**inputs).logits  # hooks registered but not active: the plain model
        with packer.active(inputs["attention_mask"]) as packed:
            assert packed
            packed_logits = teacher(**inputs).logits
        with packer.active(torch.ones_like(inputs["attention_mask"])) as packed_full:
            assert not packed_full  # no padding: nothing to skip
    torch.testing.assert_close(packed_logits, plain, atol=1e-5, rtol=1e-5)
    packer.remove()
    assert not teacher.bert.encoder.layer[0].attention.self.query._forward_hooks


def test_objective_runs_the_teacher_with_fused_attention(tiny_teacher_dir):
    teacher, student = _models(tiny_teacher_dir)
    DistillObjective(student, teacher, build_layer_map({"attention_scores_mse": 1.0}, "uniform", 2, 4))
    assert teacher.config._attn_implementation == "sdpa"
