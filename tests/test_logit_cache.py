"""Teacher logits computed by one stage are reused by the next stage on the same data (2b -> recovery)."""
import os
from types import SimpleNamespace

import pytest
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from distill.engine import logit_cache
from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.stages.common import cache_teacher_logits


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


def test_other_processes_read_the_main_ones_entry_after_the_barrier_and_never_run_the_teacher(tmp_path, tokenizer,
                                                                                             monkeypatch):
    """A rank other than the main one meets the barrier while the main one runs the teacher and writes the
    entry (simulated inside the barrier), then reads the entry: it never runs the teacher itself."""
    from distill.base import ranks

    data = _train_set(tokenizer)
    folder = logit_cache.entry_folder(tmp_path, "k")

    def main_process_writes_the_entry():
        entry = data.add_column("teacher_logits", [[0.5, -0.5]] * 4).select_columns(["teacher_logits"])
        entry.save_to_disk(str(folder))

    monkeypatch.setattr(ranks, "is_main_process", lambda: False)
    monkeypatch.setattr(ranks, "wait_for_everyone", main_process_writes_the_entry)
    out = logit_cache.reuse_or_compute(tmp_path, "k", data, compute=lambda ds: pytest.fail("only the main one runs it"))
    assert out["teacher_logits"] == [[0.5, -0.5]] * 4 and out["input_ids"] == data["input_ids"]


def test_the_main_process_meets_the_barrier_once_its_entry_is_in_place(tmp_path, tokenizer, monkeypatch):
    """The other ranks read right after the barrier: the entry must be renamed into place before it."""
    from distill.base import ranks

    data, at_barrier = _train_set(tokenizer), []
    folder = logit_cache.entry_folder(tmp_path, "k")
    monkeypatch.setattr(ranks, "wait_for_everyone",
                        lambda: at_barrier.append(logit_cache._load_entry(folder, data) is not None))
    logit_cache.reuse_or_compute(tmp_path, "k", data, _stored_logits)
    logit_cache.reuse_or_compute(tmp_path, "k", data, lambda ds: pytest.fail("the entry is there"))
    assert at_barrier == [True, True]


def test_a_failed_teacher_pass_on_the_main_process_leaves_no_cache_and_no_rank_reads_one(tmp_path, tokenizer,
                                                                                        monkeypatch):
    from distill.base import ranks

    def compute(ds):
        raise MemoryError("teacher pass died")

    with pytest.raises(MemoryError):
        logit_cache.reuse_or_compute(tmp_path, "k", _train_set(tokenizer), compute)
    assert not list(tmp_path.glob(f"{logit_cache.CACHE_DIR}/*"))  # no entry, no scratch folder
    monkeypatch.setattr(ranks, "is_main_process", lambda: False)
    with pytest.raises(RuntimeError, match="did not write the teacher logits"):
        logit_cache.reuse_or_compute(tmp_path, "k", _train_set(tokenizer), compute)  # nothing being built


def _stored_logits(ds):
    return ds.add_column("teacher_logits", [[float(i), -float(i)] for i in range(len(ds))])


@pytest.mark.parametrize("damage", ["cut short", "missing", "other rows"])
def test_a_damaged_entry_is_computed_again_not_read(tmp_path, tokenizer, capsys, damage):
    """A file cut short (power loss, a copy interrupted) used to be trusted and fail in Arrow on every rerun."""
    data, calls = _train_set(tokenizer), []

    def compute(ds):
        calls.append(1)
        return _stored_logits(ds)

    logit_cache.reuse_or_compute(tmp_path, "k", data, compute)
    folder = logit_cache.entry_folder(tmp_path, "k")
    arrow = next(folder.glob("*.arrow"))
    if damage == "cut short":
        arrow.write_bytes(arrow.read_bytes()[:100])
    elif damage == "missing":
        arrow.unlink()
    else:
        _stored_logits(data.select(range(3))).select_columns(["teacher_logits"]).save_to_disk(str(folder))
    out = logit_cache.reuse_or_compute(tmp_path, "k", data, compute)
    assert "damaged" in capsys.readouterr().out and len(calls) == 2
    assert out["teacher_logits"] == _stored_logits(data)["teacher_logits"]
    logit_cache.reuse_or_compute(tmp_path, "k", data, compute)  # the rewritten entry is read
    assert len(calls) == 2 and "reused from" in capsys.readouterr().out


def test_a_full_disk_leaves_the_logits_uncached_and_the_stage_going(tmp_path, tokenizer, capsys, monkeypatch):
    import errno

    from datasets import Dataset as ArrowDataset

    def no_space(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ArrowDataset, "save_to_disk", no_space)
    data = _train_set(tokenizer)
    out = logit_cache.reuse_or_compute(tmp_path, "k", data, _stored_logits)
    assert out["teacher_logits"] == _stored_logits(data)["teacher_logits"]
    assert "could not store the teacher logits" in capsys.readouterr().out
    assert list((tmp_path / logit_cache.CACHE_DIR).iterdir()) == []  # no entry, no scratch left


def _tiny_run(tmp_path, tiny_teacher_dir, task_folder, *extra):
    from distill.config import load_config
    from distill.stages.context import RunContext
    from tests.conftest import tiny_overrides

    return RunContext(load_config(None, tiny_overrides(
        tmp_path, tiny_teacher_dir, task_folder, "teacher.already_finetuned=true", "teacher.gate=warn",
        "general.enabled=false", "task_distill.intermediate.batch_size=8", "task_distill.prediction.batch_size=8",
        "task_distill.intermediate.save_every=0", "task_distill.prediction.save_every=0",
        "task_distill.prediction.eval_every=0", *extra)))


@pytest.mark.parametrize("setting", ["task_distill.intermediate.max_steps=2",  # output losses only: logits cached
                                     "task_distill.prediction_losses={hidden_mse: 1.0, soft_ce: 1.0}"])
def test_2b_runs_its_own_teacher_pass_or_none_when_it_reads_hidden_states(tmp_path, tiny_teacher_dir, task_folder,
                                                                           capsys, setting):
    from distill.runner.plan import build

    ctx = _tiny_run(tmp_path, tiny_teacher_dir, task_folder, setting)
    build(ctx, "2b")
    out = capsys.readouterr().out
    if "max_steps" in setting:
        assert "computed once" in out  # 2b's own pass
    else:  # 2b reads hidden states: the teacher runs every step, nothing is cached
        assert not list((ctx.run_dir / "cache").glob("teacher-logits-*"))
