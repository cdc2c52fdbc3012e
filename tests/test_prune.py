import pytest
import torch
from transformers import AutoModelForSequenceClassification

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.batching import make_loader, tokenize
from distill.data import load_local
from distill.flops import encoder_flops
from distill.prune import prune_model
from students.modeling import PrunedBertConfig, PrunedBertForSequenceClassification


def _example(tokenizer):
    enc = tokenizer(["a wonderful film", "a dreadful film that never ends"], padding=True, return_tensors="pt")
    return dict(enc)


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_prune_half_heads_and_ffn_keeps_hidden_and_reloads_exactly(tmp_path, tiny_teacher_dir, tokenizer,
                                                                   task_folder, importance):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    loader = make_loader(tokenize(load_local(task_folder).train, tokenizer, 32), tokenizer, 8, shuffle=False)
    pruned, report = prune_model(model, _example(tokenizer), 0.5, importance=importance, loader=loader)
    assert report.heads_before == [4] * 4 and report.heads_after == [2] * 4
    assert report.ffn_before == [64] * 4 and report.ffn_after == [32] * 4
    assert pruned.config.hidden_size == 32
    assert report.flops_after == encoder_flops(pruned, 128)
    assert report.flops_after / report.flops_before == pytest.approx(0.5, abs=0.01)
    pruned.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(again, PrunedBertForSequenceClassification)
    assert again.config.layer_heads == [2] * 4 and again.config.layer_ffn == [32] * 4
    batch = _example(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, pruned(**batch).logits, rtol=0, atol=0)


def test_pruning_removes_the_least_important_heads(tiny_teacher_dir, tokenizer):
    """Magnitude importance: zero two heads' weights in layer 0; exactly those must go."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    attn = model.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        for proj in (attn.query, attn.key, attn.value):
            proj.weight[8:16] *= 1e-3  # head 1 (head size 8)
            proj.weight[24:32] *= 1e-3  # head 3
        kept_q = torch.cat([attn.query.weight[0:8], attn.query.weight[16:24]]).clone()
    pruned, _ = prune_model(model, _example(tokenizer), 0.5, importance="magnitude")
    torch.testing.assert_close(pruned.bert.encoder.layer[0].attention.self.query.weight, kept_q)


def test_per_layer_ratios_and_config_checks(tiny_teacher_dir, tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    pruned, report = prune_model(model, _example(tokenizer), 0.5, importance="magnitude",
                                 layer_ratios=[0.25, 0.5, 0.75, 0.5])
    assert report.heads_after == [3, 2, 1, 2]
    assert report.ffn_after == [48, 32, 16, 32]
    with pytest.raises(ValueError, match="one entry per layer"):
        PrunedBertConfig(num_hidden_layers=2, layer_heads=[1])
