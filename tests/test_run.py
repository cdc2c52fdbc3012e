"""Stage folders, crash-safe replaces and the metrics file: what a kill at a bad moment leaves behind."""
import json
from pathlib import Path

import pytest
import yaml

from distill.config import TrainConfig, load_config
from distill.stages.context import RunContext
from distill.base.fsutil import recover_folder, remove_folder, replace_folder
from distill.engine.objectives import FineTuneObjective
from distill.stages.records import StageConflictError, StageRun
from distill.engine.tracking import Tracker, read_metrics
from tests.test_trainer import Crash, CrashingObjective, CrashOnRename, _run, _setup


def _write(text):
    return lambda folder: (folder / "a.txt").write_text(text)


def test_replace_folder_leaves_a_complete_copy_at_every_crash_point(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    replace_folder(folder, _write("old"))

    def crash(tmp):  # killed while writing the new copy: the old one stays in place
        (tmp / "a.txt").write_text("half")
        raise Crash()
    with pytest.raises(Crash):
        replace_folder(folder, crash)
    assert recover_folder(folder) and (folder / "a.txt").read_text() == "old"

    with monkeypatch.context() as patch:  # killed between the two renames: restored from f.old
        CrashOnRename(patch, "f")
        with pytest.raises(Crash):
            replace_folder(folder, _write("new"))
    assert not folder.exists() and (tmp_path / "f.old").is_dir()
    assert recover_folder(folder) and (folder / "a.txt").read_text() == "old"

    replace_folder(folder, _write("new"))  # the next replace goes through and cleans up
    assert (folder / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]

    (tmp_path / "f.old").mkdir()  # killed while deleting the old copy: the new one is kept
    assert recover_folder(folder) and (folder / "a.txt").read_text() == "new"
    assert not (tmp_path / "f.old").exists()

    remove_folder(folder)
    assert list(tmp_path.iterdir()) == [] and not recover_folder(folder)


def test_export_folder_swap_killed_midway_keeps_the_previous_artifact(tmp_path, monkeypatch):
    from distill.passes.onnx import CheckResult, swap_in, write_folder

    model_dir = tmp_path / "src"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    result = CheckResult("fp32", 0.0, 1.0, 1e-4, 0.99, 4, "accuracy", 1.0, 1.0, 0.01)
    folder = tmp_path / "m-fp32"
    for text in ("first", "second"):
        (tmp_path / "a.onnx").write_text(text)
        write_folder(tmp_path / "a.onnx", tmp_path / "work" / "m-fp32.tmp", model_dir, result, {})
        if text == "first":
            swap_in(tmp_path / "work" / "m-fp32.tmp", folder)
    with monkeypatch.context() as patch:
        CrashOnRename(patch, "m-fp32")
        with pytest.raises(Crash):
            swap_in(tmp_path / "work" / "m-fp32.tmp", folder)
    assert recover_folder(folder) and (folder / "model.onnx").read_text() == "first"
    assert json.loads((folder / "check.json").read_text())["variant"] == "fp32"
    swap_in(tmp_path / "work" / "m-fp32.tmp", folder)
    assert (folder / "model.onnx").read_text() == "second" and not (tmp_path / "m-fp32.old").exists()


def _stage(run_dir, **settings):
    return StageRun(run_dir, "stage", settings or {"x": 1})


def test_kill_between_training_and_the_stage_record_does_not_train_again(tmp_path, tiny_teacher_dir, task_folder,
                                                                       tokenizer):
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, save_every=0, log_every=1)
    stage = _stage(tmp_path)
    assert not stage.is_done()
    stage.start()
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    _run(FineTuneObjective(model), loader, stage.dir, tokenizer, cfg)
    # killed here: scores not computed, stage not recorded done; the same command runs again

    stage = _stage(tmp_path)
    assert not stage.is_done()
    stage.start()
    model, loader = _setup(tiny_teacher_dir, task_folder, tokenizer)
    result = _run(CrashingObjective(model, crash_at=1), loader, stage.dir, tokenizer, cfg)  # a batch would crash
    assert result.step == 3
    stage.finish({"steps": result.step})
    assert stage.is_done() and not (stage.dir / "checkpoint").exists() and (stage.dir / "model").is_dir()


def test_done_stage_cleans_what_a_kill_left_behind(tmp_path):
    stage = _stage(tmp_path)
    stage.start()
    replace_folder(stage.model_dir, _write("weights"))
    replace_folder(stage.dir / "checkpoint", _write("state"))
    stage.finish({"score": 1.0})
    assert not (stage.dir / "checkpoint").exists()
    stage.model_dir.rename(stage.dir / "model.old")  # as if killed mid-swap just before finish
    (stage.dir / "checkpoint").mkdir()  # as if killed between DONE and the checkpoint's removal
    assert _stage(tmp_path).is_done()
    assert (stage.model_dir / "a.txt").read_text() == "weights" and not (stage.dir / "checkpoint").exists()


def test_config_yaml_is_kept_when_a_finished_stage_refuses_the_run(tmp_path):
    def context(seed):
        return RunContext(load_config(None, [f"output_dir={tmp_path}", "run_id=r", f"seed={seed}"]))

    first = context(1)
    assert not (first.run_dir / "config.yaml").exists()  # nothing started yet
    stage = StageRun(first.run_dir, "stage", {"seed": 1})
    assert not stage.is_done()
    stage.start()
    stage.finish({})
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["seed"] == 1

    second = context(2)
    with pytest.raises(StageConflictError):
        StageRun(second.run_dir, "stage", {"seed": 2}).is_done()
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["seed"] == 1  # still describes the run

    third = context(3)  # an unfinished stage restarts with the new settings: the config follows it
    other = StageRun(third.run_dir, "other", {"seed": 3})
    assert not other.is_done()
    other.start()
    assert yaml.safe_load((third.run_dir / "config.yaml").read_text())["seed"] == 3


def test_a_torn_last_line_of_metrics_is_dropped_and_logging_goes_on(tmp_path):
    tracker = Tracker(tmp_path, "t", mode="disabled")
    tracker.log({"loss": 1.0}, 1)
    tracker.log({"loss": 0.5}, 2)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"stage": "t", "step": 3, "lo')  # SIGKILL in the middle of a write
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]

    tracker = Tracker(tmp_path, "t", mode="disabled")  # the resumed run
    tracker.log({"loss": 0.25}, 3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert all(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())


def test_metrics_repeated_by_a_resume_are_read_once(tmp_path):
    lines = [{"stage": "t", "step": s, "loss": s / 10} for s in (1, 2, 3)]
    lines += [{"stage": "t", "step": 2, "dev_score": 0.5}]
    lines += [{"stage": "t", "step": s, "loss": s / 100} for s in (3, 4)]  # resumed from the step-2 checkpoint
    Path(tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("loss", r.get("dev_score"))) for r in records] == [
        (1, 0.1), (2, 0.2), (2, 0.5), (3, 0.03), (4, 0.04)]

    Tracker(tmp_path, "t", mode="disabled").rewind(2)  # what the trainer does when it resumes at step 2
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 2]


def test_a_stage_records_its_own_wall_time_without_the_stages_that_ran_inside_it(tmp_path, monkeypatch):
    """2a pulls in the general stage after its own first look: general's seconds are not 2a's too. A
    stage whose first look found it to do counts its preparation (before ``start``)."""
    from distill.stages import records as run

    clock = [100.0]
    monkeypatch.setattr(run.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(run, "STAGE_SECONDS", {})
    outer, inner = StageRun(tmp_path, "student-intermediate", {"a": 1}), StageRun(tmp_path, "student-general", {"b": 2})
    assert not outer.is_done()
    clock[0] += 5  # 2a prepares
    assert not inner.is_done()
    clock[0] += 30  # general's preparation and training
    inner.start()
    inner.finish({"steps": 3})
    clock[0] += 2
    outer.start()
    clock[0] += 60  # 2a trains
    outer.finish({"steps": 4})
    assert run.STAGE_SECONDS == {"student-general": 30.0, "student-intermediate": 67.0}
    assert json.loads((tmp_path / "student-intermediate" / "result.json").read_text()) == {"steps": 4, "seconds": 67.0}


def test_the_distill_summary_gives_each_stage_and_the_ratio_to_the_teacher():
    from distill.runner.pipeline import describe_times

    line = describe_times({"teacher": 120.0, "student-task": 90.0, "bench": 30.0}, 300.0)
    assert line == "[distill] wall time 5.0 min: teacher 2.0, 2b 1.5, bench 0.5, other 1.0 (minutes); 2.5x the teacher stage"
    assert "no teacher stage ran in this command" in describe_times({"student-task": 90.0}, 100.0)


def test_an_unfinished_stage_rerun_with_other_settings_is_set_aside_never_deleted(tmp_path, capsys):
    stage = StageRun(tmp_path, "stage", {"lr": 2e-5})
    stage.start()
    replace_folder(stage.dir / "checkpoint", _write("step 3"))  # killed at step 3
    changed = StageRun(tmp_path, "stage", {"lr": 1e-5})
    assert changed.status() == ("changed", "lr: 2e-05 -> 1e-05")
    assert not changed.is_done()
    assert (tmp_path / "stage.aside-1" / "checkpoint" / "a.txt").read_text() == "step 3"
    assert not (tmp_path / "stage").exists()
    assert "lr: 2e-05 -> 1e-05" in capsys.readouterr().out
    changed.start()
    again = StageRun(tmp_path, "stage", {"lr": 3e-5})
    assert not again.is_done() and (tmp_path / "stage.aside-2").is_dir()  # a second one does not overwrite the first
