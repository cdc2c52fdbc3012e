"""Token-classification models: teacher-logit caching with variable-length rows, ONNX parity of per-token
logits with dynamic (batch, sequence) axes, pruned students reloading with AutoModelForTokenClassification
and in the transformers pipeline."""
import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForTokenClassification, BertForTokenClassification, pipeline

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.passes import onnx as onnx_export
from distill.engine.batching import make_loader
from distill.passes.export import export_model
from distill.stages.common import batches_and_labels
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective, with_teacher_logits
from distill.engine.placement import placement
from distill.passes.prune import prune_model
from distill.tasks import TOKEN_CLASSIFICATION
from students.build import build_student
from students.presets import StudentShape
from tests.conftest import tiny_config
from tests.precision import logit_atol, loss_tolerance

NAMES = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
SENTENCES = [(["John", "Smith", "lives", "in", "Paris"], [3, 4, 0, 0, 1]),
             (["Nadim", "Ladki"], [3, 4]),
             (["AL-AIN", ",", "United", "Arab", "Emirates", "1996-12-06", "today"], [1, 0, 1, 2, 2, 0, 0]),
             (["a"], [0])] * 3


@pytest.fixture(scope="module")
def token_model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_token")
    torch.manual_seed(0)
    config = tiny_config(num_labels=len(NAMES), id2label=dict(enumerate(NAMES)),
                         label2id={n: i for i, n in enumerate(NAMES)})
    model = BertForTokenClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(30)  # decisive: argmax agreement is a meaningful check
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenized(tokenizer):
    data = Dataset.from_dict({"tokens": [t for t, _ in SENTENCES], "tags": [g for _, g in SENTENCES]})
    return TOKEN_CLASSIFICATION.tokenize(data, tokenizer, 32, "test")


def loader(dataset, tokenizer, batch_size=5, shuffle=False):
    return make_loader(dataset, tokenizer, batch_size, shuffle, collator=TOKEN_CLASSIFICATION.collator(tokenizer))


def test_cached_teacher_logits_are_unpadded_rows_and_give_the_live_loss(token_model_dir, tokenized, tokenizer):
    teacher = AutoModelForTokenClassification.from_pretrained(token_model_dir).eval()
    place = placement("auto")  # with_teacher_logits' default: fp32 on a CPU machine, bf16 on a GPU one
    cached = with_teacher_logits(teacher, tokenized, lambda d: loader(d, tokenizer, 5), kind=TOKEN_CLASSIFICATION)
    for i in (0, 2, 3):  # each row is the example's own (length, labels) logits, in dataset order
        row = np.asarray(cached[i]["teacher_logits"])
        assert row.shape == (tokenized[i]["length"], len(NAMES))
        with torch.no_grad():  # the reference: one example, full precision, on the CPU
            alone = teacher(input_ids=torch.tensor([tokenized[i]["input_ids"]])).logits[0].numpy()
        np.testing.assert_allclose(row, alone, atol=logit_atol(place, alone))
    student = build_student(StudentShape(2, 32, 4, 32), teacher, kind="token", label_names=NAMES, init="teacher")
    matches = build_layer_map({"soft_ce": 1.0, "hard_ce": 1.0}, "uniform", 2, 4)
    objective = DistillObjective(student, teacher, matches, temperature=2.0, kind=TOKEN_CLASSIFICATION)
    assert objective.output_only
    batch_cached = next(iter(loader(cached, tokenizer, 6)))
    batch_live = {k: v for k, v in batch_cached.items() if k != "teacher_logits"}
    assert batch_cached["teacher_logits"].shape[:2] == batch_cached["input_ids"].shape
    student.eval()
    with torch.no_grad():
        loss_cached, terms_cached = objective(batch_cached)
        loss_live, terms_live = objective(batch_live)
    # the live teacher runs here in fp32 on the CPU; the cached logits came from ``place``
    assert loss_cached.item() == pytest.approx(loss_live.item(), **loss_tolerance(place))
    assert terms_cached["soft_ce"] == pytest.approx(terms_live["soft_ce"], **loss_tolerance(place))


def test_onnx_token_logits_match_pytorch_with_dynamic_axes(tmp_path, token_model_dir, tokenized, tokenizer):
    batches, labels = batches_and_labels(loader(tokenized, tokenizer, 5), TOKEN_CLASSIFICATION)
    assert sorted(len(row) for row in labels) == sorted(tokenized["length"])  # unpadded rows, loader order
    results = export_model(token_model_dir, tmp_path / "export", "student-task", ["fp32", "fp32-fused", "int8-dynamic"],
                           batches, labels, "entity_f1", batches[:2], 32, tensorrt=False, max_metric_drop=0.05,
                           kind=TOKEN_CLASSIFICATION, label_names=NAMES)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    check = results["fp32"]["check"]
    assert check["examples"] == real_tokens and check["unit"] == "real tokens"  # padding excluded
    assert check["max_abs_diff"] < 1e-4 and check["metric"] == "entity_f1"
    model = AutoModelForTokenClassification.from_pretrained(token_model_dir).eval()
    predicted, gold = [], []
    with torch.no_grad():  # entity F1 of the PyTorch model, computed independently, sentence by sentence
        for i in range(len(tokenized)):
            logits = model(input_ids=torch.tensor([tokenized[i]["input_ids"]])).logits[0].numpy()
            words = np.asarray(tokenized[i]["labels"]) != -100
            predicted.append([NAMES[t] for t in logits[words].argmax(-1)])
            gold.append([NAMES[t] for t in np.asarray(tokenized[i]["labels"])[words]])
    from seqeval.metrics import f1_score

    assert check["reference_score"] == pytest.approx(f1_score(gold, predicted), abs=1e-9)
    sess = onnx_export.session(tmp_path / "export" / "student-task-fp32-fused" / "model.onnx")
    for batch, seq in ((1, 5), (3, 17)):
        feed = {"input_ids": np.full((batch, seq), 2000, np.int64), "attention_mask": np.ones((batch, seq), np.int64),
                "token_type_ids": np.zeros((batch, seq), np.int64)}
        out = sess.run(["logits"], feed)[0]
        assert out.shape == (batch, seq, len(NAMES))
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        np.testing.assert_allclose(out, ref, atol=1e-3)


def test_a_failed_token_check_is_caught():
    ref = np.eye(3)[[0, 1, 2, 0]]
    bad = onnx_export.check("fp32", ref, np.eye(3)[[0, 2, 1, 0]], None, "entity_f1", 0.01,
                            score_fn=lambda logits: float((logits.argmax(-1) == 0).mean()), unit="real tokens")
    assert not bad.ok and bad.agreement == 0.5


def test_pruned_token_student_reloads_and_runs_in_the_pipeline(tmp_path, token_model_dir, tokenizer):
    model = AutoModelForTokenClassification.from_pretrained(token_model_dir).eval()
    example = dict(tokenizer(["John Smith lives in Paris"], return_tensors="pt"))
    pruned, report = prune_model(model, example, 0.5, importance="magnitude", layer_ratios=[0.5, 0.25, 0.5, 0.75])
    assert type(pruned).__name__ == "PrunedBertForTokenClassification" and report.heads_after != report.heads_before
    folder = tmp_path / "pruned"
    pruned.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    again = AutoModelForTokenClassification.from_pretrained(folder).eval()
    assert type(again).__name__ == "PrunedBertForTokenClassification"
    with torch.no_grad():
        np.testing.assert_allclose(again(**example).logits.numpy(), pruned(**example).logits.numpy(), atol=1e-5)
        expected = again(**example).logits[0].argmax(-1).tolist()
    words = pipeline("token-classification", model=str(folder), aggregation_strategy="none")("John Smith lives in Paris")
    tokens = tokenizer.convert_ids_to_tokens(example["input_ids"][0])
    predicted = {w["index"]: w["entity"] for w in words}
    assert predicted == {i: NAMES[t] for i, t in enumerate(expected) if NAMES[t] != "O" and tokens[i] not in ("[CLS]", "[SEP]")}
    grouped = pipeline("token-classification", model=str(folder), aggregation_strategy="simple")("John Smith lives in Paris")
    # grouping must keep what the token view found: groups exist exactly when tagged tokens do, of their types
    assert bool(grouped) == bool(predicted)
    assert {g["entity_group"] for g in grouped} <= {tag.split("-", 1)[-1] for tag in predicted.values()}
    assert predicted, "the fixture model tags no token: the pipeline check above would be vacuous"
