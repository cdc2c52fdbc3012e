"""Teacher logits computed by one stage are reused by the next stage on the same data (2b -> recovery)."""
import os
from types import SimpleNamespace

from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from distill import logit_cache
from distill.batching import make_loader, tokenize
from distill.distillation import cache_teacher_logits


def _train_set(tokenizer):
    ds = Dataset.from_dict({"text": ["a good film", "a bad film", "fine", "the worst thing ever made"],
                            "label": [1, 0, 1, 0]})
    return tokenize(ds, tokenizer, 16)


def _ctx(tmp_path, tokenizer):
    return SimpleNamespace(run_dir=tmp_path, loader=lambda split, bs, dataset=None: make_loader(dataset, tokenizer, bs,
                                                                                               shuffle=False))


def test_second_stage_on_the_same_data_reads_the_first_stages_logits(tmp_path, tiny_teacher_dir, tokenizer, capsys):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    objective = SimpleNamespace(output_only=True, kind=None)
    ctx = _ctx(tmp_path, tokenizer)
    first = cache_teacher_logits(ctx, objective, teacher, _train_set(tokenizer), "no")  # e.g. 2b
    assert "computed once" in capsys.readouterr().out
    second = cache_teacher_logits(ctx, objective, teacher, _train_set(tokenizer), "no")  # e.g. recovery
    assert "reused from" in capsys.readouterr().out
    assert second["teacher_logits"] == first["teacher_logits"] and len(second) == 4
    assert second.column_names == first.column_names


def test_the_key_changes_with_the_teacher_weights_the_data_and_the_precision(tmp_path, tiny_teacher_dir, tokenizer):
    data = _train_set(tokenizer)
    key = logit_cache.cache_key(tiny_teacher_dir, data, "cpu", None, "seq")
    assert key == logit_cache.cache_key(tiny_teacher_dir, _train_set(tokenizer), "cpu", None, "seq")
    assert key != logit_cache.cache_key(tiny_teacher_dir, data.select(range(3)), "cpu", None, "seq")
    assert key != logit_cache.cache_key(tiny_teacher_dir, data, "cpu", "torch.bfloat16", "seq")
    weights = next(p for p in tiny_teacher_dir.iterdir() if p.suffix == ".safetensors")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a re-trained teacher
    try:
        assert key != logit_cache.cache_key(tiny_teacher_dir, data, "cpu", None, "seq")
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert logit_cache.cache_key(tmp_path / "missing", data, "cpu", None, "seq") is None


def test_without_a_key_nothing_is_stored(tmp_path, tokenizer):
    calls = []

    def compute(ds):
        calls.append(1)
        return ds.add_column("teacher_logits", [[0.0, 1.0]] * len(ds))

    data = _train_set(tokenizer)
    logit_cache.reuse_or_compute(tmp_path, None, data, compute)
    logit_cache.reuse_or_compute(tmp_path, None, data, compute)
    assert len(calls) == 2 and not (tmp_path / logit_cache.CACHE_DIR).exists()
