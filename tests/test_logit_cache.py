"""Teacher logits computed by one stage are reused by the next stage on the same data (2b -> recovery)."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from distill.engine import logit_cache
from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.stages.distillation import cache_teacher_logits
from distill.engine.objectives import with_teacher_logits


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


def test_other_processes_poll_for_the_main_ones_logits_instead_of_waiting_at_a_barrier(tmp_path, tokenizer,
                                                                                       monkeypatch):
    """A rank other than the main one, while the main one runs the teacher (simulated by a thread): it
    meets one barrier (before the work), then polls the file system, so a teacher pass longer than the
    process group's timeout cannot kill the run; it never runs the teacher itself."""
    import threading
    import time

    from distill.base import ranks

    barriers = []
    monkeypatch.setattr(ranks, "is_main_process", lambda: False)
    monkeypatch.setattr(ranks, "wait_for_everyone", lambda: barriers.append(time.perf_counter()))
    data = _train_set(tokenizer)
    folder = tmp_path / logit_cache.CACHE_DIR / "teacher-logits-k"
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True)  # the main process is at work

    def main_process_finishes():
        time.sleep(0.3)
        data.add_column("teacher_logits", [[0.5, -0.5]] * 4).select_columns(["teacher_logits"]).save_to_disk(str(tmp))
        tmp.rename(folder)

    thread = threading.Thread(target=main_process_finishes)
    start = time.perf_counter()
    thread.start()
    out = logit_cache.reuse_or_compute(tmp_path, "k", data, compute=lambda ds: pytest.fail("only the main one runs it"))
    thread.join()
    assert time.perf_counter() - start >= 0.3 and out["teacher_logits"] == [[0.5, -0.5]] * 4
    assert len(barriers) == 1 and barriers[0] - start < 0.3  # no barrier while the main process computes


def test_a_failed_teacher_pass_on_the_main_process_frees_the_others_and_leaves_no_cache(tmp_path, tokenizer,
                                                                                        monkeypatch):
    from distill.base import ranks

    def compute(ds):
        raise MemoryError("teacher pass died")

    with pytest.raises(MemoryError):
        logit_cache.reuse_or_compute(tmp_path, "k", _train_set(tokenizer), compute)
    assert list((tmp_path / logit_cache.CACHE_DIR).iterdir()) == []  # scratch gone: waiting ranks stop
    monkeypatch.setattr(ranks, "is_main_process", lambda: False)
    monkeypatch.setattr(logit_cache, "WAIT_GRACE_S", 0.0)
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


def test_any_failure_keeping_2as_logits_leaves_2b_its_own_teacher_pass(tmp_path, tokenizer, capsys, monkeypatch):
    """Not only OSError: Arrow and memory errors while storing 2a's logits must not stop the command."""
    import pyarrow as pa

    from distill.stages.distillation import _keep_teacher_logits
    from distill.tasks import SEQUENCE_CLASSIFICATION

    data = _train_set(tokenizer)
    sink = logit_cache.LogitSink(len(data), SEQUENCE_CLASSIFICATION)
    sink.rows, sink.missing = [np.zeros(2, np.float32)] * len(data), 0
    objective = SimpleNamespace(logit_sink=sink)

    def broken(*a, **k):
        raise pa.lib.ArrowInvalid("Expected to read 344 metadata bytes")

    monkeypatch.setattr(logit_cache, "reuse_or_compute", broken)
    _keep_teacher_logits(SimpleNamespace(run_dir=tmp_path), objective, data, "k")
    assert "2b will run the teacher" in capsys.readouterr().out and objective.logit_sink is None


def _tiny_run(tmp_path, tiny_teacher_dir, task_folder, *extra):
    from distill.config import load_config
    from distill.stages.context import RunContext

    return RunContext(load_config(None, [
        f"output_dir={tmp_path / 'runs'}", f"teacher.name={tiny_teacher_dir}", "teacher.already_finetuned=true",
        "teacher.gate=warn", f"task.name={task_folder}", "task.max_len=32", "general.enabled=false",
        "student.preset=custom", "student.layers=2", "student.hidden=16", "student.heads=4", "student.ffn=32",
        "task_distill.intermediate.batch_size=8", "task_distill.prediction.batch_size=8",
        "task_distill.intermediate.save_every=0", "task_distill.prediction.save_every=0",
        "task_distill.prediction.eval_every=0", *extra]))


@pytest.mark.parametrize("epochs, feature_cache", [(1, False), (2, True)])
def test_2a_keeps_its_teacher_logits_and_2b_reads_them_instead_of_running_the_teacher(tmp_path, tiny_teacher_dir,
                                                                                      task_folder, capsys, epochs,
                                                                                      feature_cache):
    """The 2a teacher passes (training steps, or the feature cache's build) give 2b's logits: no separate
    teacher pass, and the same logits (to float rounding: other batches) as the pass 2b would have run."""
    from distill.stages import distillation
    from distill.stages.teacher import load_finetuned

    ctx = _tiny_run(tmp_path, tiny_teacher_dir, task_folder, f"task_distill.intermediate.epochs={epochs}")
    distillation.run_prediction(ctx)
    out = capsys.readouterr().out
    assert "kept from 2a's teacher passes" in out and "reused from" in out
    assert "training examples, computed once" not in out
    assert ("teacher features (" in out) == feature_cache
    folders = list((ctx.run_dir / "cache").glob("teacher-logits-*"))
    assert len(folders) == 1 and not folders[0].name.endswith(".tmp")
    from datasets import load_from_disk

    kept = np.array(load_from_disk(str(folders[0]))["teacher_logits"])
    train = ctx.tokenized["train"]
    teacher = load_finetuned(tiny_teacher_dir)
    fresh = with_teacher_logits(teacher, train, lambda d: ctx.loader("train", 128, dataset=d))
    assert kept.shape == (len(train), 2)
    np.testing.assert_allclose(kept, np.array(fresh["teacher_logits"]), atol=1e-5)


@pytest.mark.parametrize("feature_cache", [False, True])
def test_a_2a_killed_after_its_teacher_saw_every_example_still_leaves_2b_the_logits(tmp_path, tiny_teacher_dir,
                                                                                  task_folder, capsys, monkeypatch,
                                                                                  feature_cache):
    """The entry is stored the moment 2a's teacher has seen every example (end of the first epoch, or the
    feature cache's build), not when 2a ends: a 2a killed in its second epoch (or right after the build),
    then run again, leaves 2b no teacher pass to run (it used to lose the logits and run one)."""
    import math

    from distill.stages import distillation
    from distill.engine.objectives import DistillObjective

    ctx = _tiny_run(tmp_path, tiny_teacher_dir, task_folder, "task_distill.intermediate.epochs=2",
                    f"task_distill.feature_cache={str(feature_cache).lower()}")
    per_epoch = math.ceil(len(ctx.tokenized["train"]) / 8)
    crash_at = 1 if feature_cache else per_epoch + 1  # right after the build / first step of epoch 2
    calls, real_call = [], DistillObjective.__call__

    def dies(self, batch):
        calls.append(1)
        if len(calls) == crash_at:
            raise KeyboardInterrupt("killed")
        return real_call(self, batch)

    monkeypatch.setattr(DistillObjective, "__call__", dies)
    with pytest.raises(KeyboardInterrupt):
        distillation.run_intermediate(ctx)
    assert "kept from 2a's teacher passes" in capsys.readouterr().out
    monkeypatch.setattr(DistillObjective, "__call__", real_call)
    distillation.run_prediction(ctx)
    out = capsys.readouterr().out
    assert "reused from" in out and "training examples, computed once" not in out
    assert len(list((ctx.run_dir / "cache").glob("teacher-logits-*"))) == 1


@pytest.mark.parametrize("setting", ["task_distill.intermediate.max_steps=2",  # part of an epoch: some rows missing
                                     "task_distill.prediction_losses={hidden_mse: 1.0, soft_ce: 1.0}"])
def test_2b_runs_its_own_teacher_pass_when_2a_cannot_give_it_every_logit(tmp_path, tiny_teacher_dir, task_folder,
                                                                         capsys, setting):
    from distill.stages import distillation

    ctx = _tiny_run(tmp_path, tiny_teacher_dir, task_folder, setting)
    distillation.run_prediction(ctx)
    out = capsys.readouterr().out
    assert "kept from 2a's" not in out
    if "max_steps" in setting:
        assert "computed once" in out  # 2b's own pass
    else:  # 2b reads hidden states: the teacher runs every step, nothing is cached
        assert not list((ctx.run_dir / "cache").glob("teacher-logits-*"))


@pytest.mark.parametrize("kind_name", ["sequence_classification", "token_classification", "question_answering"])
def test_kept_rows_are_each_examples_own_unpadded_logits_for_every_task_kind(tokenizer, kind_name):
    """Rows gathered from shuffled, padded batches equal each example's logits run alone (per-token kinds:
    one row per real token, padding dropped), and a second pass copies nothing."""
    import torch
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

    from distill.tasks import KINDS
    from tests.conftest import tiny_config

    kind = KINDS[kind_name]
    model_class = {"sequence_classification": BertForSequenceClassification,
                   "token_classification": BertForTokenClassification,
                   "question_answering": BertForQuestionAnswering}[kind_name]
    torch.manual_seed(0)
    model = model_class(tiny_config(num_labels=2 if kind_name != "token_classification" else 5)).eval()
    texts = ["a good film", "the worst thing ever made by anyone", "fine", "two thumbs up for the whole cast",
             "meh", "not my cup of tea at all"]
    sink = logit_cache.LogitSink(len(texts), kind)
    for ids in ([3, 0, 5], [1, 4, 2]):
        enc = tokenizer([texts[i] for i in ids], padding=True, return_tensors="pt")
        with torch.no_grad():
            sink.add(torch.tensor(ids), kind.logits(model(**enc)), enc["attention_mask"])
    assert sink.complete
    for i, text in enumerate(texts):
        enc = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            alone = kind.logits(model(**enc))[0].numpy()
        assert sink.rows[i].shape == alone.shape  # (labels,) or (real tokens, labels)
        np.testing.assert_allclose(sink.rows[i], alone, atol=1e-5)
    before = [row.copy() for row in sink.rows]
    enc = tokenizer(texts[:2], padding=True, return_tensors="pt")
    sink.add(torch.tensor([0, 1]), torch.zeros_like(kind.logits(model(**enc))), enc["attention_mask"])
    assert all(np.array_equal(a, b) for a, b in zip(before, sink.rows))  # complete: later passes ignored


@pytest.mark.parametrize("guard", ["other precision in 2b", "several processes", "2a shorter than one pass"])
def test_2a_keeps_no_logits_when_2b_could_not_trust_them(tmp_path, tiny_teacher_dir, task_folder, capsys,
                                                         monkeypatch, guard):
    from distill.stages import distillation

    extra = ["task_distill.intermediate.epochs=1"]
    if guard == "other precision in 2b":
        extra.append("task_distill.prediction.mixed_precision=bf16")  # CPU autocast: another key than 2a's
    elif guard == "2a shorter than one pass":
        extra.append("task_distill.intermediate.max_steps=2")
    ctx = _tiny_run(tmp_path, tiny_teacher_dir, task_folder, *extra)
    if guard == "several processes":
        monkeypatch.setattr(distillation, "process_count", lambda: 2)
        teacher = distillation.load_finetuned(tiny_teacher_dir)
        objective = distillation.task_objective(ctx, ctx.cfg.task_distill.intermediate_losses,
                                                distillation.load_finetuned(tiny_teacher_dir), teacher)
        train_set = distillation._logit_sink_for_later_stages(ctx, objective, teacher, ctx.tokenized["train"])
        assert objective.logit_sink is None and "example_id" not in train_set.column_names
        return
    distillation.run_intermediate(ctx)
    assert "kept from 2a's" not in capsys.readouterr().out
    assert not list((ctx.run_dir / "cache").glob("teacher-logits-*"))


def test_the_main_process_shows_signs_of_life_while_it_computes_and_the_entry_holds_no_trace(tmp_path, tokenizer):
    from distill.base.ranks import HEARTBEAT

    seen = []

    def compute(ds):
        seen.append((logit_cache.entry_folder(tmp_path, "k").with_name("teacher-logits-k.tmp") / HEARTBEAT).is_file())
        return _stored_logits(ds)

    logit_cache.reuse_or_compute(tmp_path, "k", _train_set(tokenizer), compute)
    assert seen == [True]
    assert not (logit_cache.entry_folder(tmp_path, "k") / HEARTBEAT).exists()


def test_kept_rows_become_an_arrow_column_equal_to_the_rows_for_both_row_shapes():
    """2a's rows go to Arrow from the arrays (no Python float per value); values and nesting are kept:
    (labels,) rows for sentence tasks, (tokens, labels) rows of different lengths for NER and QA."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    rng = np.random.default_rng(0)
    for rows in ([rng.standard_normal(2).astype(np.float32) for _ in range(5)],
                 [rng.standard_normal((n, 3)).astype(np.float32) for n in (4, 1, 7)]):
        ds = Dataset(InMemoryTable(pa.table({"teacher_logits": logit_cache.arrow_rows(rows)})))
        assert len(ds) == len(rows)
        for stored, row in zip(ds.with_format("numpy")["teacher_logits"], rows):
            np.testing.assert_array_equal(np.stack(stored) if row.ndim == 2 else stored, row)
