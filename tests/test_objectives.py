import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.engine.layer_map import build_layer_map
from distill.engine.losses import soft_ce, token_mse
from distill.engine.objectives import DistillObjective, with_teacher_logits
from distill.engine.placement import placement
from tests.conftest import tiny_config, tiny_overrides


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
    # full precision on this machine's placement device (the GPU on a GPU machine): the tiny teacher's rows
    # differ by ~1e-3, below what bf16 resolves, so only fp32 shows a row swapped; tests/test_cuda.py checks
    # the bf16 logits the GPU default gives
    cached = with_teacher_logits(teacher, data, loader_factory, placement("no"))
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


def test_stage_2a_starts_from_the_projection_the_general_stage_trained(tmp_path, monkeypatch, tiny_teacher_dir,
                                                                        task_folder):
    """TinyBERT carries W_h from general into task distillation; the projections are saved next to the
    stage's model folder, never inside the student's weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from distill.config import load_config
    from distill.runner.plan import build, stage_run
    from distill.stages import general, task
    from distill.stages.common import projections_file
    from distill.stages.context import RunContext

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the film number {i} was shown in the old cinema." for i in range(60)))
    overrides = tiny_overrides(tmp_path, tiny_teacher_dir, task_folder, f"general.corpus={corpus}",
                               "general.max_len=32", "general.losses={embedding_mse: 1.0, hidden_mse: 1.0}",
                               "task_distill.intermediate_losses={embedding_mse: 1.0, hidden_mse: 1.0}",
                               "teacher.gate=warn")  # a 2-step teacher learns nothing; this test is about projections
    for section in ("teacher.finetune", "general.train", "task_distill.intermediate"):
        overrides += [f"{section}.max_steps=2", f"{section}.batch_size=8", f"{section}.save_every=0",
                      f"{section}.lr=1e-2", f"{section}.warmup_ratio=0.0"]
    ctx = RunContext(load_config(None, overrides))
    started = {}
    real_train = general.train

    def recording_train(objective, *args, **kwargs):
        started[kwargs["desc"]] = {k: v.detach().clone() for k, v in objective.projections.state_dict().items()}
        return real_train(objective, *args, **kwargs)

    monkeypatch.setattr(general, "train", recording_train)
    monkeypatch.setattr(task, "train", recording_train)
    build(ctx, "2a")  # runs the general stage first
    general = load_file(str(projections_file(stage_run(ctx, "general").dir)))
    assert set(general) == {"embedding.weight", "embedding.bias", "hidden.weight", "hidden.bias"}
    for key, trained in general.items():
        assert not torch.equal(trained, started["general"][key])  # general trained them
        torch.testing.assert_close(started["2a intermediate"][key], trained, rtol=0, atol=0)  # 2a starts there
    after_2a = load_file(str(projections_file(stage_run(ctx, "2a").dir)))
    assert not torch.equal(after_2a["hidden.weight"], general["hidden.weight"])
    for stage in ("student-general", "student-intermediate"):
        with safe_open(str(ctx.run_dir / stage / "model" / "model.safetensors"), "pt") as f:
            assert not any("projection" in k or k.startswith(("embedding.", "hidden.")) for k in f.keys())


def test_projections_load_only_where_shapes_fit(tmp_path, tiny_teacher_dir):
    from distill.engine.objectives import save_projections

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    objective = DistillObjective(_student(), teacher, build_layer_map({"embedding_mse": 1.0, "hidden_mse": 1.0},
                                                                      "uniform", 2, 4))
    other = torch.nn.ModuleDict({"hidden": torch.nn.Linear(16, 32), "embedding": torch.nn.Linear(8, 32)})
    save_projections(other, tmp_path / "p.safetensors")
    before = objective.projections["embedding"].weight.detach().clone()
    assert objective.load_projections(tmp_path / "p.safetensors") == ["hidden"]
    torch.testing.assert_close(objective.projections["hidden"].weight, other["hidden"].weight)
    torch.testing.assert_close(objective.projections["embedding"].weight, before)  # 8-wide: did not fit
    assert objective.load_projections(tmp_path / "missing.safetensors") == []


def test_mlm_masks_do_not_depend_on_or_advance_the_global_rng(tokenizer):
    """The loader collates ahead of the step, so masks drawn from the global RNG would differ between a
    resumed run and an uninterrupted one (the trainer restores the RNG after the first fetch)."""
    from distill.data.masking import MLMCollator

    texts = ["the quick brown fox jumps over the lazy dog " * 3, "a completely different sentence about films " * 3]
    features = [{k: v for k, v in tokenizer(t).items()} for t in texts]
    collator = MLMCollator(tokenizer, 0.3, seed=7)
    torch.manual_seed(1)
    first = collator(features)
    after = torch.rand(3)
    torch.manual_seed(1)
    torch.rand(5)  # another global RNG state
    second = collator(features)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)  # the collator did not consume global random numbers
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["mlm_labels"], second["mlm_labels"])
    assert (first["mlm_labels"] != -100).any()
    other = collator(features[::-1])  # another batch: other masks
    assert not torch.equal(other["mlm_labels"], first["mlm_labels"].flip(0))
