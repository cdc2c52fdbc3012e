"""End-to-end stages on tiny random models (logic only; the real assets run in the slow tests)."""
import json

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.runner import pipeline
from distill.config import load_config
from distill.stages.records import StageConflictError
from tests.conftest import TRAINING_SECTIONS, tiny_overrides


def _cfg(tmp_path, teacher, task, *extra):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the film number {i} was shown in the old cinema on a rainy day." for i in range(200)))
    # teacher.gate=warn: a 3-step tiny teacher learns nothing; the gate is tested in test_inspect.py
    overrides = tiny_overrides(tmp_path, teacher, task, f"general.corpus={corpus}", "general.max_len=32",
                               "teacher.gate=warn", *extra, steps=3, sections=TRAINING_SECTIONS[:4])
    return load_config(None, overrides)


def _accuracy_one_by_one(folder, test_file) -> float:
    """Accuracy of a saved model folder, computed without distill: its own tokenizer, one example at a time."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    frame = pd.read_json(test_file, lines=True)
    right = 0
    with torch.no_grad():
        for text, label in zip(frame["text"], frame["label"]):
            logits = model(**tokenizer(text, truncation=True, max_length=32, return_tensors="pt")).logits[0]
            right += model.config.id2label[int(logits.argmax())] == label
    return right / len(frame)


def test_whole_pipeline_on_tiny_models_and_reuse(tmp_path, tiny_teacher_dir, task_folder, capsys):
    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder, "general.teacher=task", "student.init=teacher",
               "student.hidden=32", "export.formats=[fp32, int8-dynamic]", "export.check_examples=8",
               "bench.repeats=5", "bench.test_examples=8")
    pipeline.run_distill(cfg)
    run = cfg.run_dir
    for stage in ("teacher", "student-general", "student-intermediate", "student-task", "student-pruned", "export"):
        assert (run / stage / "DONE").is_file(), stage
    student = AutoModelForSequenceClassification.from_pretrained(run / "student-task" / "model")
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 32
    assert student.config.id2label == {0: "neg", 1: "pos"}
    with safe_open(str(run / "student-task" / "model" / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(k.startswith(("bert.", "classifier.")) for k in keys), keys  # no projections saved
    terms = json.loads((run / "student-intermediate" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"embedding_mse", "attention_scores_mse", "hidden_mse", "loss"} <= set(terms)
    result = json.loads((run / "student-task" / "result.json").read_text())
    assert result["test"]["accuracy"] == pytest.approx(_accuracy_one_by_one(run / "student-task" / "model",
                                                                          task_folder / "test.jsonl"), abs=1e-9)
    stamp = (run / "student-task" / "model" / "model.safetensors").stat().st_mtime
    # the stage clock: one line, timings.json, and each stage's own seconds in its result.json
    timings = json.loads((run / "timings.json").read_text())
    stages = ("teacher", "student-general", "student-intermediate", "student-task", "student-pruned", "export")
    assert set(timings) == {"total", "bench", *stages}
    assert all(v >= 0 for v in timings.values())
    assert sum(timings[k] for k in (*stages, "bench")) <= timings["total"] + 0.5
    for stage in stages:
        seconds = json.loads((run / stage / "result.json").read_text())["seconds"]
        assert seconds == pytest.approx(timings[stage], abs=0.06)
    assert "x the teacher stage" in capsys.readouterr().out
    pipeline.run_distill(cfg)  # second run: everything reused
    out = capsys.readouterr().out
    assert ": dev " not in out and "[bench]" in out  # nothing trained again; the report is rebuilt
    again = json.loads((run / "timings.json").read_text())  # the whole pipeline's stage times are kept
    assert {k: again[k] for k in stages} == {k: timings[k] for k in stages}
    assert set(again["reused"]) == set(stages) and again["this_command"] >= again["bench"]
    assert "no teacher stage ran in this command" in out
    assert (run / "student-task" / "model" / "model.safetensors").stat().st_mtime == stamp
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    assert "student-pruned" in (run / "report.md").read_text()
    rows = {(r["name"], r["runtime"]) for r in json.loads((run / "bench.json").read_text())}
    assert {("teacher", "onnxruntime-fp32-fused"), ("teacher", "onnxruntime-int8-dynamic")} <= rows  # runtime rows
    assert "Runtime alone: the teacher in ONNX Runtime" in (run / "report.md").read_text()
    changed = _cfg(tmp_path, tiny_teacher_dir, task_folder, "general.teacher=task", "student.init=teacher",
                   "student.hidden=32", "export.formats=[fp32, int8-dynamic]", "export.check_examples=8",
                   "bench.repeats=5", "bench.test_examples=8", "task_distill.temperature=3")
    with pytest.raises(StageConflictError, match="temperature"):
        pipeline.run_distill(changed)  # a finished artifact is never silently overwritten
    assert (run / "student-task" / "model" / "model.safetensors").stat().st_mtime == stamp


def test_mlm_teacher_triple_loss_and_mlm_augmentation(tmp_path, tiny_mlm_teacher_dir, task_folder):
    cfg = _cfg(tmp_path, tiny_mlm_teacher_dir, task_folder,
               "general.losses={mlm_soft_ce: 5.0, mlm: 2.0, hidden_cosine: 1.0}",
               "task_distill.augment.enabled=true", "task_distill.augment.method=mlm", "task_distill.augment.copies=2",
               "prune.enabled=false", "export.enabled=false", "bench.repeats=5")
    pipeline.run_distill(cfg)
    terms = json.loads((cfg.run_dir / "student-general" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"mlm_soft_ce", "mlm", "hidden_cosine"} <= set(terms)
    result = json.loads((cfg.run_dir / "student-intermediate" / "result.json").read_text())
    assert result["train_examples"] == 40 * 3  # originals + 2 copies


def test_mlm_losses_without_mlm_head_fail_before_training(tmp_path, tiny_teacher_dir, task_folder):
    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder, "general.losses={mlm: 1.0}")
    with pytest.raises(ValueError, match="no MLM head"):
        pipeline.run_distill(cfg)
    assert not (cfg.run_dir / "teacher").exists()  # nothing was trained
    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder, "general.enabled=false",
               "task_distill.augment.enabled=true", "task_distill.augment.method=mlm")
    with pytest.raises(ValueError, match="augment.method=embedding"):
        pipeline.run_distill(cfg)


def test_head_mismatch_for_attention_scores_fails_before_the_teacher_trains(tmp_path, tiny_teacher_dir, task_folder):
    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder, "student.heads=2")  # teacher has 4 heads
    with pytest.raises(ValueError, match="use attention_kl"):
        pipeline.run_distill(cfg)
    assert not (cfg.run_dir / "teacher").exists()


def test_a_refused_format_still_ends_with_a_report_and_says_so(tmp_path, tiny_teacher_dir, task_folder, capsys,
                                                               monkeypatch):
    """A forced QDQ check failure: the format is left out (check.json, log, report row), the others are kept,
    bench and report still run, and the exit status and last line name what was refused."""
    from distill.passes import onnx as onnx_export
    from distill.stages import bench

    monkeypatch.setitem(onnx_export.TOLERANCE, "int8-qdq", (0.0, 1.01))  # no artifact can pass this
    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder, "general.enabled=false", "prune.enabled=false",
               "export.formats=[fp32, int8-qdq]", "export.models=[student-task]", "export.teacher_formats=[]", "export.check_examples=8",
               "bench.repeats=5", "bench.test_examples=8")
    assert pipeline.run_distill(cfg) == pipeline.REFUSED_EXIT
    run = cfg.run_dir
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("[distill] finished, but 1 format(s) refused") and "student-task-int8-qdq" in last
    checks = json.loads((run / "export" / "check.json").read_text())
    assert checks["student-task-int8-qdq"]["refused"] is True and "agreement" in checks["student-task-int8-qdq"]["reason"]
    assert checks["student-task-fp32"]["check"]["ok"] is True
    assert not (run / "export" / "student-task-int8-qdq").exists()
    report = (run / "report.md").read_text()
    assert "| student-task | onnxruntime-int8-qdq | refused: check failed:" in report
    rows = {(r["name"], r["runtime"]) for r in json.loads((run / "bench.json").read_text())}
    gpu = set(bench.TORCH_GPU) | set(bench.ORT_GPU) | set(bench.TENSORRT)
    assert {row for row in rows if row[1] not in gpu} == {
        ("teacher", "pytorch-fp32"), ("student-task", "pytorch-fp32"), ("student-task", "onnxruntime-fp32")}
    # a CUDA machine adds each PyTorch model cast to fp16, and to bf16 where the card has it; none without CUDA
    casts = ["pytorch-fp16", "pytorch-bf16"] if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
        else ["pytorch-fp16"] if torch.cuda.is_available() else []
    assert {row for row in rows if row[1] in bench.TORCH_GPU} == {(name, cast) for name in ("teacher", "student-task")
                                                                  for cast in casts}
    assert pipeline.run_distill(cfg) == pipeline.REFUSED_EXIT  # reused: still says so


def test_a_failing_bench_row_never_loses_the_report(tmp_path, tiny_teacher_dir, task_folder, monkeypatch):
    from distill.stages import bench

    real = bench.bench_one

    def flaky(name, path, variant, *args, **kwargs):
        if variant == "fp32":
            raise RuntimeError("onnxruntime session could not start")
        return real(name, path, variant, *args, **kwargs)

    monkeypatch.setattr(bench, "bench_one", flaky)
    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder, "general.enabled=false", "prune.enabled=false",
               "export.formats=[fp32]", "export.models=[student-task]", "export.teacher_formats=[]", "export.check_examples=8",
               "bench.repeats=5", "bench.test_examples=8")
    assert pipeline.run_distill(cfg) == 0
    report = (cfg.run_dir / "report.md").read_text()
    assert "| student-task | onnxruntime-fp32 | failed: RuntimeError: onnxruntime session could not start |" in report
    assert json.loads((cfg.run_dir / "left_out.json").read_text())[0]["status"] == "failed"


def test_plan_prints_the_graph_and_read_only_commands_never_train(tmp_path, tiny_teacher_dir, task_folder, capsys):
    from distill import cli
    from distill.runner.plan import PlanError

    cfg = _cfg(tmp_path, tiny_teacher_dir, task_folder)
    assert pipeline.run_plan(cfg) == 0
    out = capsys.readouterr().out
    for name in ("teacher", "general", "2a", "2b", "prune", "export", "bench"):
        assert f"\n  {name} " in out, name
    assert out.count("to run") == 7
    for command in (pipeline.run_bench, pipeline.run_export):
        with pytest.raises(PlanError, match="only reads trained models, and this run lacks teacher, general, 2a, 2b"):
            command(cfg)
    assert not (cfg.run_dir / "teacher").exists() and not (cfg.run_dir / "export").exists()
    with pytest.raises(SystemExit) as exit_:  # the CLI: the plan, then one line naming the command to run
        cli.main(["bench", f"output_dir={tmp_path / 'runs'}", f"teacher.name={tiny_teacher_dir}",
                  f"task.name={task_folder}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: `bench` only reads trained models") and "make distill" in err[0]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", f"output_dir={tmp_path / 'runs'}"])
    assert exit_.value.code == 2 and "bench.json" in capsys.readouterr().err


def test_the_cli_keeps_the_traceback_of_errors_that_are_not_the_users(monkeypatch, capsys):
    from distill import cli

    def broken(cfg):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(pipeline, "run_plan", broken)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        cli.main(["plan"])


def test_only_the_main_process_speaks(tmp_path, tiny_teacher_dir, task_folder, monkeypatch, capsys):
    """Under accelerate launch (RANK set), rank 1 prints nothing to stdout; rank 0 prints the plan."""
    import sys

    from distill import cli

    args = ["plan", f"output_dir={tmp_path / 'runs'}", f"teacher.name={tiny_teacher_dir}", f"task.name={task_folder}"]
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        cli.main(args)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    monkeypatch.undo()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 0 and "[plan] distill" in capsys.readouterr().out


def test_a_blank_label_cell_is_one_line_from_the_cli(tmp_path, capsys):
    """Errors in the user's own data are the project's errors: one line, exit 2, no traceback."""
    from distill import cli

    data = tmp_path / "my.csv"
    data.write_text("text,label\n" + "".join(f"review number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
                    + "a review with no label,\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["inspect", f"task.name={data}", f"output_dir={tmp_path / 'runs'}", "teacher.name=minilm-l6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)


def test_report_rebuilds_with_the_runs_config_and_notes(tmp_path):
    from distill.report.report import write_report

    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", "seed=7"])
    run = cfg.run_dir
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 7\n")
    row = {"name": "teacher", "runtime": "pytorch-fp32", "score": 0.8, "metric": "accuracy", "p50_ms": 10.0,
           "p95_ms": 11.0, "p50_ms_real": 9.0, "throughput_b32": 100.0, "throughput_b32_real": 120.0, "size_mb": 80.0,
           "params": 22_000_000, "flops_128": 2_000_000_000, "metrics": {}, "device": "cpu (2 threads)"}
    write_report(run, [row], "seed: 7\n", ["Latency: CPU, 2 threads, measured here."], [])
    other = load_config(None, [f"output_dir={tmp_path / 'runs'}", "seed=7", "task.max_len=32"])  # other ARGS
    assert pipeline.run_report(other) == 0
    text = (run / "report.md").read_text()
    assert "Latency: CPU, 2 threads, measured here." in text  # the bench's notes survive
    assert "max_len: 32" not in text and "seed: 7" in text  # the run's config, not this command's
