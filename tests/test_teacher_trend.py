"""An undertrained teacher is flagged (its dev score still rising at the end), and the report shows the
no-teacher baseline beside the distilled student."""
import json
from types import SimpleNamespace

from distill.engine.tracking import read_metrics
from distill.report.report import write_report
from distill.stages.common import RISING_MARGIN, dev_trend
from distill.stages.teacher import check_trend


def _metrics(folder, evals):
    """A teacher's metrics.jsonl as the trainer writes it: loss rows and dev_* rows at eval steps."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for step, score in evals:
        rows.append({"stage": "teacher", "step": step, "time": 0.0, "loss": 0.5, "lr": 1e-5})
        rows.append({"stage": "teacher", "step": step, "time": 0.0, "dev_score": score, "dev_accuracy": score})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _ctx(epochs=3.0, max_steps=0):
    finetune = SimpleNamespace(epochs=epochs, max_steps=max_steps)
    return SimpleNamespace(data=SimpleNamespace(metric="accuracy"),
                           cfg=SimpleNamespace(teacher=SimpleNamespace(finetune=finetune, already_finetuned=False)))


def test_rising_teacher_is_flagged_with_its_numbers(tmp_path, capsys):
    stage = _metrics(tmp_path / "teacher", [(100, 0.61), (200, 0.70), (300, 0.76), (400, 0.81)])
    trend = check_trend(_ctx(epochs=3), stage)
    assert trend["rising"] and trend["steps"] == [100, 200, 300, 400]
    out = capsys.readouterr().out
    assert "undertrained" in out and "0.7600 to 0.8100" in out and "0.8100 @ step 400" in out
    assert "teacher.finetune.epochs=6 (now 3)" in out
    assert json.loads((stage / "trend.json").read_text())["scores"][-1] == 0.81


def test_max_steps_fix_is_doubled(tmp_path, capsys):
    stage = _metrics(tmp_path / "teacher", [(50, 0.5), (100, 0.6)])
    check_trend(_ctx(max_steps=100), stage)
    assert "teacher.finetune.max_steps=200 (now 100)" in capsys.readouterr().out


def test_flat_or_falling_teacher_is_not_flagged(tmp_path, capsys):
    flat = _metrics(tmp_path / "flat" / "teacher", [(100, 0.80), (200, 0.85), (300, 0.851)])  # +0.001 < margin
    falling = _metrics(tmp_path / "falling" / "teacher", [(100, 0.80), (200, 0.86), (300, 0.84)])
    recovered = _metrics(tmp_path / "recovered" / "teacher", [(100, 0.90), (200, 0.80), (300, 0.85)])  # not its best
    for stage in (flat, falling, recovered):
        assert check_trend(_ctx(), stage)["rising"] is False
    assert "undertrained" not in capsys.readouterr().out
    assert 0.851 - 0.85 < RISING_MARGIN


def test_one_evaluation_is_no_trend(tmp_path):
    assert dev_trend(read_metrics(_metrics(tmp_path / "teacher", [(100, 0.7)]) / "metrics.jsonl")) is None
    assert check_trend(_ctx(), tmp_path / "missing") is None


def _result(run_dir, stage, test_score):
    (run_dir / stage).mkdir(parents=True, exist_ok=True)
    (run_dir / stage / "result.json").write_text(json.dumps({"dev": {"score": test_score}, "test": {"score": test_score}}))


def test_report_shows_baseline_and_says_when_it_wins(tmp_path):
    _result(tmp_path, "student-task", 0.8123)
    _result(tmp_path, "student-baseline", 0.8456)
    md, page = write_report(tmp_path, [], "seed: 1\n", [])
    text = md.read_text()
    assert "| no teacher (student-baseline) | 0.8456 |" in text and "| distilled (student-task) | 0.8123 |" in text
    assert "the same student without a teacher scored higher: 0.8456 against 0.8123" in text.lower()
    assert "the teacher may be undertrained or the distillation settings off" in text.lower()
    assert "<td>0.8456</td>" in page.read_text()


def test_report_baseline_losing_has_no_sentence_and_trend_line(tmp_path):
    _result(tmp_path, "student-task", 0.85)
    _result(tmp_path, "student-baseline", 0.80)
    check_trend(_ctx(), _metrics(tmp_path / "teacher", [(100, 0.70), (200, 0.78)]))
    text = write_report(tmp_path, [], "seed: 1\n", [])[0].read_text()
    assert "| no teacher (student-baseline) | 0.8000 |" in text
    assert "without a teacher scored higher" not in text
    assert "Teacher may be undertrained: dev accuracy rose from 0.7000 to 0.7800 over its last evaluations" in text


def test_report_without_baseline_or_trend_says_nothing(tmp_path):
    _result(tmp_path, "student-task", 0.85)
    text = write_report(tmp_path, [], "seed: 1\n", [])[0].read_text()
    assert "student-baseline" not in text and "undertrained" not in text


# ---------------------------------------------------------------- the students: 2b and pruning recovery

def _student_ctx(epochs=5.0, max_steps=0, recovery_epochs=1.0):
    cfg = SimpleNamespace(task_distill=SimpleNamespace(prediction=SimpleNamespace(epochs=epochs, max_steps=max_steps)),
                          prune=SimpleNamespace(recovery=SimpleNamespace(epochs=recovery_epochs, max_steps=0)))
    return SimpleNamespace(data=SimpleNamespace(metric="entity_f1"), cfg=cfg)


def test_a_rising_student_is_flagged_by_the_2b_check_with_its_own_fix(tmp_path, capsys):
    from distill.runner.graph import STAGES
    from distill.stages.spec import Output

    # wnut16's 2b as measured: dev F1 0.3862, 0.4028, 0.4069, 0.4110 at steps 440..1500
    folder = _metrics(tmp_path / "student-task", [(440, 0.3862), (880, 0.4028), (1320, 0.4069), (1500, 0.4110)])
    STAGES["2b"].check(_student_ctx(epochs=5), Output(folder, folder / "model"))
    out = capsys.readouterr().out
    assert "[student] WARNING the student may be undertrained" in out and "0.4069 to 0.4110" in out
    assert "task_distill.prediction.epochs=10 (now 5)" in out and "teacher.finetune" not in out
    saved = json.loads((folder / "trend.json").read_text())
    assert saved["rising"] and saved["fix"] == "task_distill.prediction.epochs=10 (now 5)"
    text = write_report(tmp_path, [], "seed: 1\n", [])[0].read_text()
    assert ("Student may be undertrained: dev entity_f1 rose from 0.4069 to 0.4110 over its last evaluations"
            in text) and "task_distill.prediction.epochs=10 (now 5)" in text


def test_the_recovery_check_names_the_recovery_schedule_and_a_converged_student_says_nothing(tmp_path, capsys):
    from distill.runner.graph import STAGES
    from distill.stages.spec import Output

    pruned = _metrics(tmp_path / "student-pruned", [(60, 0.30), (120, 0.39)])
    STAGES["prune"].check(_student_ctx(recovery_epochs=1), Output(pruned, pruned / "model"))
    assert "prune.recovery.epochs=2 (now 1)" in capsys.readouterr().out
    converged = _metrics(tmp_path / "student-task", [(100, 0.80), (200, 0.85), (300, 0.849)])
    STAGES["2b"].check(_student_ctx(), Output(converged, converged / "model"))
    assert "undertrained" not in capsys.readouterr().out
    text = write_report(tmp_path, [], "seed: 1\n", [])[0].read_text()
    assert "Pruned student may be undertrained" in text and "Student may be undertrained" not in text


def test_a_floored_2b_names_the_floor_not_the_epochs_it_would_not_change(tmp_path, capsys):
    # 2,000 rows x 1.5 epochs is floored to 450 steps: doubling the epochs would still train 450
    from distill.runner.graph import STAGES
    from distill.stages.spec import Output

    folder = _metrics(tmp_path / "student-task", [(150, 0.70), (300, 0.74), (450, 0.78)])
    STAGES["2b"].check(_student_ctx(epochs=1.5), Output(folder, folder / "model", {"floored_steps": 450}))
    out = capsys.readouterr().out
    assert "task_distill.min_steps_2b=900 (now 450)" in out and "prediction.epochs" not in out
