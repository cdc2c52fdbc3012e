"""Vocabulary pruning (distill/passes/vocab.py, distill/stages/vocab.py): kept rows follow their token
strings, the rewritten tokenizer loads and splits kept words the same way, logits are identical, a wrong
id map is caught, and on the embedded MiniLM with Rotten Tomatoes train texts the size drops."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM,
                          BertForSequenceClassification, BertTokenizerFast, pipeline)

from distill.passes import vocab as V
from distill.stages import vocab as stage
from distill.tasks import SEQUENCE_CLASSIFICATION

WORDS = ["the", "movie", "was", "great", "dull", "play", "##ing", "##ed", "fun", "##ny", "plot", "a", "bad",
         "good", "story", "actor", "##s", "film", "boring", "!", ",", "."]
SPECIAL = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(SPECIAL + WORDS)}, do_lower_case=True)
    tok.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(SPECIAL + WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return tok, BertForSequenceClassification(cfg).eval(), cfg


def _kept_ids(tok, text):
    return set(tok(text)["input_ids"])


def test_kept_rows_follow_their_token_strings_and_logits_match(tiny, tmp_path):
    tok, model, _ = tiny
    vmap = V.build_map(tok, _kept_ids(tok, "the film was boring , a dull plot ."))
    assert vmap.kept == sorted(vmap.kept) and set(tok.all_special_ids) <= set(vmap.kept)
    pruned = V.prune_model(copy.deepcopy(model), vmap)
    new_tok = V.prune_tokenizer(tok, vmap)
    pruned.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.vocab_size == len(vmap.kept) == len(loaded_tok)
    old_rows, new_rows = model.get_input_embeddings().weight, loaded.get_input_embeddings().weight
    old_vocab = tok.get_vocab()
    for token, new_id in loaded_tok.get_vocab().items():  # a shuffled or shifted map fails here
        assert torch.equal(new_rows[new_id], old_rows[old_vocab[token]]), token
    for special in ("pad", "cls", "sep", "unk", "mask"):
        assert getattr(loaded_tok, f"{special}_token") == getattr(tok, f"{special}_token")
        assert loaded_tok.convert_ids_to_tokens(getattr(loaded_tok, f"{special}_token_id")) == getattr(tok, f"{special}_token")
    text = "The plot was boring, a dull film."
    a, b = tok(text, return_tensors="pt"), loaded_tok(text, return_tensors="pt")
    assert tok.convert_ids_to_tokens(a["input_ids"][0]) == loaded_tok.convert_ids_to_tokens(b["input_ids"][0])
    with torch.no_grad():
        assert torch.allclose(model(**a).logits, loaded(**b).logits, atol=1e-6)
    # a word needing a dropped piece: no covering split with kept pieces, so WordPiece gives [UNK]
    assert loaded_tok.tokenize("great playing") == ["[UNK]", "[UNK]"]
    clf = pipeline("text-classification", model=str(tmp_path))
    ref = pipeline("text-classification", model=model, tokenizer=tok)
    assert clf(text)[0]["label"] == ref(text)[0]["label"]
    assert clf(text)[0]["score"] == pytest.approx(ref(text)[0]["score"], abs=1e-5)


def test_word_with_kept_pieces_splits_the_same(tiny):
    tok, _, _ = tiny
    vmap = V.build_map(tok, _kept_ids(tok, "playing played funny"))
    new_tok = V.prune_tokenizer(tok, vmap)
    for word in ("playing", "played", "funny"):
        assert new_tok.tokenize(word) == tok.tokenize(word)
    assert "play" in new_tok.get_vocab() and "great" not in new_tok.get_vocab()


def test_tied_mlm_decoder_is_sliced_with_the_embeddings(tiny):
    tok, _, cfg = tiny
    torch.manual_seed(1)
    mlm = BertForMaskedLM(cfg).eval()
    vmap = V.build_map(tok, _kept_ids(tok, "a good story"))
    pruned = V.prune_model(copy.deepcopy(mlm), vmap)
    ids = tok("a good story", return_tensors="pt")
    new_ids = vmap.lookup(vmap.old_to_new[tok.unk_token_id])[ids["input_ids"]]
    with torch.no_grad():
        old = mlm(**ids).logits[..., vmap.kept]
        new = pruned(**{**ids, "input_ids": new_ids}).logits
    assert new.shape[-1] == len(vmap.kept)
    assert torch.allclose(old, new, atol=1e-6)


def test_the_stage_check_catches_a_wrong_id_map(tiny):
    tok, model, _ = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():  # a random head gives near-constant logits; make differences in the encoder visible
        model.classifier.weight.mul_(1000.0)
    vmap = V.build_map(tok, _kept_ids(tok, "the movie was good"))
    pruned = V.prune_model(copy.deepcopy(model), vmap)
    unk_new = vmap.old_to_new[tok.unk_token_id]
    enc = tok(["the movie was good", "the movie was great"], padding=True, return_tensors="pt")
    batches = [dict(enc)]
    right = vmap.lookup(unk_new)
    compared, rows, worst = stage.check_identical(model, pruned, batches, right, tok.unk_token_id, unk_new,
                                                  SEQUENCE_CLASSIFICATION)
    assert (compared, rows) == (1, 2) and worst < stage.ATOL  # "great" was dropped: that row is not compared
    wrong = right.clone()
    wrong[vmap.kept[-1]], wrong[vmap.kept[-2]] = right[vmap.kept[-2]], right[vmap.kept[-1]]  # two ids swapped
    assert stage.check_identical(model, pruned, batches, wrong, tok.unk_token_id, unk_new,
                                 SEQUENCE_CLASSIFICATION)[2] > stage.ATOL


def test_oov_rate_counts_lost_tokens_not_unknown_ones(tiny):
    tok, _, _ = tiny
    vmap = V.build_map(tok, _kept_ids(tok, "the movie"))
    rows = {"input_ids": [tok("the movie great")["input_ids"], [tok.cls_token_id, tok.unk_token_id, tok.sep_token_id]]}
    rate, lost, total = stage.oov_rate(rows, vmap, tok.unk_token_id)
    assert (lost, total) == (1, 7) and rate == pytest.approx(1 / 7)


def test_real_minilm_on_rotten_tomatoes_train(tmp_path):
    from distill.base.assets import minilm_dir
    from distill.data.task_data import load_rotten_tomatoes

    data = load_rotten_tomatoes()
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2).eval()
    used = {i for row in tok(list(data.train["text"]), truncation=True, max_length=64)["input_ids"] for i in row}
    vmap = V.build_map(tok, used)
    V.prune_model(model_pruned := copy.deepcopy(model), vmap).save_pretrained(tmp_path)
    V.prune_tokenizer(tok, vmap).save_pretrained(tmp_path)
    new_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in loaded.parameters())
    assert model.get_input_embeddings().weight.shape[0] == 30522
    assert 8000 < len(vmap.kept) < 20000  # measured: the train texts use ~13k of the 30,522 tokens
    assert before - after == (30522 - len(vmap.kept)) * 384
    texts = [t for t in list(data.dev["text"])[:200] if set(tok(t, truncation=True, max_length=64)["input_ids"]) <= set(vmap.kept)]
    assert len(texts) > 100
    a = tok(texts[:32], padding=True, truncation=True, max_length=64, return_tensors="pt")
    b = new_tok(texts[:32], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**a).logits, loaded(**b).logits, atol=1e-5)
    del model_pruned


def tok_has(folder, token: str) -> bool:
    return token in AutoTokenizer.from_pretrained(folder).get_vocab()


def test_top_corpus_tokens_are_the_most_frequent_new_ones(tiny):
    tok, _, _ = tiny
    texts = ["the movie the movie the plot", "the film , the plot ."]
    vocab = tok.get_vocab()
    assert V.top_tokens(texts, tok, 2, exclude=set()) == [vocab["the"], vocab["movie"]]  # 5x, then 2x each: lower id
    assert V.top_tokens(iter(texts), tok, 2, exclude={vocab["the"]}, batch=1) == [vocab["movie"], vocab["plot"]]


def test_config_is_opt_in_and_checks_its_keys():
    from distill.config import ConfigError, load_config

    cfg = load_config(None, [])
    assert cfg.vocab.enabled is False and cfg.vocab.splits == ["train"]
    with pytest.raises(ConfigError, match="vocab.splits"):
        load_config(None, ["vocab.enabled=true", "vocab.splits=[validation]"])
    with pytest.raises(ConfigError, match="prune.enabled is false"):
        load_config(None, ["vocab.enabled=true", "vocab.models=[student-pruned]", "prune.enabled=false",
                           "export.models=[student-task]"])


def test_stage_end_to_end_on_a_tiny_pipeline(tmp_path, tiny_teacher_dir, task_folder):
    import json

    from distill.config import load_config
    from distill.runner import pipeline
    from tests.conftest import tiny_overrides

    overrides = tiny_overrides(tmp_path, tiny_teacher_dir, task_folder, "general.enabled=false", "prune.enabled=false",
                               "export.enabled=false", "export.models=[student-task]", "teacher.gate=warn",
                               "vocab.enabled=true",
                               "vocab.splits=[train,dev]",  # the tiny task's dev rows each have a word train lacks
                               "vocab.extra_tokens=50",  # plus the 50 most frequent new tokens of general.corpus (wiki)
                               "vocab.extra_documents=500",
                               sections=("teacher.finetune", "task_distill.intermediate", "task_distill.prediction"))
    cfg = load_config(None, overrides)
    assert pipeline.run_vocab(cfg) == 0
    stage = cfg.run_dir / "student-vocab"
    result = json.loads((stage / "result.json").read_text())["models"]["student-task"]
    assert result["vocab_after"] < result["vocab_before"]
    assert result["dev_rows_identical"] == result["dev_rows"] > 0 and result["max_abs_diff"] <= 1e-5
    assert result["params"]["after"] < result["params"]["before"] and result["extra_tokens_added"] == 50
    assert tok_has(stage / "student-task" / "model", "the")  # the wiki's most frequent word
    assert result["size_after"]["onnx_int8_dynamic_mb"] < result["size_before"]["onnx_int8_dynamic_mb"]
    assert 0 <= result["test_oov_rate"] < 1 and "score" in result["after"]["test"]
    folder = stage / "student-task" / "model"
    assert len(AutoTokenizer.from_pretrained(folder)) == result["vocab_after"]
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert pipeline.run_vocab(cfg) == 0  # finished: reused, not done again
    assert (folder / "model.safetensors").stat().st_mtime == mtime


@pytest.mark.parametrize("kind", ["token_classification", "question_answering"])
def test_stage_on_ner_and_qa_and_the_pruned_student(tmp_path, tiny_encoder_dir, kind):
    import json

    from distill.runner import pipeline

    if kind == "token_classification":
        from tests.test_ner_pipeline import _cfg, make_sentences, write_conll

        task = tmp_path / "ner"
        task.mkdir()
        for name, n, seed in (("train.txt", 40, 0), ("valid.txt", 12, 1), ("test.txt", 12, 2)):
            write_conll(task / name, make_sentences(n, seed))
    else:
        from tests.test_qa_pipeline import _cfg, squad_folder

        task = squad_folder(tmp_path / "squad")
    cfg = _cfg(tmp_path, tiny_encoder_dir, task, "vocab.enabled=true", "vocab.splits=[train,dev]",
               "vocab.models=[student-task,student-pruned]")
    assert pipeline.run_vocab(cfg) == 0
    models = json.loads((cfg.run_dir / "student-vocab" / "result.json").read_text())["models"]
    for name in ("student-task", "student-pruned"):
        r = models[name]
        assert r["dev_rows_identical"] == r["dev_rows"] > 0, name
        assert r["vocab_after"] < r["vocab_before"] and r["params"]["after"] < r["params"]["before"]
        assert "score" in r["after"]["test"] and "score" in r["before"]["test"]


def test_bench_and_report_show_the_vocab_and_qat_students_run_on_their_own_inputs(tmp_path, tiny_encoder_dir):
    """The vocabulary-pruned student is exported and checked like any student and timed by the bench on test
    rows tokenized with its own tokenizer; with every split's tokens kept its logits are the unpruned
    student's, so its score must be too. Fed the run's token ids instead, its rows would fail or differ."""
    import json

    from distill.runner import pipeline
    from tests.test_ner_pipeline import _cfg, make_sentences, write_conll

    task = tmp_path / "ner"
    task.mkdir()
    for name, n, seed in (("train.txt", 40, 0), ("valid.txt", 12, 1), ("test.txt", 12, 2)):
        write_conll(task / name, make_sentences(n, seed))
    cfg = _cfg(tmp_path, tiny_encoder_dir, task, "prune.enabled=false", "export.models=[student-task]",
               "export.formats=[fp32, int8-dynamic, int8-qdq]", "export.max_metric_drop=1.0",
               "vocab.enabled=true", "vocab.splits=[train,dev,test]", "qat.enabled=true", "qat.calibration_batches=2",
               "qat.train.max_steps=2", "qat.train.batch_size=8", "qat.train.save_every=0", "qat.train.eval_every=1",
               "bench.test_examples=0")
    # 0, or REFUSED_EXIT when the tiny student's post-training QDQ fails its check (the report then says so)
    assert pipeline.run_distill(cfg) in (0, pipeline.REFUSED_EXIT)
    run = cfg.run_dir
    vocab = json.loads((run / "student-vocab" / "result.json").read_text())["models"]["student-task"]
    assert vocab["vocab_after"] < vocab["vocab_before"] and vocab["test_oov_rate"] == 0
    for variant in ("fp32", "int8-dynamic"):
        folder = run / "student-vocab" / f"student-task-vocab-{variant}"
        assert vocab["export"][variant]["check"]["ok"] and (folder / "model.onnx").is_file(), variant
        assert len(AutoTokenizer.from_pretrained(folder)) == vocab["vocab_after"]  # its own tokenizer beside it
    checks = json.loads((run / "student-vocab" / "check.json").read_text())
    assert set(checks) == {"student-task-vocab-fp32", "student-task-vocab-int8-dynamic"}
    rows = {(r["name"], r["runtime"]): r for r in json.loads((run / "bench.json").read_text())}
    assert ("student-task-vocab", "onnxruntime-int8-dynamic") in rows
    assert ("student-task-vocab", "onnxruntime-fp32") in rows
    assert rows[("student-task-vocab", "pytorch-fp32")]["score"] == pytest.approx(
        rows[("student-task", "pytorch-fp32")]["score"], abs=1e-9)
    assert rows[("student-task-vocab", "pytorch-fp32")]["score"] == pytest.approx(vocab["after"]["test"]["score"])
    qat = json.loads((run / "student-qat" / "result.json").read_text())["models"]["student-task"]
    assert rows[("student-task-qat", "onnxruntime-int8-qdq")]["score"] == pytest.approx(qat["qdq"]["test"]["score"])
    assert json.loads((run / "student-qat" / "student-task" / "trend.json").read_text())["steps"] == [1, 2]
    report = (run / "report.md").read_text()
    assert "## Vocabulary pruning" in report and "## Static INT8 (QDQ): post-training vs quantization-aware" in report
    assert f"{vocab['vocab_before']:,} -> {vocab['vocab_after']:,}" in report
    qat_row = next(line for line in report.splitlines() if line.startswith("| student-task | ") and "points" in line)
    assert qat_row.split(" | ")[2] != "-"  # a post-training QDQ score, or its refusal with the dev drop


def test_bench_rows_of_vocab_students_keep_checked_formats_and_list_refused_ones(tmp_path):
    from distill.stages.bench import vocab_artifacts
    from distill.stages.spec import Output

    model = tmp_path / "student-task" / "model"
    onnx_dir = tmp_path / "student-task-vocab-fp32"
    for d in (model, onnx_dir):
        d.mkdir(parents=True)
    (onnx_dir / "model.onnx").write_bytes(b"")
    result = {"models": {"student-task": {"folder": str(model), "export": {
        "fp32": {"folder": str(onnx_dir), "check": {"ok": True}},
        "int8-dynamic": {"refused": True, "reason": "check failed: agreement 90.00% (limit 97.0%)"}}}}}
    found, own, refused = vocab_artifacts(Output(tmp_path, tmp_path, result))
    assert found == [("student-task-vocab", model, None, model, None),
                     ("student-task-vocab", onnx_dir / "model.onnx", "fp32", model, None)]
    assert own == {"student-task-vocab": model}
    assert refused == [{"name": "student-task-vocab", "runtime": "onnxruntime-int8-dynamic", "status": "refused",
                        "reason": "check failed: agreement 90.00% (limit 97.0%)"}]


def test_a_vocab_student_that_lost_more_than_a_dev_point_is_warned_about_with_the_fix():
    # CoNLL-2003, train tokens only: dev entity F1 0.8479 -> 0.8294 (test 0.8003 -> 0.7779)
    warning = stage.drop_warning("student-task", "entity_f1", 0.8479, 0.8294, 0.0262, 0)
    assert "fell 1.85 points" in warning and "vocab.extra_tokens=10000 (now 0)" in warning
    assert "vocab.extra_tokens=20000 (now 10000)" in stage.drop_warning("s", "f1", 0.8, 0.7, 0.1, 10000)
    assert stage.drop_warning("student-task", "accuracy", 0.8243, 0.8150, 0.01, 0) == ""  # within a point


def test_report_vocab_section_shows_sizes_scores_and_the_warning(tmp_path):
    import json

    from distill.report.report import vocab_section

    assert vocab_section(tmp_path) == []
    (tmp_path / "student-vocab").mkdir()
    entry = {"vocab_before": 30522, "vocab_after": 14100, "params": {"before": 14292489, "after": 7986441},
             "size_before": {"onnx_int8_dynamic_mb": 13.8}, "size_after": {"onnx_int8_dynamic_mb": 7.7},
             "test_oov_rate": 0.0267, "before": {"test": {"score": 0.8003}}, "after": {"test": {"score": 0.7779}},
             "dev_rows_identical": 2335, "dev_rows": 3250, "splits": ["train"],
             "warning": "student-task: dev entity_f1 fell 1.85 points (0.8479 -> 0.8294)"}
    (tmp_path / "student-vocab" / "result.json").write_text(json.dumps({"models": {"student-task": entry}}))
    lines = vocab_section(tmp_path)
    assert ("| student-task | 30,522 -> 14,100 | 14.29M -> 7.99M | 13.8 -> 7.7 MB | 2.67% | 0.8003 -> 0.7779 | "
            "2,335 / 3,250 |") in lines
    assert any(line.startswith("Warning: student-task: dev entity_f1 fell 1.85 points") for line in lines)


def test_vocab_fingerprint_of_a_default_run_is_the_one_folders_were_finished_with():
    """Keys added to the stage later must not turn finished student-vocab/ folders into conflicts: the
    default settings are upstream, vocab and max_len only (the corpus and its inputs only with extra_tokens)."""
    from types import SimpleNamespace

    from distill.config import load_config

    up = {"2b": "a", "prune": "b"}
    cfg = load_config(None, ["vocab.enabled=true", "export.check_examples=300", "export.max_metric_drop=0.03"])
    assert set(stage.settings(SimpleNamespace(cfg=cfg), up)) == {"upstream", "vocab", "max_len"}
    cfg = load_config(None, ["vocab.enabled=true", "vocab.extra_tokens=10"])
    assert {"corpus", "text_column", "inputs"} <= set(stage.settings(SimpleNamespace(cfg=cfg), up))


def test_a_refused_vocab_format_sets_the_commands_exit_status(tmp_path):
    """The vocab stage writes student-vocab/check.json like export/check.json, so refused_formats (what the
    command's exit status reads) sees its refusals."""
    from distill.passes.export import refused_formats, write_checks

    assert refused_formats(tmp_path) == {}
    write_checks(tmp_path, {"student-task-vocab": {"fp32": {"folder": "x"},
                                                   "int8-dynamic": {"refused": True, "reason": "check failed"}}})
    assert refused_formats(tmp_path) == {"student-task-vocab-int8-dynamic": "check failed"}


def test_a_capped_bench_feeds_a_vocab_student_the_same_questions_as_the_others(tmp_path, tiny_encoder_dir,
                                                                              monkeypatch):
    """bench.test_examples caps rows, and a QA row is a window: a pruned tokenizer that re-splits words makes
    other windows, so its rows must be the windows of the same questions, not its own first N windows.
    Here every context needs twice the windows with the pruned tokenizer (each window doubled)."""
    from distill.stages.bench import TestInputs
    from distill.stages.context import RunContext
    from tests.qa_data import squad_folder
    from tests.test_qa_pipeline import _cfg

    ctx = RunContext(_cfg(tmp_path, tiny_encoder_dir, squad_folder(tmp_path / "squad")))
    vmap = V.build_map(ctx.tokenizer, stage.used_ids(ctx.tokenized, ["train"]))
    folder = tmp_path / "pruned-tokenizer"
    V.prune_tokenizer(ctx.tokenizer, vmap).save_pretrained(folder)
    kind_class = type(ctx.data.kind)
    tokenize = kind_class.tokenize

    def longer(self, examples, tokenizer, max_len, split):
        rows = tokenize(self, examples, tokenizer, max_len, split)
        return rows if tokenizer is ctx.tokenizer else rows.select([i for i in range(len(rows)) for _ in (0, 1)])

    monkeypatch.setattr(kind_class, "tokenize", longer)
    inputs = TestInputs(ctx, limit=5)
    run, own = inputs(None), inputs(folder)
    assert run.examples == 5 and own.vocab_size == len(vmap.kept) < run.vocab_size
    assert set(own.question_ids) == set(run.question_ids) and own.examples > run.examples
    assert set(TestInputs(ctx)(folder).question_ids) > set(run.question_ids)  # the cap did cut something
