"""Question-answering models: cached teacher logits give the live loss, ONNX parity of start_logits and
end_logits with dynamic (batch, sequence) axes, EM/F1 from ONNX outputs, pruned students reloading with
AutoModelForQuestionAnswering and answering questions."""
import numpy as np
import onnx
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForQuestionAnswering, BertForQuestionAnswering

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.passes import onnx as onnx_export
from distill.engine.batching import make_loader
from distill.passes.export import export_model
from distill.stages.common import batches_and_labels
from distill.data.task_data import TaskData
from distill.engine.evaluation import evaluate, score_batches
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective, with_teacher_logits
from distill.engine.placement import placement
from distill.passes.prune import prune_model
from distill.tasks.question_answering import QuestionAnswering, answer_questions
from students.build import build_student
from students.presets import StudentShape
from tests.conftest import tiny_config
from tests.precision import logit_atol, loss_tolerance
from tests.qa_data import article


@pytest.fixture(scope="module")
def qa_model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_qa")
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config())
    with torch.no_grad():
        model.qa_outputs.weight.mul_(30)  # decisive: argmax agreement is a meaningful check
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def task(tokenizer):
    records = []
    for a in (article("x", 0), article("y", 1)):
        for p in a["paragraphs"]:
            for qa in p["qas"]:
                records.append({"id": qa["id"], "title": a["title"], "context": p["context"], "question": qa["question"],
                                "answers": {"text": [x["text"] for x in qa["answers"]],
                                            "answer_start": [x["answer_start"] for x in qa["answers"]]}})
    data = Dataset.from_list(records)
    kind = QuestionAnswering(doc_stride=16, max_question_len=16)
    task = TaskData("tiny_squad", data, data, data, None, "squad_f1", kind=kind)
    return task, kind.tokenize(data, tokenizer, 48, "test")


def loader(task, dataset, tokenizer, batch_size=5):
    return make_loader(dataset, tokenizer, batch_size, False, collator=task.kind.collator(tokenizer))


def test_cached_teacher_logits_are_unpadded_rows_and_give_the_live_loss(qa_model_dir, task, tokenizer):
    data, windows = task
    kind = data.kind
    teacher = AutoModelForQuestionAnswering.from_pretrained(qa_model_dir).eval()
    place = placement("auto")  # with_teacher_logits' default: fp32 on a CPU machine, bf16 on a GPU one
    cached = with_teacher_logits(teacher, windows, lambda d: loader(data, d, tokenizer, 5), kind=kind)
    for i in (0, 3, len(windows) - 1):
        row = np.asarray(cached[i]["teacher_logits"])
        assert row.shape == (windows[i]["length"], 2)
        with torch.no_grad():  # the reference: one window, full precision, on the CPU
            out = teacher(input_ids=torch.tensor([windows[i]["input_ids"]]),
                          token_type_ids=torch.tensor([windows[i]["token_type_ids"]]))
        start, end = out.start_logits[0].numpy(), out.end_logits[0].numpy()
        np.testing.assert_allclose(row[:, 0], start, atol=logit_atol(place, start))
        np.testing.assert_allclose(row[:, 1], end, atol=logit_atol(place, end))
    student = build_student(StudentShape(2, 32, 4, 32), teacher, kind="qa", init="teacher")
    assert type(student).__name__ == "BertForQuestionAnswering"
    torch.testing.assert_close(student.qa_outputs.weight, teacher.qa_outputs.weight)  # the head is copied too
    matches = build_layer_map({"soft_ce": 1.0, "hard_ce": 1.0}, "uniform", 2, 4)
    objective = DistillObjective(student, teacher, matches, temperature=2.0, kind=kind)
    assert objective.output_only
    batch_cached = next(iter(loader(data, cached, tokenizer, 6)))
    batch_live = {k: v for k, v in batch_cached.items() if k != "teacher_logits"}
    assert batch_cached["teacher_logits"].shape == (*batch_cached["input_ids"].shape, 2)
    student.eval()
    with torch.no_grad():
        loss_cached, terms_cached = objective(batch_cached)
        loss_live, terms_live = objective(batch_live)
    # the live teacher runs here in fp32 on the CPU; the cached logits came from ``place``
    assert loss_cached.item() == pytest.approx(loss_live.item(), **loss_tolerance(place))
    assert terms_cached["soft_ce"] == pytest.approx(terms_live["soft_ce"], **loss_tolerance(place))
    assert terms_live["soft_ce"] > 0 and terms_live["hard_ce"] > 0


def test_onnx_start_and_end_logits_match_pytorch_and_give_the_same_em_f1(tmp_path, qa_model_dir, task, tokenizer):
    data, windows = task
    kind = data.kind
    batches, check_labels = batches_and_labels(loader(data, windows, tokenizer, 5), kind)
    results = export_model(qa_model_dir, tmp_path / "export", "student-task", ["fp32", "fp32-fused", "int8-dynamic"],
                           batches, check_labels, "squad_f1", batches[:2], 48, tensorrt=False, max_metric_drop=0.05,
                           kind=kind, examples=data.test)
    assert results["fp32"]["check"]["examples"] == 2 * len(windows)  # a start row and an end row per window
    assert results["fp32"]["check"]["max_abs_diff"] < 1e-4
    path = tmp_path / "export" / "student-task-fp32-fused" / "model.onnx"
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["start_logits", "end_logits"]
    model = AutoModelForQuestionAnswering.from_pretrained(qa_model_dir).eval()
    sess = onnx_export.session(path)
    for batch, seq in ((1, 5), (3, 17)):
        feed = {"input_ids": np.full((batch, seq), 2000, np.int64), "attention_mask": np.ones((batch, seq), np.int64),
                "token_type_ids": np.zeros((batch, seq), np.int64)}
        start, end = sess.run(["start_logits", "end_logits"], feed)
        assert start.shape == end.shape == (batch, seq)
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        np.testing.assert_allclose(start, ref.start_logits.numpy(), atol=1e-3)
        np.testing.assert_allclose(end, ref.end_logits.numpy(), atol=1e-3)
    # EM/F1 from the ONNX outputs with the same post-processing as PyTorch's evaluation
    torch_scores = evaluate(model, loader(data, windows, tokenizer, 5), data, data.test)
    gold = [kind.gold(b) for b in loader(data, windows, tokenizer, 5)]  # each window's question id and offsets
    onnx_scores = score_batches(data, onnx_export.onnx_batch_logits(sess, batches, kind), gold,
                                [b["attention_mask"] for b in batches], examples=data.test)
    assert onnx_scores["f1"] == pytest.approx(torch_scores["f1"], abs=1e-6)
    assert onnx_scores["exact_match"] == pytest.approx(torch_scores["exact_match"], abs=1e-6)


def test_pruned_qa_student_reloads_and_answers(tmp_path, qa_model_dir, task, tokenizer):
    data, windows = task
    model = AutoModelForQuestionAnswering.from_pretrained(qa_model_dir).eval()
    example = dict(tokenizer(["what is the capital of france?"], ["the capital of france is paris."],
                             return_tensors="pt"))
    pruned, report = prune_model(model, example, 0.5, importance="taylor", loader=loader(data, windows, tokenizer, 4),
                                 taylor_batches=2, layer_ratios=[0.5, 0.25, 0.5, 0.75], kind=data.kind)
    assert type(pruned).__name__ == "PrunedBertForQuestionAnswering" and report.heads_after != report.heads_before
    folder = tmp_path / "pruned"
    pruned.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    again = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    assert type(again).__name__ == "PrunedBertForQuestionAnswering"
    with torch.no_grad():
        torch.testing.assert_close(again(**example).start_logits, pruned(**example).start_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(again(**example).end_logits, pruned(**example).end_logits, atol=1e-5, rtol=0)
    contexts = [r["context"] for r in data.test]
    questions = [r["question"] for r in data.test]
    got = answer_questions(again, tokenizer, questions, contexts, max_len=48, doc_stride=16, max_question_len=16)
    assert all(a in c for a, c in zip(got, contexts))
    # the same answers as the pipeline's own evaluation path (the kind's post-processing over all windows)
    rows = data.kind.answers(*_rows(again, data, windows, tokenizer), data.test)
    assert rows == dict(zip(data.test["id"], got))


def _rows(model, data, windows, tokenizer):
    from distill.engine.evaluation import predict_rows

    return predict_rows(model, loader(data, windows, tokenizer, 5), data.kind)


def test_transformers_question_answering_pipeline_where_it_exists(qa_model_dir, tokenizer):
    """transformers 5 removed the "question-answering" pipeline (pipelines/__init__.py REMOVED_TASKS: "Use the
    `text-generation` pipeline with a chat model instead"); answer_questions is the replacement. Where an installed
    transformers still has the task, the folder must load in it and give answer_questions' answers."""
    import transformers
    from transformers.pipelines import SUPPORTED_TASKS

    context = "the weather was mild. the capital of france is paris, a city founded long ago."
    model = AutoModelForQuestionAnswering.from_pretrained(qa_model_dir).eval()
    (ours,) = answer_questions(model, tokenizer, ["what is the capital of france?"], [context])
    assert ours and ours in context
    if "question-answering" in SUPPORTED_TASKS:  # transformers 4.x
        qa = transformers.pipeline("question-answering", model=str(qa_model_dir))
        assert qa(question="what is the capital of france?", context=context)["answer"].strip() == ours.strip()
    else:
        with pytest.raises(KeyError, match="question-answering has been removed from transformers"):
            transformers.pipeline("question-answering", model=str(qa_model_dir))
