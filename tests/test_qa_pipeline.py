"""Extractive QA end to end on tiny random models over a small local SQuAD-format folder (logic only; the real
run is `make distill EXP=experiments/squad_minilm.yaml`)."""
import json

import pytest
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from distill.runner import pipeline as stages
from distill.config import load_config
from distill.tasks.question_answering import answer_questions
from tests.conftest import TRAINING_SECTIONS, tiny_overrides
from tests.qa_data import squad_folder


def _cfg(tmp_path, teacher, task, *extra):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the capital of france is paris and day {i} was mild." for i in range(100)))
    overrides = tiny_overrides(tmp_path, teacher, task, "task.doc_stride=16", "task.max_question_len=16",
                               "student.init=teacher", f"general.corpus={corpus}", "general.max_len=32",
                               "general.teacher=task", "task_distill.prediction_losses={soft_ce: 1.0, hard_ce: 0.5}",
                               "task_distill.temperature=2.0", "export.check_examples=16",
                               "export.formats=[fp32, fp32-fused]", "bench.repeats=5", "bench.test_examples=40",
                               "teacher.gate=warn",  # a 3-step tiny teacher learns nothing
                               *extra, hidden=32, max_len=48, steps=3, sections=TRAINING_SECTIONS)
    return load_config(None, overrides)


def test_qa_pipeline_end_to_end_on_tiny_models(tmp_path, tiny_encoder_dir):
    cfg = _cfg(tmp_path, tiny_encoder_dir, squad_folder(tmp_path / "squad"))
    stages.run_distill(cfg)
    run = cfg.run_dir
    for stage in ("teacher", "student-general", "student-intermediate", "student-task", "student-pruned", "export"):
        assert (run / stage / "DONE").is_file(), stage
    for stage in ("teacher", "student-task", "student-pruned"):
        model = AutoModelForQuestionAnswering.from_pretrained(run / stage / "model")
        assert type(model).__name__.endswith("ForQuestionAnswering")
        result = json.loads((run / stage / "result.json").read_text())
        assert {"exact_match", "f1", "score"} <= set(result["test"])
        assert 0.0 <= result["test"]["exact_match"] <= result["test"]["f1"] <= 1.0
    records = [json.loads(line) for line in (run / "student-task" / "metrics.jsonl").read_text().splitlines()]
    terms = next(r for r in reversed(records) if "loss" in r)
    assert {"soft_ce", "hard_ce"} <= set(terms)
    check = json.loads((run / "export" / "student-pruned-fp32" / "check.json").read_text())
    assert check["max_abs_diff"] < 1e-3 and check["agreement"] >= 0.999
    bench = json.loads((run / "bench.json").read_text())
    by_runtime = {(r["name"], r["runtime"]): r for r in bench}
    torch_f1 = by_runtime[("student-task", "pytorch-fp32")]["score"]
    assert by_runtime[("student-task", "onnxruntime-fp32")]["score"] == pytest.approx(torch_f1, abs=1e-6)
    assert by_runtime[("student-task", "pytorch-fp32")]["metric"] == "squad_f1"
    # every ONNX row carries exact match beside F1, computed from its own outputs
    onnx_em = by_runtime[("student-task", "onnxruntime-fp32")]["metrics"]
    assert onnx_em["exact_match"] == pytest.approx(by_runtime[("student-task", "pytorch-fp32")]["metrics"]["exact_match"])
    assert onnx_em["f1"] == pytest.approx(torch_f1, abs=1e-6)
    assert "exact_match" in (run / "report.md").read_text()
    # the pruned student reloads with transformers alone (after `import students`) and answers questions
    folder = run / "student-pruned" / "model"
    model = AutoModelForQuestionAnswering.from_pretrained(folder)
    context = "The capital of france is paris, a city founded long ago."
    (answer,) = answer_questions(model, AutoTokenizer.from_pretrained(folder), ["What is the capital of france?"],
                                 [context])
    assert answer and answer in context


def test_a_teacher_of_the_other_kind_is_refused_before_training(tmp_path, tiny_teacher_dir, task_folder):
    squad = squad_folder(tmp_path / "squad")
    cfg = _cfg(tmp_path, tiny_teacher_dir, squad, "teacher.already_finetuned=true")
    with pytest.raises(ValueError, match="is a BertForSequenceClassification but the task is question_answering"):
        stages.run_teacher(cfg)
    qa_teacher = tmp_path / "qa_teacher"
    AutoModelForQuestionAnswering.from_pretrained(tiny_teacher_dir).save_pretrained(qa_teacher)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(qa_teacher)
    cfg = _cfg(tmp_path, qa_teacher, task_folder, "teacher.already_finetuned=true", "task.max_len=32")
    with pytest.raises(ValueError, match="is a BertForQuestionAnswering but the task is sequence_classification"):
        stages.run_teacher(cfg)


def test_a_qa_experiment_on_classification_data_stops_before_any_stage(tmp_path, tiny_encoder_dir, task_folder):
    cfg = _cfg(tmp_path, tiny_encoder_dir, task_folder, "task.kind=question_answering")
    with pytest.raises(ValueError, match="task.kind=question_answering but .* is not SQuAD-format JSON"):
        stages.run_distill(cfg)
    cfg = _cfg(tmp_path, tiny_encoder_dir, squad_folder(tmp_path / "squad"), "task.max_len=24")
    with pytest.raises(ValueError, match="task.max_len=24 leaves 5 context tokens"):
        stages.run_distill(cfg)
    assert not (cfg.run_dir / "teacher").exists()


def test_a_qa_teacher_that_does_not_beat_the_overlap_baseline_is_stopped(tmp_path, tiny_encoder_dir):
    from distill.stages.teacher import TeacherGateError

    # templated paragraphs: "What is the capital of france?" shares 4 words with "The capital of france is paris,
    # ...", so the overlap baseline answers "paris," and scores high; a 3-step tiny teacher does not
    cfg = _cfg(tmp_path, tiny_encoder_dir, squad_folder(tmp_path / "squad"), "teacher.gate=stop")
    with pytest.raises(TeacherGateError, match="overlap sentence, first 1 non-question words"):
        stages.run_task(cfg)
    assert (cfg.run_dir / "teacher" / "DONE").is_file()
    assert not (cfg.run_dir / "student-task").exists()
