"""Export steps hold back library noise (TorchScript tracer warnings, ORT logger records, calibration prints) and
say so in one line; DISTILL_VERBOSE=1 lets it through."""
import logging
import warnings

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.passes import onnx as onnx_export
from distill.passes.quiet import quiet_library_output


@pytest.fixture()
def tiny(tiny_teacher_dir, tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    enc = tokenizer(["a wonderful film", "a dreadful film, long and dull"], padding=True, return_tensors="pt")
    example = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return model, example


def export(tiny, path):
    model, example = tiny
    with warnings.catch_warnings(record=True) as seen:  # what reaches the terminal (or pytest's summary)
        warnings.simplefilter("always")  # no warning is kept back by an earlier test having shown it
        onnx_export.export_fp32(model, path, example)
    return [w.category.__name__ for w in seen]


def test_export_prints_no_tracer_warning(tiny, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("DISTILL_VERBOSE", raising=False)
    root_handlers = logging.getLogger().handlers[:]
    assert "TracerWarning" not in export(tiny, tmp_path / "model.onnx")
    out, err = capfd.readouterr()
    assert "TracerWarning" not in err and "Warning" not in err
    (line,) = [x for x in out.splitlines() if x.startswith("[export]")]
    assert "library warnings and messages hidden; DISTILL_VERBOSE=1 shows them" in line
    assert logging.getLogger().handlers == root_handlers  # the loggers are given back as they were


def test_verbose_lets_the_tracer_warnings_through(tiny, tmp_path, capfd, monkeypatch):
    """The control: the export does raise TracerWarnings, so the test above can fail."""
    monkeypatch.setenv("DISTILL_VERBOSE", "1")
    assert "TracerWarning" in export(tiny, tmp_path / "model.onnx")
    assert "[export]" not in capfd.readouterr().out


def test_an_outer_block_gives_one_line_and_a_log_and_lets_own_prints_pass(tiny, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("DISTILL_VERBOSE", raising=False)
    _, example = tiny
    calibration = [{k: v.numpy() for k, v in example.items()}] * 2
    log = tmp_path / "export" / "library.log"
    with warnings.catch_warnings(), quiet_library_output(log=log):
        warnings.simplefilter("always")  # no warning is kept back by an earlier test having shown it
        print("[export] own line")
        onnx_export.export_fp32(tiny[0], tmp_path / "fp32.onnx", example)
        onnx_export.quantize_int8_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")  # warns on the root logger
        onnx_export.quantize_int8_qdq(tmp_path / "fp32.onnx", tmp_path / "qdq.onnx", calibration)  # prints progress
    out, err = capfd.readouterr()
    assert out.splitlines()[0] == "[export] own line"
    summaries = [x for x in out.splitlines() if "hidden" in x]
    assert len(summaries) == 1 and f"(in {log})" in summaries[0]
    assert "Collecting tensor data" not in out and "pre-processing" not in out + err and "Warning" not in err
    held = log.read_text()
    assert "TracerWarning" in held and "Collecting tensor data" in held and "WARNING root: Please consider" in held


def test_a_failing_step_shows_what_was_held_back(capfd, monkeypatch):
    monkeypatch.delenv("DISTILL_VERBOSE", raising=False)
    handlers = logging.getLogger("onnxruntime").handlers[:]
    with pytest.raises(RuntimeError, match="boom"):
        with quiet_library_output():
            warnings.warn("the library's hint", UserWarning)
            logging.getLogger("onnxruntime.transformers.fusion_attention").warning("hidden size mismatch")
            raise RuntimeError("boom")
    out, err = capfd.readouterr()
    assert "the library's hint" in err and "hidden size mismatch" in err and "hidden;" not in out
    assert logging.getLogger("onnxruntime").handlers == handlers
