"""Know the data and the teacher: data summary, trivial baselines, the truncation advice, the teacher gate."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset

from distill import cli

from distill.runner import pipeline
from distill.tasks.baselines import noise_margin, task_baseline, within_noise
from distill.config import ConfigError, load_config
from distill.stages.context import RunContext
from distill.data.task_data import TaskData
from distill.passes.flops import config_encoder_flops
from distill.report.summary import SUMMARY_FILE, report_section, summarize
from distill.runner.plan import build
from distill.stages.teacher import TeacherGateError, check_teacher
from teachers.load import load_config as load_model_config
from tests.conftest import tiny_overrides

STAGES = ("student-general", "student-intermediate", "student-task", "student-pruned", "export")


def _task(train, dev, test, metric="accuracy", names=("neg", "pos")):
    def ds(labels):
        return Dataset.from_dict({"text": [f"t{i}" for i in range(len(labels))], "label": list(labels)})
    return TaskData("toy", ds(train), ds(dev), ds(test), None if metric == "pearson" else list(names), metric)


def _cfg(tmp_path, teacher, task, *extra, steps=3, lr=2e-5):
    return load_config(None, tiny_overrides(tmp_path, teacher, task, "general.enabled=false",
                                            f"teacher.finetune.max_steps={steps}", "teacher.finetune.batch_size=8",
                                            f"teacher.finetune.lr={lr}", "teacher.finetune.save_every=0",
                                            "teacher.finetune.warmup_ratio=0", *extra))


@pytest.fixture()
def noise_folder(tmp_path):
    """Labels drawn at random (80% 'common'), independent of the texts: nothing to learn."""
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "film", "book", "song", "long", "short", "old", "new"]
    rows = [{"text": " ".join(rng.choice(words, 6)), "label": "common" if rng.random() < 0.8 else "rare"}
            for _ in range(400)]
    frame = pd.DataFrame(rows)
    folder = tmp_path / "noise"
    folder.mkdir()
    frame.iloc[:200].to_csv(folder / "train.csv", index=False)
    frame.iloc[200:300].to_csv(folder / "dev.csv", index=False)
    frame.iloc[300:].to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture()
def weightless_teacher(tmp_path, tiny_teacher_dir):
    """The tiny teacher's config and tokenizer without its weights: loading them would fail."""
    folder = tmp_path / "no_weights"
    shutil.copytree(tiny_teacher_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return folder


# ---------------------------------------------------------------------------------------------------
# baselines


def test_majority_baseline_is_the_train_majority_scored_on_each_split():
    data = _task([1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 1, 1])  # train majority: class 1 ('pos')
    base = task_baseline(data)
    assert "'pos'" in base.rule and "75.0% of train" in base.rule
    assert base.dev == pytest.approx(0.25) and base.test == pytest.approx(0.8)  # dev majority differs: 1/4
    data.metric = "f1"  # constant 'pos': precision p, recall 1 -> F1 = 2p / (1 + p)
    assert task_baseline(data).test == pytest.approx(2 * 0.8 / 1.8)
    data = _task([0, 0, 1], [0, 1], [1, 0], metric="f1")  # constant 'neg': no positive predicted, F1 0
    assert task_baseline(data).dev == 0.0
    data.metric = "mcc"
    assert task_baseline(data).test == 0.0


def test_regression_and_token_baselines_say_why():
    base = task_baseline(_task([1.0, 2.0, 3.5], [1.0, 2.0], [2.0, 3.0], metric="pearson"))
    assert math.isnan(base.dev) and base.reference("dev") == 0.0 and "undefined" in base.note
    assert "2.167" in base.rule  # the train mean
    data = _task([0], [0], [0])
    data.metric = "entity_f1"
    assert task_baseline(data).test == 0.0 and "O" in task_baseline(data).note
    data.metric = "bleu"
    assert task_baseline(data) is None


def test_noise_rule_is_two_standard_errors_of_a_proportion():
    assert noise_margin("accuracy", 0.5, 100) == pytest.approx(0.1)  # 2 * sqrt(0.25 / 100)
    assert noise_margin("mcc", 0.0, 400) == pytest.approx(0.1)  # 2 / sqrt(400)
    base = task_baseline(_task([1, 1, 0], [1, 0], [1] * 50 + [0] * 50))  # test baseline 0.5, n 100
    assert within_noise(0.59, base, 100) and not within_noise(0.61, base, 100)
    rows = [{"name": "teacher", "runtime": "pytorch-fp32", "score": 0.9},
            {"name": "student-pruned", "runtime": "onnxruntime-int8", "score": 0.55}]
    summary = {"task": "toy", "metric": "accuracy", "max_len": 32, "pair": False, "max_positions": 512,
               "baseline": base.to_dict(),
               "splits": {s: {"examples": 100, "labels": {"neg": 50, "pos": 50}} for s in ("train", "dev", "test")}}
    text = "\n".join(report_section(summary, rows, 100))
    assert "student-pruned (onnxruntime-int8, 0.5500)" in text and "teacher (" not in text
    assert "within noise = test accuracy < 0.6000" in text


def test_report_has_the_data_section_and_flags_noise(tmp_path, tokenizer):
    from distill.report.report import write_report

    ds = Dataset.from_dict({"text": ["a good film", "a bad film"] * 50, "label": [1, 0] * 49 + [1, 1]})
    summary = summarize(TaskData("toy", ds, ds, ds, ["neg", "pos"], "accuracy"), tokenizer, 32)
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))
    row = dict(runtime="pytorch-fp32", metric="accuracy", p50_ms=2.0, p95_ms=2.0, p50_ms_real=1.0, throughput_b32=1.0,
               throughput_b32_real=1.0, size_mb=1.0, params=10, flops_128=10)
    rows = [{**row, "name": "teacher", "score": 0.95}, {**row, "name": "student-task", "score": 0.52}]
    md, page = write_report(tmp_path, rows, "bench:\n  test_examples: 0\n", [])
    text = md.read_text()
    assert "## Data and baselines" in text and "| train | 100 | 5/5/5/5 | 0.0% (0) | pos 51 (51.0%), neg 49 (49.0%) |" in text
    # n = 100, p = 0.51: threshold 0.51 + 2 * sqrt(0.51 * 0.49 / 100) = 0.6100
    assert "within noise = test accuracy < 0.6100" in text and "student-task (pytorch-fp32, 0.5200)" in text
    assert "Data and baselines</h2>" in page.read_text() and "student-task (pytorch-fp32, 0.5200)" in page.read_text()


# ---------------------------------------------------------------------------------------------------
# the data summary and the truncation advice


def test_summary_counts_lengths_and_suggests_max_len(tokenizer, tiny_teacher_dir):
    rng = np.random.default_rng(1)
    words = "the a film was long and slow but the end was worth it".split()
    texts = [" ".join(rng.choice(words, int(n))) for n in rng.integers(5, 60, 200)]
    ds = Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(200)]})
    data = TaskData("long", ds, ds.select(range(50)), ds.select(range(50, 100)), ["a", "b"], "accuracy")
    config = load_model_config(str(tiny_teacher_dir))
    summary = summarize(data, tokenizer, 16, config)
    lengths = np.array([len(tokenizer(t)["input_ids"]) for t in texts])  # independent: one at a time
    train = summary["splits"]["train"]
    assert train["examples"] == 200 and train["labels"] == {"a": 100, "b": 100}
    assert train["tokens"]["p90"] == int(np.sort(lengths)[int(np.ceil(0.9 * 199))])
    assert train["truncated"] == int((lengths > 16).sum()) and train["truncated_share"] > 0.1
    warning = summary["truncation_warning"]
    p90 = train["tokens"]["p90"]
    assert warning["suggested_max_len"] == min(-(-p90 // 8) * 8, 128)  # multiple of 8, capped at 128 positions
    expected = config_encoder_flops(config, warning["suggested_max_len"]) / config_encoder_flops(config, 16)
    assert warning["flops_factor"]["at_max_len"] == pytest.approx(expected, abs=0.01)
    assert warning["flops_factor"]["at_max_len"] > warning["suggested_max_len"] / 16  # attention grows faster
    very_long = ds.map(lambda b: {"text": [t + " " + t * 8 for t in b["text"]]}, batched=True)
    capped = summarize(TaskData("x", very_long, ds, ds, ["a", "b"], "accuracy"), tokenizer, 16, config)
    assert capped["truncation_warning"]["suggested_max_len"] == 128  # the tiny teacher has 128 positions


def test_pair_summary_says_which_side_is_cut(tokenizer):
    long, short = "word " * 40, "tiny text"
    ds = Dataset.from_dict({"text": [long, short, long, short], "text_pair": [short, long, long, short],
                            "label": [0, 1, 0, 1]})
    summary = summarize(TaskData("pairs", ds, ds, ds, ["0", "1"], "accuracy"), tokenizer, 32)
    train = summary["splits"]["train"]
    assert train["truncated"] == 3
    assert (train["cut_text"], train["cut_text_pair"]) == (2, 2)  # long/short: text; short/long: pair; both


def test_long_texts_print_the_truncation_warning_with_a_suggestion(tmp_path, weightless_teacher, capsys):
    folder = tmp_path / "news"
    folder.mkdir()
    frame = pd.DataFrame({"text": [f"story {i} " + "the markets moved sharply today " * 12 for i in range(30)],
                          "label": [i % 2 for i in range(30)]})
    frame.to_csv(folder / "train.csv", index=False)
    cfg = _cfg(tmp_path, weightless_teacher, folder, "task.max_len=16")
    assert cli.run(["inspect", *_overrides(cfg)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 100.0% of train examples are longer than task.max_len=16" in out
    summary = json.loads((cfg.run_dir / SUMMARY_FILE).read_text())
    suggested = summary["truncation_warning"]["suggested_max_len"]
    assert f"task.max_len={suggested} keeps 90% of train examples whole at" in out and suggested > 16
    with pytest.raises(TeacherGateError) as err:  # the gate cites the measured truncation and the same fix
        check_teacher(RunContext(cfg), {"dev": {"score": 0.0}})
    assert f"fix: a larger max_len, since 100.0% of train examples are cut: task.max_len={suggested}, which keeps" \
        in str(err.value)


def _overrides(cfg):
    return [f"output_dir={cfg.output_dir}", f"teacher.name={cfg.teacher.name}", f"task.name={cfg.task.name}",
            f"task.max_len={cfg.task.max_len}"]


def test_inspect_prints_the_summary_without_loading_weights(tmp_path, weightless_teacher, task_folder, capsys):
    cfg = _cfg(tmp_path, weightless_teacher, task_folder)
    assert cli.run(["inspect", *_overrides(cfg)]) == 0  # any weight load would fail: there are none
    out = capsys.readouterr().out
    assert "[data]   train        40" in out and "pos 26 (65.0%), neg 14 (35.0%)" in out
    assert "baseline: majority class 'pos' (65.0% of train) scores dev accuracy 0.7000, test accuracy 0.7000" in out
    assert (cfg.run_dir / SUMMARY_FILE).is_file()
    assert not any((cfg.run_dir / s).exists() for s in ("teacher",) + STAGES)


# ---------------------------------------------------------------------------------------------------
# the teacher gate


def test_gate_stops_a_teacher_that_learned_nothing_before_distillation(tmp_path, tiny_teacher_dir, noise_folder,
                                                                       capsys):
    cfg = _cfg(tmp_path, tiny_teacher_dir, noise_folder)
    with pytest.raises(TeacherGateError) as err:
        pipeline.run_task(cfg)
    message = str(err.value)
    assert "stopped before distillation" in message
    assert "evidence: teacher dev accuracy" in message and "vs majority class 'common'" in message
    assert "fix: train longer: teacher.finetune.max_steps=9 (now 3)" in message
    assert "fix: a lower learning rate" in message and "teacher.gate=warn" in message
    assert (cfg.run_dir / "teacher" / "DONE").is_file()
    assert not any((cfg.run_dir / s).exists() for s in STAGES)  # no distillation stage was even created
    dev = json.loads((cfg.run_dir / "teacher" / "result.json").read_text())["dev"]["score"]
    summary = json.loads((cfg.run_dir / SUMMARY_FILE).read_text())
    assert dev < summary["baseline"]["dev"] + 0.02
    capsys.readouterr()
    # gate=warn goes on with the same, reused teacher (the gate keys are not part of its fingerprint)
    warn = _cfg(tmp_path, tiny_teacher_dir, noise_folder, "teacher.gate=warn")
    assert build(RunContext(warn), "teacher") == cfg.run_dir / "teacher" / "model"
    out = capsys.readouterr().out
    assert "[teacher] WARNING teacher gate:" in out and "going on anyway (teacher.gate=warn)" in out


def test_gate_passes_a_teacher_that_learned_the_task(tmp_path, tiny_teacher_dir, task_folder, capsys):
    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder, steps=20, lr=1e-2)  # reaches dev accuracy 1.0
    pipeline.run_teacher(cfg)
    out = capsys.readouterr().out
    assert "[teacher] gate passed (dev accuracy 1.0000 >= baseline 0.7000" in out
    assert "(baseline: majority class 'pos' (65.0% of train) 0.7000)" in out  # next to the teacher's scores


def test_gate_evaluates_an_already_finetuned_teacher_first(tmp_path, tiny_teacher_dir, noise_folder):
    cfg = _cfg(tmp_path, tiny_teacher_dir, noise_folder, "teacher.already_finetuned=true")
    with pytest.raises(TeacherGateError, match="teacher.already_finetuned=false"):
        pipeline.run_task(cfg)
    assert (cfg.run_dir / "teacher-given.json").is_file()
    assert not any((cfg.run_dir / s).exists() for s in STAGES)


def test_gate_for_regression_holds_pearson_to_zero(tmp_path, weightless_teacher, capsys):
    folder = tmp_path / "scores"
    folder.mkdir()
    pd.DataFrame({"text": [f"review {i}" for i in range(40)], "label": [i / 8 for i in range(40)]}).to_csv(
        folder / "train.csv", index=False)
    ctx = RunContext(_cfg(tmp_path, weightless_teacher, folder))
    with pytest.raises(TeacherGateError, match="Pearson is undefined"):
        check_teacher(ctx, {"dev": {"score": float("nan")}})  # a constant prediction
    with pytest.raises(TeacherGateError, match="needs >= 0.0200"):
        check_teacher(ctx, {"dev": {"score": 0.01}})
    check_teacher(ctx, {"dev": {"score": 0.5}})
    assert "gate passed (dev pearson 0.5000 >= baseline 0.0000" in capsys.readouterr().out


def test_gate_keys_are_checked():
    with pytest.raises(ConfigError, match="teacher.gate"):
        load_config(None, ["teacher.gate=maybe"])
    with pytest.raises(ConfigError, match="teacher.gate_margin"):
        load_config(None, ["teacher.gate_margin=1.5"])


def test_token_task_label_shares_are_out_of_all_tags_not_out_of_sentences():
    # 2 sentences, 10 tags: shares must be of the 10 tags (O 80%), never of the sentences (O 400%)
    from distill.report.summary import _labels_cell
    cell = _labels_cell({"O": 8, "B-PER": 1, "I-PER": 1})
    assert cell == "O 8 (80.0%), B-PER 1 (10.0%), I-PER 1 (10.0%)"
