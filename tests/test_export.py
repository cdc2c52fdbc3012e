import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from distill.passes import onnx as onnx_export
from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.passes.export import export_model
from distill.stages.common import batches_and_labels
from distill.data.task_data import load_local
from distill.passes.prune import prune_model

MAX_DROP = 0.01


@pytest.fixture()
def decisive_teacher(tmp_path, tiny_teacher_dir, tokenizer):
    """The tiny model with a sharpened classifier, so argmax agreement is a meaningful check."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    folder = tmp_path / "decisive"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def dev_batches(task_folder, tokenizer):
    """(batches, labels) over the task's train split, the rows the export check compares."""
    data = load_local(task_folder)
    return batches_and_labels(make_loader(tokenize(data.train, tokenizer, 32), tokenizer, 8, shuffle=False))


def _pytorch_logits(folder, batches) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return np.concatenate([model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy() for b in batches])


def _ort_logits(folder, batches) -> np.ndarray:
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], b)[0] for b in batches])


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_format_is_checked_kept_and_loadable_without_our_code(tmp_path, decisive_teacher, tokenizer,
                                                                    dev_batches, capsys):
    batches, labels = dev_batches
    # as run_export does: each calibration batch at its own length (fed one at a time)
    calibration = batches[:3] + [{k: np.pad(v, ((0, 0), (0, 3))) for k, v in batches[3].items()}]
    results = export_model(decisive_teacher, tmp_path / "export", "student-task", list(onnx_export.TOLERANCE),
                           batches, labels, "accuracy", calibration, 32, tensorrt=True, max_metric_drop=MAX_DROP)
    assert set(results) == set(onnx_export.TOLERANCE)
    log = capsys.readouterr().out
    reference = _pytorch_logits(decisive_teacher, batches)  # computed here, not taken from export_model
    reference_accuracy = float(np.mean(reference.argmax(-1) == labels))
    texts = ["a wonderful film", "a dreadful film indeed"]
    model = AutoModelForSequenceClassification.from_pretrained(decisive_teacher).eval()
    with torch.no_grad():
        ref = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    for variant, info in results.items():
        folder = tmp_path / "export" / f"student-task-{variant}"
        # a user needs only onnxruntime + the folder: tokenizer, config and model are all there
        tok = AutoTokenizer.from_pretrained(folder)
        assert AutoConfig.from_pretrained(folder).id2label
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = {k: v.astype(np.int64) for k, v in tok(texts, padding=True, return_tensors="np").items()}
        out = sess.run(["logits"], feed)[0]
        assert out.shape == ref.shape
        # independent of export_model's own check: ORT against PyTorch on the check rows, here
        logits = _ort_logits(folder, batches)
        diff_limit, agreement_limit = onnx_export.TOLERANCE[variant]
        if variant in ("fp32", "fp32-fused", "fp16"):
            np.testing.assert_allclose(out, ref, atol=diff_limit)
            np.testing.assert_allclose(logits, reference, atol=diff_limit)
        agreement = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
        accuracy = float(np.mean(logits.argmax(-1) == labels))
        assert agreement >= agreement_limit and reference_accuracy - accuracy <= MAX_DROP, variant
        # what check.json and the log report are these figures
        check = json.loads((folder / "check.json").read_text())
        assert check["agreement"] == pytest.approx(agreement) and check["score"] == pytest.approx(accuracy)
        assert check["reference_score"] == pytest.approx(reference_accuracy) and check["metric"] == "accuracy"
        assert check["metric_drop"] == pytest.approx(reference_accuracy - accuracy)
        assert check["metric_drop_limit"] == MAX_DROP and check["ok"] is True
        assert f"student-task {variant}: " in log and f"dev accuracy {accuracy:.4f} vs {reference_accuracy:.4f}" in log
    fused_ops = json.loads((tmp_path / "export" / "student-task-fp32-fused" / "check.json").read_text())["fused_ops"]
    assert fused_ops.get("Attention", 0) == 4 and fused_ops.get("SkipLayerNormalization", 0) >= 4
    trt = (tmp_path / "export" / "student-task-fp16" / "tensorrt.txt").read_text()
    kept = tmp_path / "export" / "student-task-fp16" / "model.onnx"
    assert f"--onnx={kept} " in trt  # the kept path, not the work folder's
    size32 = results["fp32"]["size_mb"]
    assert results["int8-dynamic"]["size_mb"] < 0.5 * size32
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(
        [f"student-task-{v}" for v in onnx_export.TOLERANCE] + ["student-task.json", "library-warnings.log"])
    # (no work folder left; the library warnings held back from the terminal are in the log)


def test_pruned_model_exports_with_dynamic_axes(tmp_path, decisive_teacher, tokenizer, dev_batches):
    model = AutoModelForSequenceClassification.from_pretrained(decisive_teacher).eval()
    example = dict(tokenizer(["a film"], return_tensors="pt"))
    pruned, _ = prune_model(model, example, 0.5, importance="magnitude", layer_ratios=[0.5, 0.25, 0.5, 0.75])
    folder = tmp_path / "pruned"
    pruned.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    batches, labels = dev_batches
    results = export_model(folder, tmp_path / "export", "student-pruned", ["fp32", "fp32-fused", "int8-dynamic"],
                           batches, labels, "accuracy", batches[:2], 32, tensorrt=False, max_metric_drop=MAX_DROP)
    sess = ort.InferenceSession(results["fp32-fused"]["folder"] + "/model.onnx", providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 5), (3, 17)):  # dynamic batch and sequence axes
        feed = {"input_ids": np.full((batch, seq), 2000, np.int64), "attention_mask": np.ones((batch, seq), np.int64),
                "token_type_ids": np.zeros((batch, seq), np.int64)}
        assert sess.run(["logits"], feed)[0].shape == (batch, 2)


def test_a_failed_check_refuses_that_format_only_and_leaves_its_earlier_artifact_intact(
        tmp_path, decisive_teacher, dev_batches, monkeypatch):
    batches, labels = dev_batches
    formats = ["fp32", "int8-dynamic"]
    # first: int8 fails (max diff limit 0) in a fresh folder: int8 is refused with its figures, fp32 is kept
    monkeypatch.setitem(onnx_export.TOLERANCE, "int8-dynamic", (0.0, 0.97))
    fresh = tmp_path / "fresh"
    results = export_model(decisive_teacher, fresh, "student-task", formats, batches, labels, "accuracy", batches[:2],
                           32, tensorrt=False, max_metric_drop=MAX_DROP)
    assert results["int8-dynamic"]["refused"] is True and "folder" not in results["int8-dynamic"]
    assert results["int8-dynamic"]["reason"].startswith("check failed: max logit diff")
    assert results["int8-dynamic"]["check"]["ok"] is False
    assert (fresh / "student-task-fp32" / "model.onnx").is_file()
    assert sorted(p.name for p in fresh.iterdir()) == ["library-warnings.log", "student-task-fp32",
                                                       "student-task.json"]  # no int8 folder
    assert json.loads((fresh / "student-task.json").read_text())["int8-dynamic"]["refused"] is True
    # then: an earlier finished int8 artifact survives a refused re-export byte for byte
    monkeypatch.undo()
    out = tmp_path / "export"
    export_model(decisive_teacher, out, "student-task", formats, batches, labels, "accuracy", batches[:2], 32,
                 tensorrt=False, max_metric_drop=MAX_DROP)
    before = _tree(out / "student-task-int8-dynamic")
    monkeypatch.setitem(onnx_export.TOLERANCE, "int8-dynamic", (0.0, 0.97))
    export_model(decisive_teacher, out, "student-task", formats, batches, labels, "accuracy", batches[:2], 32,
                 tensorrt=False, max_metric_drop=MAX_DROP)
    assert _tree(out / "student-task-int8-dynamic") == before
    assert not [p for p in out.iterdir() if p.name.startswith(".work")]


def test_a_format_that_cannot_be_built_is_refused_not_fatal(tmp_path, decisive_teacher, dev_batches, monkeypatch):
    batches, labels = dev_batches

    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] calibration failed\nsecond line")

    monkeypatch.setattr(onnx_export, "quantize_int8_qdq", broken)
    results = export_model(decisive_teacher, tmp_path, "student-task", ["fp32", "int8-qdq"], batches, labels,
                           "accuracy", batches[:2], 32, tensorrt=False, max_metric_drop=MAX_DROP)
    assert results["int8-qdq"] == {"refused": True,
                                   "reason": "could not be built: RuntimeError: [ONNXRuntimeError] calibration failed"}
    assert (tmp_path / "student-task-fp32" / "model.onnx").is_file()
    assert not (tmp_path / "student-task-int8-qdq").exists()


def test_regression_agreement_scales_with_the_labels_spread():
    """Two outputs agree within a quarter of the labels' sd: 0.3 apart is agreement for labels over -4..4
    (sd ~2.3) and disagreement for labels over 0..1 (sd ~0.29)."""
    reference = np.linspace(-4, 4, 100)[:, None]
    candidate = reference + 0.3
    wide = reference[:, 0]
    narrow = (wide + 4) / 8
    assert onnx_export.check("int8-dynamic", reference, candidate, wide, "pearson", 0.01).agreement == 1.0
    assert onnx_export.check("int8-dynamic", reference, candidate, narrow, "pearson", 0.01).agreement == 0.0
    assert onnx_export.regression_width(np.ones(5)) == 0.1  # no spread: the old absolute width


def test_the_metric_drop_is_bounded_even_when_agreement_passes():
    """int8-qdq accepts 95% agreement; 4 flipped predictions of 100, all from right to wrong, cost 4 points."""
    labels = np.arange(100) % 2
    reference = np.eye(2)[labels] * 3.0  # always right
    candidate = reference.copy()
    candidate[:4] = candidate[:4, ::-1]
    result = onnx_export.check("int8-qdq", reference, candidate, labels, "accuracy", max_metric_drop=0.01)
    assert result.agreement == pytest.approx(0.96) and result.agreement >= result.agreement_limit
    assert result.reference_score == 1.0 and result.score == pytest.approx(0.96)
    assert result.metric_drop == pytest.approx(0.04) and not result.ok
    assert "drop 4.00 points, limit 1.00" in result.describe()
    assert onnx_export.check("int8-qdq", reference, candidate, labels, "accuracy", max_metric_drop=0.05).ok
    # flips that make the artifact better are no drop; a NaN score on one side only is a failure
    assert onnx_export.check("int8-qdq", candidate, reference, labels, "accuracy", 0.01).metric_drop < 0
    scores = np.linspace(0, 1, 10)[:, None]
    constant = np.zeros_like(scores)
    with np.errstate(all="ignore"), pytest.warns(Warning):
        assert not onnx_export.check("fp32", scores, constant, scores[:, 0], "pearson", 0.01).ok


def test_exporting_hands_the_model_back_as_it_came(tmp_path, tiny_teacher_dir):
    """export_fp32 traces in eval mode with eager attention; a model still being trained (QAT, a bench) must
    get its dropout and its attention kernel back, not silently train on with eager attention and no dropout."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, attn_implementation="sdpa")
    model.train()
    example = {"input_ids": torch.tensor([[101, 2000, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
               "token_type_ids": torch.zeros(1, 3, dtype=torch.long)}
    onnx_export.export_fp32(model, tmp_path / "m.onnx", example)
    assert (tmp_path / "m.onnx").is_file()
    assert model.training and model.config._attn_implementation == "sdpa"
    model.eval()
    onnx_export.export_fp32(model, tmp_path / "m2.onnx", example)
    assert not model.training
