import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from distill.stages.bench import Runner, bench_one, synthetic
from distill.passes.export import export_model
from distill.benchmarks.speed import _profile
from tests.conftest import tiny_config

SMALL_VOCAB = 1200  # a vocabulary smaller than BERT-uncased's 30,522 (a cased teacher has 28,996)


@pytest.fixture(scope="module")
def small_vocab_export(tmp_path_factory):
    """A tiny classifier with a 1,200-token vocabulary, its PyTorch folder and its ONNX exports as 'teacher'."""
    root = tmp_path_factory.mktemp("small_vocab")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config(vocab_size=SMALL_VOCAB, num_hidden_layers=2)).save_pretrained(
        root / "teacher")
    batches = [synthetic(4, 12, SMALL_VOCAB)]
    labels = np.array([0, 1, 0, 1])
    export_model(root / "teacher", root / "export", "teacher", ["fp32", "fp32-fused"], batches, labels, "accuracy",
                 batches, 16, tensorrt=False, max_metric_drop=0.01)
    return root, batches, labels


def test_synthetic_ids_stay_inside_the_vocabulary():
    ids = synthetic(32, 128, 28996)["input_ids"]
    assert ids.max() < 28996 and ids.min() >= 1000
    assert synthetic(4, 8, 50)["input_ids"].max() < 50


@pytest.mark.parametrize("variant", [None, "fp32", "fp32-fused"])
def test_bench_rows_of_a_small_vocabulary_teacher_carry_their_runtime(small_vocab_export, variant):
    root, batches, labels = small_vocab_export
    path = root / "teacher" if variant is None else root / "export" / f"teacher-{variant}" / "model.onnx"
    singles = [{k: v[i:i + 1] for k, v in batches[0].items()} for i in range(4)]
    row = bench_one("teacher", path, variant, root / "teacher", batches, labels, singles, "accuracy", threads=1,
                    vocab_size=SMALL_VOCAB, repeats=5)  # token ids >= 1200 would fail the embedding lookup
    assert row.runtime == ("pytorch-fp32" if variant is None else f"onnxruntime-{variant}")
    assert row.name == "teacher" and row.p50_ms > 0 and 0.0 <= row.score <= 1.0


def test_runner_refuses_an_onnx_file_without_its_variant(small_vocab_export):
    root, _, _ = small_vocab_export
    with pytest.raises(ValueError, match="export variant"):
        Runner(root / "export" / "teacher-fp32-fused" / "model.onnx", threads=1)


def test_onnx_runtime_profile_goes_to_a_temporary_folder(small_vocab_export, tmp_path, monkeypatch):
    root, batches, _ = small_vocab_export
    monkeypatch.chdir(tmp_path)
    per_op = _profile(root / "export" / "teacher-fp32-fused" / "model.onnx", batches[0], threads=1, runs=2)
    assert per_op and all(ms >= 0 for ms in per_op.values())
    assert list(tmp_path.iterdir()) == []  # no onnxruntime_profile_*.json in the working directory


def test_source_sizes_are_loaded_once_per_weights_and_follow_a_retrained_folder(tmp_path, tokenizer):
    """Bench rows of one source share its parameter and FLOP count (the folder is loaded once); a model
    saved again under the same path (other weights) is measured again, never served from the cache."""
    from transformers import BertForSequenceClassification

    from distill.stages import bench
    from distill.tasks import SEQUENCE_CLASSIFICATION
    from tests.conftest import tiny_config

    folder = tmp_path / "student"
    BertForSequenceClassification(tiny_config(num_hidden_layers=2)).save_pretrained(folder)
    loads = []
    real = SEQUENCE_CLASSIFICATION.auto_class.from_pretrained
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(SEQUENCE_CLASSIFICATION), "auto_class",
                   property(lambda self: type("Counting", (), {"from_pretrained": staticmethod(
                       lambda path: loads.append(path) or real(path))})))
        first = bench._source_size(str(folder), SEQUENCE_CLASSIFICATION)
        assert bench._source_size(str(folder), SEQUENCE_CLASSIFICATION) == first and len(loads) == 1
        BertForSequenceClassification(tiny_config(num_hidden_layers=3)).save_pretrained(folder)  # retrained deeper
        second = bench._source_size(str(folder), SEQUENCE_CLASSIFICATION)
    assert len(loads) == 2 and second[0] > first[0] and second[1] > first[1]
