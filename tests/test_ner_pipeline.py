"""NER end to end on tiny random models over a small local CoNLL folder (logic only; the real
CoNLL-2003 run is `make distill EXP=experiments/conll2003_minilm.yaml`)."""
import json

import numpy as np
import pytest
from transformers import AutoModelForTokenClassification, pipeline

from distill.runner import pipeline as stages
from distill.config import load_config
from tests.conftest import TRAINING_SECTIONS, tiny_overrides

WORDS = {"PER": ["john", "mary", "peter"], "LOC": ["paris", "berlin", "london"], "ORG": ["google", "reuters"]}


def write_conll(path, sentences):
    lines = []
    for words, tags in sentences:
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("-DOCSTART- -X- -X- O\n\n" + "\n".join(lines))


def make_sentences(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(sorted(WORDS))
        name = WORDS[kind][rng.integers(len(WORDS[kind]))]
        words, tags = ["yesterday", name, "went", "to", "the", "market"], ["O", f"B-{kind}", "O", "O", "O", "O"]
        if kind == "PER":
            words.insert(2, "smith")
            tags.insert(2, "I-PER")
        out.append((words, tags))
    return out


@pytest.fixture()
def conll_folder(tmp_path):
    folder = tmp_path / "ner"
    folder.mkdir()
    write_conll(folder / "train.txt", make_sentences(40, 0))
    write_conll(folder / "valid.txt", make_sentences(12, 1))
    write_conll(folder / "test.txt", make_sentences(12, 2))
    return folder


def _cfg(tmp_path, teacher, task, *extra):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"john smith went to paris on day {i} to meet reuters." for i in range(100)))
    overrides = tiny_overrides(tmp_path, teacher, task, "student.init=teacher", f"general.corpus={corpus}",
                               "general.max_len=32", "general.teacher=task",
                               "task_distill.prediction_losses={soft_ce: 1.0, hard_ce: 0.5}", "export.check_examples=8",
                               "export.formats=[fp32, fp32-fused, int8-dynamic]", "bench.repeats=5",
                               "bench.test_examples=8", "teacher.gate=warn",  # a 3-step tiny teacher learns nothing
                               *extra, hidden=32, steps=3, sections=TRAINING_SECTIONS)
    return load_config(None, overrides)


def test_ner_pipeline_end_to_end_on_tiny_models(tmp_path, tiny_encoder_dir, conll_folder):
    cfg = _cfg(tmp_path, tiny_encoder_dir, conll_folder)
    stages.run_distill(cfg)
    run = cfg.run_dir
    for stage in ("teacher", "student-general", "student-intermediate", "student-task", "student-pruned", "export"):
        assert (run / stage / "DONE").is_file(), stage
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    for stage in ("teacher", "student-task", "student-pruned"):
        model = AutoModelForTokenClassification.from_pretrained(run / stage / "model")
        assert type(model).__name__.endswith("ForTokenClassification")
        assert [model.config.id2label[i] for i in range(len(names))] == names
        result = json.loads((run / stage / "result.json").read_text())
        assert {"entity_f1", "precision", "recall"} <= set(result["test"])
    records = [json.loads(line) for line in (run / "student-task" / "metrics.jsonl").read_text().splitlines()]
    terms = next(r for r in reversed(records) if "loss" in r)
    assert {"soft_ce", "hard_ce"} <= set(terms)
    check = json.loads((run / "export" / "student-pruned-fp32" / "check.json").read_text())
    assert check["max_abs_diff"] < 1e-3 and check["agreement"] >= 0.999
    bench = json.loads((run / "bench.json").read_text())
    by_runtime = {(r["name"], r["runtime"]): r for r in bench}
    torch_f1 = by_runtime[("student-task", "pytorch-fp32")]["score"]
    assert by_runtime[("student-task", "onnxruntime-fp32")]["score"] == pytest.approx(torch_f1, abs=1e-6)
    assert by_runtime[("student-task", "pytorch-fp32")]["metric"] == "entity_f1"
    # the pruned student works with the transformers pipeline alone (after `import students`)
    ner = pipeline("token-classification", model=str(run / "student-pruned" / "model"), aggregation_strategy="simple")
    assert isinstance(ner("john smith went to paris"), list)
    stages.run_baseline(cfg)  # the same student without a teacher, scored the same way
    baseline = json.loads((run / "student-baseline" / "result.json").read_text())
    assert {"entity_f1", "precision", "recall"} <= set(baseline["test"])


def test_a_sentence_classifier_teacher_is_refused_for_ner_data(tmp_path, tiny_teacher_dir, conll_folder):
    cfg = _cfg(tmp_path, tiny_teacher_dir, conll_folder, "teacher.already_finetuned=true")
    with pytest.raises(ValueError, match="is a BertForSequenceClassification but the task is token_classification"):
        stages.run_teacher(cfg)


def test_settings_a_token_task_cannot_honour_stop_before_training(tmp_path, tiny_encoder_dir, conll_folder):
    cfg = _cfg(tmp_path, tiny_encoder_dir, conll_folder, "task_distill.prediction_losses={logits_mse: 1.0}")
    with pytest.raises(ValueError, match="logits_mse': a regression loss on a token classification task"):
        stages.run_distill(cfg)
    assert not (cfg.run_dir / "teacher").exists()
