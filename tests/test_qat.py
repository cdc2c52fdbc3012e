"""Quantization-aware distillation: the fake-quant pass (wrap, calibrate, freeze, QDQ export) on tiny
random BERTs, and the opt-in stage end to end on a tiny pipeline."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from distill.config import ConfigError, load_config
from distill.passes import onnx as onnx_export
from distill.passes import qat

VOCAB = 100


def _model(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, max_position_embeddings=64)
    return BertForSequenceClassification(config).eval()


def _batch(n=4, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (n, length), generator=g),
            "attention_mask": torch.ones(n, length, dtype=torch.long),
            "token_type_ids": torch.zeros(n, length, dtype=torch.long)}


def _ready(tmp_path):
    model = qat.prepare(_model())
    qat.calibrate(model, [_batch(seed=s) for s in range(3)])
    qat.freeze(model)
    path = tmp_path / "qdq.onnx"
    qat.export_qdq(model, path, _batch(1, 12, seed=9))
    return model, path


def _onnx_values(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def test_every_linear_is_wrapped_once_and_weights_are_the_same_parameters():
    model = _model()
    linears = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    qat.prepare(model)
    layers = qat.quant_layers(model)
    assert len(layers) == len(linears) == 2 * 6 + 2  # q k v o in out per layer, pooler, classifier
    assert all(model.get_submodule(n).weight is w for n, w in linears.items())  # trained in place
    qat.prepare(model)  # a second call wraps nothing twice
    assert len(qat.quant_layers(model)) == len(linears)
    assert all(type(m.weight_fake_quant.activation_post_process).__name__.startswith("MovingAveragePerChannel")
               for m in layers)


def test_exported_onnx_is_qdq_with_per_channel_weight_scales_equal_to_the_frozen_ones(tmp_path):
    model, path = _ready(tmp_path)
    counts = qat.qdq_counts(path)
    n = len(qat.quant_layers(model))
    assert counts["DequantizeLinear"] == 2 * n  # one for the input and one for the weight of each layer
    assert counts["QuantizeLinear"] == n  # weights are stored already quantized (int8), inputs quantized at run time
    assert counts["per_channel"] == counts["int8_weights"] == n
    values = _onnx_values(path)
    for name, module in model.named_modules():
        if isinstance(module, qat.QuantLinear):
            w = values[f"inner.{name}.weight_fake_quant.scale"]
            int8 = next(v for k, v in values.items() if v.dtype == np.int8
                        and k.replace("/", ".").startswith(f".inner.{name}.weight_fake_quant."))
            expect_q = torch.fake_quantize_per_channel_affine(module.weight.detach(), module.weight_fake_quant.scale,
                                                             module.weight_fake_quant.zero_point, 0, -128, 127)
            np.testing.assert_array_equal(int8 * w[:, None], expect_q.numpy())  # the weights trained against
            assert w.shape == (module.out_features,)
            np.testing.assert_allclose(w, module.weight_fake_quant.scale.numpy(), rtol=1e-6)
            if f"inner.{name}.input_fake_quant.scale" in values:  # equal scales (q, k, v share an input) are one
                np.testing.assert_allclose(values[f"inner.{name}.input_fake_quant.scale"],
                                           module.input_fake_quant.scale.numpy(), rtol=1e-6)
            assert not module.weight_fake_quant.zero_point.any() and not module.input_fake_quant.zero_point.any()
            # per-channel weight scales are each row's own range (symmetric over [-128, 127])
            expect = module.weight.detach().abs().amax(dim=1) / 127.5
            np.testing.assert_allclose(module.weight_fake_quant.scale.numpy(), expect.numpy(), rtol=1e-5)


def test_observers_left_running_would_refit_the_scales_to_the_export_batch_and_are_refused(tmp_path):
    model, path = _ready(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".scale")}
    with torch.no_grad():  # a forward on much larger inputs after freeze changes nothing
        model.bert.embeddings.word_embeddings.weight.mul_(5)
        model(**_batch(seed=5))
        model.bert.embeddings.word_embeddings.weight.div_(5)
    after = {k: v for k, v in model.state_dict().items() if k.endswith(".scale")}
    assert all(torch.equal(before[k], after[k]) for k in before)
    qat.export_qdq(model, tmp_path / "again.onnx", _batch(1, 7, seed=3))  # exported twice: same scales
    first, second = _onnx_values(path), _onnx_values(tmp_path / "again.onnx")
    assert all(np.array_equal(first[k], second[k]) for k in first if k.endswith(".scale"))
    assert not model.training  # export leaves the model in the mode it found it
    model.bert.encoder.layer[0].attention.self.query.input_fake_quant.enable_observer()  # one observer left on
    with pytest.raises(ValueError, match="observers still running"):
        qat.export_qdq(model, tmp_path / "bad.onnx", _batch(1, 12))
    with pytest.raises(ValueError, match="no QuantLinear"):
        qat.export_qdq(_model(), tmp_path / "plain.onnx", _batch(1, 12))


def test_calibration_sets_activation_ranges_then_freezes_them_and_training_moves_weights_only():
    model = qat.prepare(_model())
    q = model.bert.encoder.layer[0].attention.self.query
    qat.calibrate(model, [_batch(seed=s) for s in range(2)])
    act_scale, act_min = q.input_fake_quant.scale.clone(), q.input_fake_quant.activation_post_process.min_val.clone()
    assert act_scale.item() > 0 and act_scale.item() != 1.0  # calibrated, not the default
    assert not q.input_fake_quant.observer_enabled.item() and q.input_fake_quant.fake_quant_enabled.item()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(**_batch(seed=4), labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0  # straight-through gradients reach weights
    opt.step()
    model(**_batch(seed=4))
    assert torch.equal(q.input_fake_quant.activation_post_process.min_val, act_min)
    with pytest.raises(ValueError, match="no batches"):
        qat.calibrate(qat.prepare(_model()), [])


def test_onnx_runtime_matches_the_fake_quant_model(tmp_path):
    """ORT runs the QDQ graph with int8 kernels; on a decisive model its predictions are the fake-quant
    PyTorch model's and its logits within 2% of theirs (measured: 0.7%; the fp32 model's differ by 2%)."""
    model = _model()
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    fp32 = _model()
    fp32.load_state_dict(model.state_dict())
    fp32.set_attn_implementation("eager")
    qat.prepare(model)
    qat.calibrate(model, [_batch(8, 16, seed=s) for s in range(4)])
    qat.freeze(model)
    path = tmp_path / "qdq.onnx"
    qat.export_qdq(model, path, _batch(1, 16, seed=9))
    sess = onnx_export.session(path)
    x = _batch(16, 16, seed=11)
    with torch.no_grad():
        fq, ref = model(**x).logits.numpy(), fp32(**x).logits.numpy()
    ort_logits = sess.run(["logits"], {k: v.numpy() for k, v in x.items()})[0]
    assert np.abs(ref - fq).max() > 0.01 * np.abs(fq).max()  # quantization does change the outputs ...
    assert np.abs(ort_logits - fq).max() < 0.02 * np.abs(fq).max()  # ... and ORT computes what fake quant did
    assert (ort_logits.argmax(1) == fq.argmax(1)).mean() >= 15 / 16


def test_config_is_opt_in_and_checks_models():
    cfg = load_config(None, [])
    assert cfg.qat.enabled is False
    with pytest.raises(ConfigError, match="qat.models"):
        load_config(None, ["qat.enabled=true", "qat.models=[teacher]"])
    with pytest.raises(ConfigError, match="prune.enabled is false"):
        load_config(None, ["qat.enabled=true", "qat.models=[student-pruned]", "prune.enabled=false",
                           "export.models=[student-task]"])


@pytest.mark.parametrize("winner", ["trained", "calibrated"])
def test_stage_end_to_end_on_a_tiny_pipeline(tmp_path, tiny_teacher_dir, task_folder, monkeypatch, winner):
    from distill.runner import pipeline
    from distill.stages import qat as qat_stage
    from tests.conftest import tiny_overrides

    if winner == "calibrated":  # as on SQuAD, where 106 steps ended below calibration alone on dev
        monkeypatch.setattr(qat_stage, "_calibration_wins", lambda calibrated, trained: True)

    overrides = tiny_overrides(tmp_path, tiny_teacher_dir, task_folder, "general.enabled=false", "prune.enabled=false",
                               "export.enabled=false", "export.models=[student-task]", "teacher.gate=warn",
                               "qat.enabled=true", "qat.calibration_batches=2",
                               sections=("teacher.finetune", "task_distill.intermediate", "task_distill.prediction",
                                         "qat.train"))
    cfg = load_config(None, overrides)
    assert pipeline.run_qat(cfg) == 0
    stage = cfg.run_dir / "student-qat"
    result = json.loads((stage / "result.json").read_text())["models"]["student-task"]
    folder = stage / "student-task-qat-int8-qdq"
    assert (folder / "model.onnx").is_file() and (folder / "tokenizer.json").is_file()
    assert result["steps"] == 2 and result["qdq_nodes"]["per_channel"] > 0 and result["kept"] == winner
    assert 0 <= result["qdq"]["test"]["score"] <= 1 and "score" in result["fp32"]["test"]
    assert (stage / "student-task" / "calibrated" / qat_stage.STATE).is_file()
    if winner == "calibrated":  # the exported state is the calibrated one: it scores what calibration alone scored
        assert result["fake_quant_dev"]["score"] == pytest.approx(result["calibrated_dev"]["score"])
    mtime = (folder / "model.onnx").stat().st_mtime
    assert pipeline.run_qat(cfg) == 0  # finished: reused, not trained again
    assert (folder / "model.onnx").stat().st_mtime == mtime


def test_report_puts_the_qat_row_beside_the_post_training_qdq_row(tmp_path):
    from distill.report.report import qat_section

    assert qat_section(tmp_path, []) == []  # the stage did not run: no section
    (tmp_path / "student-qat").mkdir()
    (tmp_path / "student-qat" / "result.json").write_text(json.dumps({"models": {"student-task": {
        "fp32": {"test": {"score": 0.8009}}, "qdq": {"test": {"score": 0.8001}}, "steps": 200}}}))
    rows = [{"name": "student-task", "runtime": "onnxruntime-int8-qdq", "score": 0.7955},
            {"name": "student-task", "runtime": "onnxruntime-int8-dynamic", "score": 0.8009}]
    assert "| student-task | 0.8009 | 0.7955 | 0.8001 | -0.08 points | 200 |" in qat_section(tmp_path, rows)
    # the export check refused the post-training QDQ: its dev drop stands in its cell, not a blank
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "check.json").write_text(json.dumps({"student-task-int8-qdq": {
        "refused": True, "reason": "check failed: metric drop", "check": {"metric_drop": 0.034}}}))
    assert "| student-task | 0.8009 | refused (dev drop 3.40 points) | 0.8001 | -0.08 points | 200 |" in qat_section(
        tmp_path, rows[1:])


def test_the_calibrated_state_is_kept_only_when_training_never_beat_it_on_dev():
    from distill.stages.qat import _calibration_wins

    assert _calibration_wins(0.3119, 0.3085)  # SQuAD: 106 QAT steps ended below calibration alone
    assert not _calibration_wins(0.8493, 0.8502)  # CoNLL student: training won
    assert not _calibration_wins(0.85, 0.85)  # a tie keeps the trained state
    assert not _calibration_wins(0.9, None) and not _calibration_wins(float("nan"), 0.1)
    assert _calibration_wins(0.1, float("nan"))
