import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.batching import make_loader, tokenize
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


def test_cached_teacher_logits_belong_to_their_own_rows(tiny_teacher_dir, tokenizer):
    """The teacher runs over length-sorted batches; each cached row must hold that example's own logits."""
    from datasets import Dataset

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    words = "a truly wonderful and moving film about an old town by the sea in winter".split()
    sizes = [3, 14, 1, 9, 6, 12, 2, 15, 5, 8, 11, 4]  # every length differs: sorting reorders the rows
    data = tokenize(Dataset.from_dict({"text": [" ".join(words[:n]) for n in sizes], "label": [0, 1] * 6}),
                    tokenizer, 32)
    assert len(set(data["length"])) == len(sizes)
    loader_factory = lambda d: make_loader(d, tokenizer, 4, shuffle=False)  # noqa: E731
    assert [i for b in loader_factory(data).batch_sampler for i in b] != list(range(len(sizes)))
    cached = with_teacher_logits(teacher, data, loader_factory)
    with torch.no_grad():
        for i, row in enumerate(cached):  # reference: one example at a time, no padding, no batching
            alone = teacher(input_ids=torch.tensor([row["input_ids"]]),
                            token_type_ids=torch.tensor([row["token_type_ids"]])).logits[0]
            torch.testing.assert_close(torch.tensor(row["teacher_logits"]), alone, atol=1e-5, rtol=1e-5)
    # and the loss from the cache equals the loss with the teacher run live, on a shuffled batch
    objective = DistillObjective(_student(), teacher, build_layer_map({"soft_ce": 1.0}, "uniform", 2, 4))
    assert objective.output_only
    objective.trainable.eval()
    batch = next(iter(make_loader(cached, tokenizer, 8, shuffle=True)))
    with_cache, _ = objective(batch)
    direct, _ = objective({k: v for k, v in batch.items() if k != "teacher_logits"})
    torch.testing.assert_close(with_cache, direct, atol=1e-5, rtol=1e-5)
