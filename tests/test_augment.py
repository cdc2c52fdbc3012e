import numpy as np
from transformers import AutoModel

from distill.base import assets
from distill.data.augment import EmbeddingNeighbours, _whole_word_ids, join_words, split_words


def test_words_are_grouped_from_pieces_and_specials_are_kept(tokenizer):
    enc = tokenizer("an unwatchable mess", "truly")
    words = split_words(enc["input_ids"], enc["token_type_ids"], tokenizer)
    text = [tokenizer.decode(list(p)) for _, p, _ in words]
    assert text == ["[CLS]", "an", "unwatchable", "mess", "[SEP]", "truly", "[SEP]"]
    assert [ok for *_, ok in words] == [False, True, True, True, False, True, False]
    rebuilt = join_words([(seg, p) for seg, p, _ in words])
    assert rebuilt["input_ids"] == enc["input_ids"] and rebuilt["token_type_ids"] == enc["token_type_ids"]


def test_embedding_neighbours_of_the_real_teacher_are_related_words(tokenizer):
    emb = AutoModel.from_pretrained(assets.minilm_dir()).get_input_embeddings().weight.detach()
    nb = EmbeddingNeighbours(emb, _whole_word_ids(tokenizer), top_k=10)
    movie = tuple(tokenizer("movie", add_special_tokens=False)["input_ids"])
    multi = tuple(tokenizer("unwatchable", add_special_tokens=False)["input_ids"])
    nb.prepare([movie, multi])
    names = tokenizer.convert_ids_to_tokens(nb.table[movie])
    assert "film" in names or "movies" in names, names
    assert "movie" not in names and len(names) == 10
    assert all(t.isalpha() and not t.startswith("##") for t in tokenizer.convert_ids_to_tokens(nb.table[multi]))


def test_whole_word_candidates_exclude_pieces_and_specials(tokenizer):
    ids = _whole_word_ids(tokenizer)
    toks = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert "[CLS]" not in toks and not any(t.startswith("##") for t in toks)
    assert len(ids) > 15000 and np.all(np.diff(ids) > 0)


def _model_folder(folder, weights: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _ctx(tmp_path, *overrides):
    from types import SimpleNamespace

    from datasets import Dataset

    from distill.config import load_config

    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", "task_distill.augment.enabled=true", *overrides])
    train = Dataset.from_dict({"input_ids": [[101, 2204, 102]], "labels": [1]})
    return SimpleNamespace(cfg=cfg, tokenized={"train": train})


def test_augment_cache_key_follows_the_weights_of_the_model_that_makes_the_copies(tmp_path):
    from distill.data.augment import cache_key

    teacher = _model_folder(tmp_path / "teacher", b"first weights")
    ctx = _ctx(tmp_path, "task_distill.augment.method=embedding")
    before = cache_key(ctx, teacher)
    assert cache_key(ctx, teacher) == before
    _model_folder(teacher, b"weights retrained in place")  # same path, other weights
    assert cache_key(ctx, teacher) != before

    mlm = _model_folder(tmp_path / "mlm", b"mlm weights")
    ctx = _ctx(tmp_path, "task_distill.augment.method=mlm", f"task_distill.augment.mlm_model={mlm}")
    with_mlm = cache_key(ctx, teacher)
    _model_folder(teacher, b"the fine-tuned teacher again, retrained")
    assert cache_key(ctx, teacher) == with_mlm  # method=mlm with mlm_model set never reads the teacher
    _model_folder(mlm, b"another masked-LM checkpoint")
    assert cache_key(ctx, teacher) != with_mlm
