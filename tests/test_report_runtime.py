"""The bench table separates what the runtime buys from what distillation buys, and says whether INT8 pays."""
from distill.report.report import _table, runtime_notes


def _row(name, runtime, p50, b32=100.0):
    return dict(name=name, runtime=runtime, score=0.8, metric="accuracy", p50_ms=p50, p95_ms=p50, p50_ms_real=p50,
                throughput_b32=b32, throughput_b32_real=b32, size_mb=1.0, params=10, flops_128=10)


ROWS = [_row("teacher", "pytorch-fp32", 20.0, 50.0), _row("teacher", "onnxruntime-fp32-fused", 10.0, 100.0),
        _row("teacher", "onnxruntime-int8-dynamic", 9.8, 104.0),
        _row("student-task", "onnxruntime-fp32-fused", 2.5, 400.0),
        _row("student-task", "onnxruntime-int8-dynamic", 2.4, 410.0)]


def test_same_runtime_column_compares_with_the_teacher_in_that_runtime():
    table = _table(ROWS, ROWS[0])
    student = next(line for line in table if line.startswith("| student-task | onnxruntime-fp32-fused"))
    cells = [c.strip() for c in student.strip("|").split("|")]
    assert cells[9] == "8.0x"  # against the PyTorch teacher: runtime and distillation together
    assert cells[10] == "4.0x"  # against the ONNX fp32-fused teacher: distillation alone


def test_int8_that_is_not_faster_is_called_out_from_the_measured_rows():
    notes = " ".join(runtime_notes(ROWS))
    assert "Runtime alone" in notes and "(2.0x, batch 1)" in notes
    assert "INT8 dynamic does not pay on this machine" in notes and "teacher 9.8 vs 10.0 ms" in notes


def test_int8_that_is_faster_is_reported_as_paying():
    rows = ROWS[:2] + [_row("teacher", "onnxruntime-int8-dynamic", 6.0, 180.0)]
    notes = " ".join(runtime_notes(rows))
    assert "INT8 dynamic pays on this machine for teacher" in notes and "does not pay" not in notes


def test_no_notes_without_the_rows_they_are_read_from():
    assert runtime_notes(ROWS[:1]) == []


def test_teacher_formats_are_checked_and_skipped_when_the_teacher_ships():
    import pytest

    from distill.stages.common import teacher_baseline_formats
    from distill.config import ConfigError, ExportConfig

    with pytest.raises(ConfigError, match="export.teacher_formats"):
        ExportConfig(teacher_formats=["int4"]).validate("export")
    assert teacher_baseline_formats(ExportConfig()) == ["fp32-fused", "int8-dynamic"]
    assert teacher_baseline_formats(ExportConfig(models=["teacher", "student-task"])) == []


def test_exact_match_gets_its_own_column_and_a_duplicate_of_the_score_does_not():
    qa = [dict(_row("teacher", "pytorch-fp32", 20.0), score=0.33, metrics={"exact_match": 0.195, "f1": 0.33}),
          dict(_row("student-task", "onnxruntime-int8-dynamic", 2.0), score=0.31,
               metrics={"exact_match": 0.18, "f1": 0.31})]
    table = _table(qa, qa[0])
    assert "other test metrics" in table[0] and table[1].count("---") == len(table[0].strip("|").split("|"))
    student = [c.strip() for c in table[3].strip("|").split("|")]
    assert student[3] == "exact_match 0.1800" and student[4] == "93.9%"
    plain = _table(ROWS, ROWS[0])  # sentence tasks: no extra column
    assert "other test metrics" not in plain[0]
