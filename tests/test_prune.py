import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.data.task_data import load_local
from distill.passes.prune import prune_model
from students.modeling import PrunedBertConfig, PrunedBertForSequenceClassification

HEAD = 8  # tiny_config: hidden 32, 4 heads of 8, FFN 64, 4 layers


def _example(tokenizer):
    enc = tokenizer(["a wonderful film", "a dreadful film that never ends"], padding=True, return_tensors="pt")
    return dict(enc)


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor, block: int) -> list[int]:
    """Which ``block``-row groups of ``original`` survive in ``pruned`` (matched by their weights, in order)."""
    kept = []
    for j in range(pruned.shape[0] // block):
        rows = pruned[j * block:(j + 1) * block]
        match = [i for i in range(original.shape[0] // block)
                 if torch.equal(original[i * block:(i + 1) * block], rows)]
        assert len(match) == 1, f"pruned rows {j} match no single original block"
        kept.append(match[0])
    return kept


def _counted_flops(model, seq: int) -> int:
    """FLOPs of the encoder's matmuls as PyTorch counts them while the model runs (independent of distill.passes.flops)."""
    model.set_attn_implementation("eager")
    ids = torch.randint(1000, 2000, (1, seq))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.bert.encoder(model.bert.embeddings(input_ids=ids))
    return counter.get_total_flops()


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_pruned_model_equals_the_unpruned_model_with_the_removed_heads_and_neurons_masked(
        tmp_path, tiny_teacher_dir, tokenizer, task_folder, importance):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    original = copy.deepcopy(model)
    loader = make_loader(tokenize(load_local(task_folder).train, tokenizer, 32), tokenizer, 8, shuffle=False)
    pruned, report = prune_model(model, _example(tokenizer), 0.5, importance=importance, loader=loader,
                                 layer_ratios=[0.5, 0.25, 0.75, 0.5])
    assert report.heads_after == [2, 3, 1, 2] and report.ffn_after == [32, 48, 16, 32]
    assert pruned.config.hidden_size == 32
    # the reference: the unpruned model, each removed head's and FFN neuron's contribution zeroed
    masked = copy.deepcopy(original)
    for old, new, heads, ffn in zip(masked.bert.encoder.layer, pruned.bert.encoder.layer, report.heads_after,
                                    report.ffn_after):
        kept_heads = _kept_rows(old.attention.self.query.weight, new.attention.self.query.weight, HEAD)
        kept_ffn = _kept_rows(old.intermediate.dense.weight, new.intermediate.dense.weight, 1)
        assert len(kept_heads) == heads and len(kept_ffn) == ffn
        with torch.no_grad():
            for h in set(range(4)) - set(kept_heads):
                old.attention.output.dense.weight[:, h * HEAD:(h + 1) * HEAD] = 0
            old.output.dense.weight[:, sorted(set(range(64)) - set(kept_ffn))] = 0
    masked.set_attn_implementation("eager")
    batch = _example(tokenizer)  # two lengths: padding is masked the same way in both
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batch).logits, masked(**batch).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(original(**batch).logits, masked(**batch).logits, atol=1e-5)  # masking mattered
    # reload: a plain folder (safetensors) gives the same model back
    pruned.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(again, PrunedBertForSequenceClassification)
    assert again.config.layer_heads == [2, 3, 1, 2] and again.config.layer_ffn == [32, 48, 16, 32]
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, pruned(**batch).logits, rtol=0, atol=0)
    # FLOPs: the report against PyTorch's own count of the matmuls each model runs
    assert report.flops_before == _counted_flops(original, 128)
    assert report.flops_after == _counted_flops(pruned, 128)


def test_pruning_removes_exactly_the_planted_unimportant_heads_and_neurons(tiny_teacher_dir, tokenizer):
    """Magnitude importance: shrink two heads and half the FFN neurons in every layer (different ones per
    layer); exactly those must go, everywhere."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    generator = torch.Generator().manual_seed(0)
    planted_heads, planted_ffn = [], []
    for layer in model.bert.encoder.layer:
        weak_heads = sorted(torch.randperm(4, generator=generator)[:2].tolist())
        weak_ffn = sorted(torch.randperm(64, generator=generator)[:32].tolist())
        attn = layer.attention.self
        with torch.no_grad():
            for h in weak_heads:
                for proj in (attn.query, attn.key, attn.value):
                    proj.weight[h * HEAD:(h + 1) * HEAD] *= 1e-3
                layer.attention.output.dense.weight[:, h * HEAD:(h + 1) * HEAD] *= 1e-3
            layer.intermediate.dense.weight[weak_ffn] *= 1e-3
            layer.output.dense.weight[:, weak_ffn] *= 1e-3
        planted_heads.append(weak_heads)
        planted_ffn.append(weak_ffn)
    original = copy.deepcopy(model)
    pruned, _ = prune_model(model, _example(tokenizer), 0.5, importance="magnitude")
    for i, (old, new) in enumerate(zip(original.bert.encoder.layer, pruned.bert.encoder.layer)):
        for proj in ("query", "key", "value"):
            kept = _kept_rows(getattr(old.attention.self, proj).weight, getattr(new.attention.self, proj).weight, HEAD)
            assert kept == sorted(set(range(4)) - set(planted_heads[i])), (i, proj)
        kept_ffn = _kept_rows(old.intermediate.dense.weight, new.intermediate.dense.weight, 1)
        assert kept_ffn == sorted(set(range(64)) - set(planted_ffn[i])), i


def test_per_layer_ratios_and_config_checks(tiny_teacher_dir, tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    pruned, report = prune_model(model, _example(tokenizer), 0.5, importance="magnitude",
                                 layer_ratios=[0.25, 0.5, 0.75, 0.5])
    assert report.heads_after == [3, 2, 1, 2]
    assert report.ffn_after == [48, 32, 16, 32]
    with pytest.raises(ValueError, match="one entry per layer"):
        PrunedBertConfig(num_hidden_layers=2, layer_heads=[1])
