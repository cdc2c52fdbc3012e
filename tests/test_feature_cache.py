"""Stage 2a's teacher feature cache: the same losses as the teacher's own features up to float16 rounding,
never a stale cache, and off (with one line) when it cannot pay or fit."""
import json
import os
import subprocess
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import BertForSequenceClassification

from distill.engine import feature_cache
from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import ConfigError, ExperimentConfig, load_config
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective
from distill.stages.teacher import load_finetuned
from tests.conftest import tiny_config, tiny_overrides

TEXTS = ["a good film", "bad", "the worst thing ever made by anyone anywhere", "fine enough",
         "an utterly wonderful and moving story of two old friends", "meh", "not my cup of tea at all",
         "it was ok i guess", "brilliant", "a dull , lifeless remake", "two thumbs up for the cast", "why"]
TINYBERT = {"embedding_mse": 1.0, "attention_scores_mse": 1.0, "hidden_mse": 1.0}
# MiniLM terms read queries, keys and values; the zero-weight terms are logged when their features are stored
MINILM = {"attention_kl": 1.0, "value_relation_kl": 0.5, "hidden_mse": 1.0, "hidden_cosine": 0.0, "soft_ce": 0.0}
# float16 keeps 11 significant bits: features within 2^-11 relative, so MSE-type terms within about 1e-3
RTOL = 2e-3


def _train_set(tokenizer, texts=TEXTS):
    return tokenize(Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))]}), tokenizer, 32)


def _ctx(run_dir, tokenizer, epochs=2.0, **task_distill):
    cfg = ExperimentConfig()
    cfg.task_distill.intermediate.epochs = epochs
    cfg.task_distill.intermediate.batch_size = 4
    cfg.task_distill.intermediate.mixed_precision = "no"
    for key, value in task_distill.items():
        setattr(cfg.task_distill, key, value)

    def loader(split, batch_size, shuffle=False, dataset=None, collator=None):
        return make_loader(dataset, tokenizer, batch_size, shuffle, seed=0)
    return SimpleNamespace(cfg=cfg, run_dir=run_dir, loader=loader, tokenizer=tokenizer)


def _objective(teacher_dir, losses, layer_map="uniform", layer_map_list=()):
    teacher = load_finetuned(teacher_dir)
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny_config(hidden_size=16, num_hidden_layers=2, intermediate_size=32))
    matches = build_layer_map(losses, layer_map, 2, teacher.config.num_hidden_layers, list(layer_map_list))
    objective = DistillObjective(student, teacher, matches)
    objective.trainable.eval()  # no dropout: the two passes compared must differ only by the teacher side
    return objective


class CountingTap:
    """Stands in for the teacher's FeatureTap and counts the teacher's forward passes."""

    def __init__(self, tap):
        self.tap, self.calls = tap, 0
        self.blocks = tap.blocks

    def __call__(self, inputs, runner=None):
        self.calls += 1
        return self.tap(inputs, runner)


def _terms(objective, batches, cached: bool):
    out = []
    for batch in batches:
        batch = batch if cached else {k: v for k, v in batch.items() if k != "example_id"}
        total, terms = objective(batch)
        out.append({"total": float(total), **terms})
    return out


def _batches(dataset, tokenizer, left=False):
    if left:
        tokenizer = deepcopy(tokenizer)
        tokenizer.padding_side = "left"
    batches = []
    for batch in make_loader(dataset, tokenizer, 5, shuffle=True, seed=7):  # other batches than the build's (4)
        order = torch.randperm(len(batch["input_ids"]), generator=torch.Generator().manual_seed(len(batches)))
        batches.append({k: v[order] for k, v in batch.items()})  # and rows not in length order
    return batches


@pytest.mark.parametrize("losses, stored", [(TINYBERT, "scores"), (MINILM, "query")])
def test_losses_read_from_the_cache_match_the_teachers_own_within_fp16_rounding(tmp_path, tiny_teacher_dir,
                                                                                 tokenizer, capsys, losses, stored):
    objective = _objective(tiny_teacher_dir, losses)
    data = feature_cache.prepare(_ctx(tmp_path, tokenizer), objective, tiny_teacher_dir, _train_set(tokenizer))
    out = capsys.readouterr().out
    assert "computed once" in out and "example_id" in data.column_names
    cache = objective.feature_cache
    kinds = {kind for kind, _, _ in cache.layout.columns} | ({"scores"} if cache.layout.score_layers else set())
    assert stored in kinds  # short sentences store (heads, len, len) scores; attention_kl needs q/k
    assert kinds <= {"hidden", "scores", "query", "key", "value"}
    batches = _batches(data, tokenizer)
    with torch.no_grad():
        direct = _terms(objective, batches, cached=False)
        objective.teacher_tap = CountingTap(objective.teacher_tap)
        read = _terms(objective, batches, cached=True)
    assert objective.teacher_tap.calls == 0  # the teacher never ran: every feature came from disk
    for d, r in zip(direct, read):
        assert set(r) == set(d) - {"soft_ce"}  # a zero-weight term the cache cannot serve is left out
        for name, value in r.items():
            assert value == pytest.approx(d[name], rel=RTOL, abs=1e-6), name
    if "soft_ce" in losses:
        assert "zero-weight terms ['soft_ce'] are not logged" in out


def test_a_cache_is_reused_only_for_the_same_teacher_data_and_layer_map(tmp_path, tiny_teacher_dir, tokenizer,
                                                                        capsys):
    ctx = _ctx(tmp_path, tokenizer)
    first = _objective(tiny_teacher_dir, TINYBERT)
    feature_cache.prepare(ctx, first, tiny_teacher_dir, _train_set(tokenizer))
    folder = first.feature_cache.folder
    assert "computed once" in capsys.readouterr().out

    again = _objective(tiny_teacher_dir, TINYBERT)  # e.g. the resumed stage
    again.teacher_tap = CountingTap(again.teacher_tap)
    feature_cache.prepare(ctx, again, tiny_teacher_dir, _train_set(tokenizer))
    assert again.feature_cache.folder == folder and again.teacher_tap.calls == 0
    assert "reused from" in capsys.readouterr().out

    other_map = _objective(tiny_teacher_dir, TINYBERT, "explicit", [1, 3])
    feature_cache.prepare(ctx, other_map, tiny_teacher_dir, _train_set(tokenizer))
    assert other_map.feature_cache.folder != folder and "computed once" in capsys.readouterr().out
    assert not folder.exists()  # the stale folder is gone once the new one is sealed
    folder = other_map.feature_cache.folder

    other_data = _objective(tiny_teacher_dir, TINYBERT, "explicit", [1, 3])
    feature_cache.prepare(ctx, other_data, tiny_teacher_dir, _train_set(tokenizer, TEXTS[:-1] + ["why not"]))
    assert other_data.feature_cache.folder != folder and "computed once" in capsys.readouterr().out
    folder = other_data.feature_cache.folder

    weights = next(p for p in tiny_teacher_dir.iterdir() if p.suffix == ".safetensors")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a re-trained teacher
    try:
        retrained = _objective(tiny_teacher_dir, TINYBERT, "explicit", [1, 3])
        feature_cache.prepare(ctx, retrained, tiny_teacher_dir, _train_set(tokenizer, TEXTS[:-1] + ["why not"]))
        assert retrained.feature_cache.folder != folder
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_build_cut_short_is_done_again(tmp_path, tiny_teacher_dir, tokenizer, capsys):
    ctx = _ctx(tmp_path, tokenizer)
    objective = _objective(tiny_teacher_dir, TINYBERT)
    feature_cache.prepare(ctx, objective, tiny_teacher_dir, _train_set(tokenizer))
    folder = objective.feature_cache.folder
    (folder / "meta.json").unlink()  # as if killed before sealing: what is there is not trusted
    folder.rename(folder.with_name(folder.name + ".tmp"))
    capsys.readouterr()
    fresh = _objective(tiny_teacher_dir, TINYBERT)
    feature_cache.prepare(ctx, fresh, tiny_teacher_dir, _train_set(tokenizer))
    assert "computed once" in capsys.readouterr().out and (folder / "meta.json").is_file()
    assert not folder.with_name(folder.name + ".tmp").exists()


@pytest.mark.parametrize("damage", ["cut short", "missing"])
def test_a_damaged_sealed_cache_is_built_again_not_read(tmp_path, tiny_teacher_dir, tokenizer, capsys, damage):
    ctx = _ctx(tmp_path, tokenizer)
    objective = _objective(tiny_teacher_dir, TINYBERT)
    feature_cache.prepare(ctx, objective, tiny_teacher_dir, _train_set(tokenizer))
    folder = objective.feature_cache.folder
    tokens = folder / "tokens.f16"
    assert tokens.stat().st_size > 0 and feature_cache.FeatureCache.damage(folder) is None
    if damage == "cut short":  # e.g. a disk that filled up while a copy of the run folder was made
        with open(tokens, "r+b") as f:
            f.truncate(tokens.stat().st_size // 2)
    else:
        tokens.unlink()
    capsys.readouterr()
    again = _objective(tiny_teacher_dir, TINYBERT)
    feature_cache.prepare(ctx, again, tiny_teacher_dir, _train_set(tokenizer))
    out = capsys.readouterr().out
    assert "is damaged (tokens.f16" in out and "computed once" in out
    assert feature_cache.FeatureCache.damage(folder) is None and again.feature_cache.folder == folder


def test_a_cache_that_cannot_be_sealed_is_switched_off_not_a_crash(tmp_path, tiny_teacher_dir, tokenizer, capsys,
                                                                    monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "rename", full_disk)
    objective = _objective(tiny_teacher_dir, TINYBERT)
    train_set = _train_set(tokenizer)
    out = feature_cache.prepare(_ctx(tmp_path, tokenizer), objective, tiny_teacher_dir, train_set)
    assert out is train_set and objective.feature_cache is None
    assert "sealing it failed (No space left on device)" in capsys.readouterr().out
    assert not list(tmp_path.glob("cache/*"))  # the scratch folder is gone


def test_a_batch_that_does_not_fit_the_cache_is_refused(tmp_path, tiny_teacher_dir, tokenizer):
    objective = _objective(tiny_teacher_dir, TINYBERT)
    data = feature_cache.prepare(_ctx(tmp_path, tokenizer), objective, tiny_teacher_dir, _train_set(tokenizer))
    batch = next(iter(make_loader(data, tokenizer, 4, shuffle=False)))
    batch["example_id"] = batch["example_id"].flip(0)  # rows of other lengths
    with pytest.raises(RuntimeError, match="does not match this batch"):
        objective(batch)


def _overflowing_teacher(folder, tmp_path):
    model = load_finetuned(folder)
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight.fill_(1e6)  # embedding outputs beyond float16's 65504
    out = tmp_path / "loud_teacher"
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("case, line", [
    ("one epoch", "makes 1 pass over its data, nothing to reuse"),
    ("cap", "exceed task_distill.feature_cache_max_gb=1e-09"),
    ("logits", "reads the teacher's logits"),
    ("overflow", "beyond the float16 range"),
    ("left padding", "pads on the left"),  # BERT's absolute positions: a feature depends on its batch's padding
    ("switched off", None),
])
def test_the_cache_is_skipped_with_one_line_when_it_cannot_pay_or_fit(tmp_path, tiny_teacher_dir, tokenizer, capsys,
                                                                      case, line):
    settings = {"one epoch": {"epochs": 1.0}, "cap": {"feature_cache_max_gb": 1e-9},
                "switched off": {"feature_cache": False}}.get(case, {})
    teacher_dir = _overflowing_teacher(tiny_teacher_dir, tmp_path) if case == "overflow" else tiny_teacher_dir
    losses = {**TINYBERT, "soft_ce": 1.0} if case == "logits" else TINYBERT
    objective = _objective(teacher_dir, losses)
    train_set = _train_set(tokenizer)
    run_dir = tmp_path / "run"
    if case == "left padding":
        tokenizer = deepcopy(tokenizer)
        tokenizer.padding_side = "left"
    out = feature_cache.prepare(_ctx(run_dir, tokenizer, **settings), objective, teacher_dir, train_set)
    printed = capsys.readouterr().out
    assert out is train_set and objective.feature_cache is None
    assert not list(run_dir.glob("cache/*"))  # nothing written, no scratch folder left
    if line is None:
        assert printed == ""
    else:
        assert printed.count("\n") == 1 and "teacher feature cache off" in printed and line in printed


def test_max_steps_count_as_passes_and_a_bad_cap_is_refused(tmp_path):
    cfg = ExperimentConfig().task_distill.intermediate
    cfg.batch_size, cfg.epochs, cfg.max_steps = 4, 1.0, 6  # 12 examples: 3 batches a pass
    assert feature_cache.planned_passes(cfg, 12, 1) == 2.0
    assert feature_cache.planned_passes(cfg, 12, 2) == 3.0  # 2 batches per process a pass
    with pytest.raises(ConfigError, match="task_distill.feature_cache_max_gb"):
        load_config(None, ["task_distill.feature_cache_max_gb=0"])


@pytest.mark.slow
def test_two_processes_share_one_cache_built_by_the_main_process(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) runs tests/mp_feature_cache_script.py."""
    from tests.test_multiprocess import ROOT, _cpu_ranks_would_ask_for_a_missing_gpu, _launch_cmd, subprocess_env

    if _cpu_ranks_would_ask_for_a_missing_gpu():
        pytest.skip("2 CPU processes under accelerate need no accelerator or 2+ devices (see test_multiprocess)")

    cmd = _launch_cmd(str(ROOT / "tests" / "mp_feature_cache_script.py"), str(tmp_path))
    done = subprocess.run(cmd, env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["processes"] for r in ranks] == [2, 2]
    assert ranks[0]["folder"] == ranks[1]["folder"]  # one cache, read by both
    assert done.stdout.count("computed once") == 1  # built (and announced) by the main process only
    cache_dir = tmp_path / "run" / "cache"
    assert [p.name for p in cache_dir.iterdir()] == [Path(ranks[0]["folder"]).name]  # no scratch folder left
    for r in ranks:
        assert r["worst_relative_diff"] < 2 ** -10  # float16 rounding of the rank's own teacher features
        # 24 examples in 6 batches: 3 per process and epoch, 2 epochs
        assert r["steps"] == 6 and all(loss == loss for loss in r["losses"])


def test_stage_2a_trains_from_the_cache_when_it_runs_several_epochs(tmp_path, tiny_teacher_dir, task_folder,
                                                                    capsys):
    from distill.stages.context import RunContext
    from distill.runner.plan import build

    overrides = tiny_overrides(tmp_path, tiny_teacher_dir, task_folder, "teacher.already_finetuned=true",
                               "teacher.gate=warn", "general.enabled=false", "task_distill.intermediate.batch_size=8",
                               "task_distill.augment.auto_below=0",  # the 40 originals only
                               "task_distill.intermediate.max_steps=12",  # 40 examples in 5 batches: 2.4 passes
                               "task_distill.intermediate.save_every=0", "task_distill.intermediate.log_every=4")
    ctx = RunContext(load_config(None, overrides))
    build(ctx, "2a")
    out = capsys.readouterr().out
    assert "teacher features (hidden 0,2,4; scores 2,4) of 40 examples computed once" in out
    assert len(list((ctx.run_dir / "cache").glob("teacher-features-*"))) == 1
    metrics = ctx.run_dir / "student-intermediate" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all({"embedding_mse", "attention_scores_mse", "hidden_mse"} <= set(r) for r in records)


def test_a_folder_left_unsealed_by_a_kill_is_removed_and_built_again(tmp_path, tiny_teacher_dir, tokenizer, capsys):
    """A kill between unsealing a damaged cache (meta.json gone) and removing it leaves the folder behind:
    sealing a new build over it failed, so every later run paid for a build and then ran without the cache."""
    ctx = _ctx(tmp_path, tokenizer)
    objective = _objective(tiny_teacher_dir, TINYBERT)
    feature_cache.prepare(ctx, objective, tiny_teacher_dir, _train_set(tokenizer))
    folder = objective.feature_cache.folder
    (folder / "meta.json").unlink()
    capsys.readouterr()
    for _ in range(2):  # built again once, then reused
        again = _objective(tiny_teacher_dir, TINYBERT)
        data = feature_cache.prepare(ctx, again, tiny_teacher_dir, _train_set(tokenizer))
        assert again.feature_cache is not None and again.feature_cache.folder == folder
        assert "example_id" in data.column_names
    out = capsys.readouterr().out
    assert "cache off" not in out and "computed once" in out and "reused from" in out
    assert feature_cache.FeatureCache.damage(folder) is None


def test_another_rank_reads_the_cache_the_main_process_sealed_before_the_barrier(tmp_path, tiny_teacher_dir,
                                                                                 tokenizer, monkeypatch):
    """A rank other than the main one never builds: it meets the barrier while the main process builds
    (simulated inside the barrier by copying a sealed folder in place), then reads the cache."""
    import shutil

    built = _objective(tiny_teacher_dir, TINYBERT)
    feature_cache.prepare(_ctx(tmp_path / "main", tokenizer), built, tiny_teacher_dir, _train_set(tokenizer))
    sealed = built.feature_cache.folder
    other_run = tmp_path / "other"
    target = other_run / "cache" / sealed.name  # the key does not depend on the run folder

    monkeypatch.setattr(feature_cache, "is_main_process", lambda: False)
    monkeypatch.setattr(feature_cache, "wait_for_everyone", lambda: shutil.copytree(sealed, target))
    rank = _objective(tiny_teacher_dir, TINYBERT)
    rank.teacher_tap = CountingTap(rank.teacher_tap)
    data = feature_cache.prepare(_ctx(other_run, tokenizer), rank, tiny_teacher_dir, _train_set(tokenizer))
    assert rank.feature_cache.folder == target and rank.teacher_tap.calls == 0
    assert "example_id" in data.column_names


def test_the_build_gives_the_teacher_back_where_it_was(tmp_path, tiny_teacher_dir, tokenizer, monkeypatch):
    """The build runs the teacher on the placement's device; it used to leave it there (on a GPU machine the
    caller's CPU tensors then met a CUDA teacher). No second device here: the teacher's .to is recorded
    (and not carried out) under a placement on the meta device whose inputs stay on the CPU."""
    import contextlib

    objective = _objective(tiny_teacher_dir, TINYBERT)
    teacher, moves = objective.teacher, []
    teacher.to = lambda device: (moves.append(torch.device(device)), teacher)[1]
    away = SimpleNamespace(device=torch.device("meta"), dtype=None, autocast=contextlib.nullcontext,
                           inputs=lambda batch: batch)
    monkeypatch.setattr(feature_cache, "placement", lambda mixed_precision: away)
    feature_cache.prepare(_ctx(tmp_path, tokenizer), objective, tiny_teacher_dir, _train_set(tokenizer))
    assert objective.feature_cache is not None  # built, with the teacher "on" the meta device
    assert moves == [torch.device("meta"), torch.device("cpu")] and not teacher.training
