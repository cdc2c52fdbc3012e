import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from distill import export as onnx_export
from distill.batching import make_loader, tokenize
from distill.compress import _numpy_batches, export_model, pad_batch
from distill.data import load_local
from distill.prune import prune_model


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


def test_every_format_is_checked_kept_and_loadable_without_our_code(tmp_path, decisive_teacher, tokenizer, task_folder):
    data = load_local(task_folder)
    batches = _numpy_batches(make_loader(tokenize(data.train, tokenizer, 32), tokenizer, 8, shuffle=False))
    calibration = [pad_batch(b, 32) for b in batches[:4]]  # as run_export does: one shape for the calibrator
    results = export_model(decisive_teacher, tmp_path / "export", "student-task", list(onnx_export.TOLERANCE),
                           batches, calibration, 32, tensorrt=True)
    assert set(results) == set(onnx_export.TOLERANCE)
    model = AutoModelForSequenceClassification.from_pretrained(decisive_teacher).eval()
    enc = tokenizer(["a wonderful film", "a dreadful film indeed"], padding=True, return_tensors="np")
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    for variant, info in results.items():
        folder = tmp_path / "export" / f"student-task-{variant}"
        # a user needs only onnxruntime + the folder: tokenizer, config and model are all there
        tok = AutoTokenizer.from_pretrained(folder)
        assert AutoConfig.from_pretrained(folder).id2label
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = {k: v.astype(np.int64) for k, v in tok(["a wonderful film", "a dreadful film indeed"], padding=True,
                                                      return_tensors="np").items()}
        out = sess.run(["logits"], feed)[0]
        assert out.shape == ref.shape
        if variant in ("fp32", "fp32-fused", "fp16"):
            np.testing.assert_allclose(out, ref, atol=onnx_export.TOLERANCE[variant][0])
        check = json.loads((folder / "check.json").read_text())
        assert check["agreement"] >= check["agreement_limit"]
    fused_ops = json.loads((tmp_path / "export" / "student-task-fp32-fused" / "check.json").read_text())["fused_ops"]
    assert fused_ops.get("Attention", 0) == 4 and fused_ops.get("SkipLayerNormalization", 0) >= 4
    assert "trtexec --onnx=" in (tmp_path / "export" / "student-task-fp16" / "tensorrt.txt").read_text()
    size32 = results["fp32"]["size_mb"]
    assert results["int8-dynamic"]["size_mb"] < 0.5 * size32


def test_pruned_model_exports_with_dynamic_axes(tmp_path, decisive_teacher, tokenizer, task_folder):
    model = AutoModelForSequenceClassification.from_pretrained(decisive_teacher).eval()
    example = dict(tokenizer(["a film"], return_tensors="pt"))
    pruned, _ = prune_model(model, example, 0.5, importance="magnitude", layer_ratios=[0.5, 0.25, 0.5, 0.75])
    folder = tmp_path / "pruned"
    pruned.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = load_local(task_folder)
    batches = _numpy_batches(make_loader(tokenize(data.train, tokenizer, 32), tokenizer, 8, shuffle=False))
    results = export_model(folder, tmp_path / "export", "student-pruned", ["fp32", "fp32-fused", "int8-dynamic"],
                           batches, batches[:2], 32, tensorrt=False)
    sess = ort.InferenceSession(results["fp32-fused"]["folder"] + "/model.onnx", providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 5), (3, 17)):  # dynamic batch and sequence axes
        feed = {"input_ids": np.full((batch, seq), 2000, np.int64), "attention_mask": np.ones((batch, seq), np.int64),
                "token_type_ids": np.zeros((batch, seq), np.int64)}
        assert sess.run(["logits"], feed)[0].shape == (batch, 2)


def test_a_failed_check_keeps_nothing(tmp_path):
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    bad = onnx_export.check("fp32", ref, ref[::-1])
    assert not bad.ok and bad.agreement == 0.0
