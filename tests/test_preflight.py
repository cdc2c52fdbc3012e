"""Bad input caught before any training (pipeline.preflight), and what stage fingerprints cover."""
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertForSequenceClassification

from distill.config import ConfigError, load_config
from distill.stages.context import RunContext
from distill.runner.pipeline import preflight
from tests.conftest import tiny_config, tiny_overrides


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"sentence {i} of a small corpus about films." for i in range(50)))
    return path


@pytest.fixture()
def base(tmp_path, tiny_teacher_dir, task_folder, corpus):
    """Overrides for a tiny, valid run: 4-layer teacher (128 positions), 2-layer student."""
    return tiny_overrides(tmp_path, tiny_teacher_dir, task_folder, f"general.corpus={corpus}", "general.max_len=64",
                          hidden=32, ffn=64, max_len=64)


def _preflight(overrides):
    cfg = load_config(None, overrides)
    preflight(cfg, RunContext(cfg))
    return cfg


def _save_teacher(folder, tokenizer, **config):
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config(**config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_valid_setup_passes(base):
    _preflight(base)
    _preflight(base + ["general.layer_map=explicit", "general.layer_map_list=[2, 4]", "prune.layer_ratios=[0.5, 0.25]"])


@pytest.mark.parametrize("extra, key, hint", [
    (["general.layer_map=explicit", "general.layer_map_list=[1, 2, 4]"], "general.layer_map_list", "has 3 entries"),
    (["task_distill.layer_map=explicit", "task_distill.layer_map_list=[4]"], "task_distill.layer_map_list",
     "has 1 entries"),
    (["task_distill.layer_map=explicit", "task_distill.layer_map_list=[2, 9]"], "task_distill.layer_map_list",
     "outside the teacher's layers"),
    (["prune.layer_ratios=[0.5, 0.5, 0.5]"], "prune.layer_ratios", "has 3 entries but the student has 2"),
    (["task.max_len=256"], "task.max_len", "exceeds the teacher's 128 position"),
    (["general.max_len=256"], "general.max_len", "exceeds the general teacher's 128 position"),
])
def test_wrong_lengths_are_refused_naming_the_key(base, extra, key, hint):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{hint}"):
        _preflight(base + extra)


def test_layer_lists_follow_the_depth_of_an_init_folder(base, tmp_path, tokenizer):
    init = _save_teacher(tmp_path / "student3", tokenizer, num_hidden_layers=3)
    with pytest.raises(ConfigError, match=r"'prune\.layer_ratios'.*student has 3 layers"):
        _preflight(base + [f"student.init={init}", "prune.layer_ratios=[0.5, 0.5]"])
    _preflight(base + [f"student.init={init}", "prune.layer_ratios=[0.5, 0.5, 0.5]"])


def test_tokenizer_bigger_than_the_teacher_vocabulary_is_refused(base, tmp_path, tokenizer):
    teacher = _save_teacher(tmp_path / "small_vocab", tokenizer, vocab_size=1000)  # MiniLM tokenizer: 30522
    with pytest.raises(ConfigError, match=r"'teacher\.name'.*30522 tokens.*vocab_size is 1000"):
        _preflight(base + [f"teacher.name={teacher}"])


def test_init_folder_with_another_vocabulary_is_refused(base, tmp_path, tokenizer):
    init = _save_teacher(tmp_path / "cased_student", tokenizer, vocab_size=28996)
    with pytest.raises(ConfigError, match=r"'student\.init'.*28996 tokens.*30522"):
        _preflight(base + [f"student.init={init}"])


def test_general_teacher_with_another_vocabulary_is_refused(base, tmp_path, tokenizer):
    other = _save_teacher(tmp_path / "other", tokenizer, vocab_size=31000)
    with pytest.raises(ConfigError, match=r"'general\.teacher'.*31000"):
        _preflight(base + [f"general.teacher={other}"])


def test_general_teacher_task_with_mlm_losses_is_refused_before_finetuning(base, tiny_mlm_teacher_dir):
    """The pretrained teacher has an MLM head, the fine-tuned one never does: caught now, not after hours."""
    overrides = base + [f"teacher.name={tiny_mlm_teacher_dir}", "general.losses={mlm: 1.0, hidden_mse: 1.0}"]
    _preflight(overrides)  # the pretrained MLM teacher itself is fine
    with pytest.raises(ConfigError, match=r"'general\.teacher'.*no MLM head"):
        _preflight(overrides + ["general.teacher=task"])


def _finetuned(tmp_path, tokenizer, labels):
    return _save_teacher(tmp_path / "ft", tokenizer, num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={n: i for i, n in enumerate(labels)})


@pytest.mark.parametrize("labels", [["negative", "positive"], ["pos", "neg"], ["neg", "pos", "neutral"]])
def test_already_finetuned_teacher_with_other_labels_is_refused(base, tmp_path, tokenizer, labels):
    teacher = _finetuned(tmp_path, tokenizer, labels)
    with pytest.raises(ConfigError, match=rf"'teacher\.already_finetuned'.*predicts labels {re.escape(str(labels))}.*"
                                          r"has labels \['neg', 'pos'\]"):
        _preflight(base + [f"teacher.name={teacher}", "teacher.already_finetuned=true"])


def test_already_finetuned_teacher_with_the_data_labels_or_generic_names_passes(base, tmp_path, tokenizer,
                                                                                tiny_teacher_dir):
    teacher = _finetuned(tmp_path, tokenizer, ["neg", "pos"])
    _preflight(base + [f"teacher.name={teacher}", "teacher.already_finetuned=true"])
    _preflight(base + [f"teacher.name={tiny_teacher_dir}", "teacher.already_finetuned=true"])  # LABEL_0, LABEL_1


def test_already_finetuned_teacher_by_hub_name(base, tmp_path, tokenizer, monkeypatch):
    """A hub name (served from a local hub cache, offline) works: labels are read with AutoConfig, and the
    teacher stage hands on a folder holding the model's files."""
    from huggingface_hub import constants

    from distill.runner.plan import build
    from distill.stages.common import load_finetuned

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-sst"
    (repo / "snapshots").mkdir(parents=True)
    snapshot = _finetuned(tmp_path, tokenizer, ["neg", "pos"]).rename(repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    overrides = [o for o in base if not o.startswith("teacher.name")] + ["teacher.name=acme/tiny-sst",
                                                                          "teacher.already_finetuned=true",
                                                                          "teacher.gate=warn"]  # random weights
    cfg = load_config(None, overrides)
    ctx = RunContext(cfg)
    preflight(cfg, ctx)
    folder = build(ctx, "teacher")
    assert folder == snapshot and (folder / "config.json").is_file()
    assert load_finetuned(folder).config.id2label == {0: "neg", 1: "pos"}
    task_folder = Path(cfg.task.name)  # the same task with other label names: refused, both lists shown
    for name in ("train.csv", "dev.csv"):
        frame = pd.read_csv(task_folder / name)
        frame.assign(label=frame["label"].map({"neg": "bad", "pos": "good"})).to_csv(task_folder / name, index=False)
    (task_folder / "test.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"'teacher\.already_finetuned'.*\['neg', 'pos'\].*\['bad', 'good'\]"):
        _preflight(overrides)


# ------------------------------------------------------------------------------------------------
# fingerprints: contents of local inputs, not only config values; bookkeeping keys left out


def _stages(overrides):
    from distill.runner.plan import stage_run

    ctx = RunContext(load_config(None, overrides))
    return {"teacher": stage_run(ctx, "teacher"), "general": stage_run(ctx, "general"),
            "intermediate": stage_run(ctx, "2a")}


def _fingerprints(overrides):
    return {name: stage.fingerprint for name, stage in _stages(overrides).items()}


def test_fingerprints_leave_out_save_every_and_log_every_but_not_eval_every(base):
    before = _fingerprints(base)
    assert _fingerprints(base + ["teacher.finetune.save_every=7", "general.train.log_every=3",
                                 "task_distill.intermediate.save_every=1"]) == before
    after = _fingerprints(base + ["teacher.finetune.eval_every=5"])
    assert after["teacher"] != before["teacher"]  # eval_every picks the kept checkpoint


def test_fingerprints_cover_the_task_data_contents(base, task_folder):
    before = _fingerprints(base)
    frame = pd.read_csv(task_folder / "train.csv")
    frame.loc[0, "label"] = "pos" if frame.loc[0, "label"] == "neg" else "neg"  # one label corrected in place
    frame.to_csv(task_folder / "train.csv", index=False)
    after = _fingerprints(base)
    assert after["teacher"] != before["teacher"] and after["intermediate"] != before["intermediate"]
    assert after["general"] == before["general"]  # general distillation does not read the task


def test_fingerprints_cover_the_corpus_and_model_folders(base, corpus, tiny_teacher_dir, tmp_path, tokenizer):
    before = _fingerprints(base)
    corpus.write_text(corpus.read_text() + "\none more line of text for the corpus.")
    after = _fingerprints(base)
    assert after["general"] != before["general"] and after["teacher"] == before["teacher"]
    teacher = _save_teacher(tmp_path / "teacher", tokenizer)
    with_teacher = base + [f"teacher.name={teacher}"]
    first = _fingerprints(with_teacher)
    os.utime(teacher / "model.safetensors", (1, 1))  # touched, same bytes: same fingerprint
    assert _fingerprints(with_teacher) == first
    _save_teacher(teacher, tokenizer, hidden_dropout_prob=0.2)  # retrained in place under the same path
    assert _fingerprints(with_teacher)["teacher"] != first["teacher"]


def test_a_finished_stage_is_not_reused_after_its_data_changed(base, task_folder):
    from distill.stages.records import StageConflictError

    stage = _stages(base)["teacher"]
    stage.start()
    stage.finish({})
    assert _stages(base)["teacher"].is_done()
    (task_folder / "dev.csv").write_text((task_folder / "dev.csv").read_text() + "one more film,pos\n")
    with pytest.raises(StageConflictError, match=r"inputs\.task\.name"):
        _stages(base)["teacher"].is_done()
    assert json.loads((stage.dir / "stage.json").read_text())["settings"]["inputs"]["task.name"]


def test_mlm_augmentation_switched_on_by_a_small_split_checks_the_mlm_head_first(base):
    """The small task split (under augment.auto_below) turns augmentation on by itself: with method=mlm and a
    teacher without an MLM head the run stops in preflight, as it does when augmentation is asked for; with
    auto_below=0 nothing is augmented and nothing is checked."""
    with pytest.raises(Exception, match="needs an MLM head"):
        _preflight(base + ["task_distill.augment.method=mlm"])
    with pytest.raises(Exception, match="needs an MLM head"):
        _preflight(base + ["task_distill.augment.method=mlm", "task_distill.augment.enabled=true",
                           "task_distill.augment.auto_below=0"])
    _preflight(base + ["task_distill.augment.method=mlm", "task_distill.augment.auto_below=0"])
