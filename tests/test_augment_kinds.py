"""Augmentation of NER and QA training rows: which words a copy may replace, and the copy's labels.

NER copies change only words tagged O and carry the tags exactly as the kind's tokenize aligns them; QA
copies change only question words and their [start, end] still point at the answer's tokens. Every copy is
checked against an independent reference: the kind's own tokenize run again on the copy's words (NER), the
original row's context tokens and answer tokens (QA)."""
from types import SimpleNamespace

import pytest
from datasets import Dataset

from distill.base import assets
from distill.config import load_config
from distill.data.augment import augmented_train_set, split_words
from distill.tasks.question_answering import QuestionAnswering
from distill.tasks.token_classification import IGNORE, TOKEN_CLASSIFICATION, encode_words

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# pre-split words with their tags: entity words of several pieces, O words of one and of several pieces,
# an O word that is several tokenizer words ("well-known") and punctuation
SENTENCES = [
    (["john", "smithereens", "visited", "unwatchable", "paris", "yesterday", "."], [1, 2, 0, 0, 3, 0, 0]),
    (["the", "well-known", "writer", "maria", "lopez", "lives", "in", "new", "kathmandu"], [0, 0, 0, 1, 2, 0, 0, 3, 4]),
    (["nobody", "came", "to", "the", "extraordinarily", "dull", "party"], [0, 0, 0, 0, 0, 0, 0]),
]


def _ctx(tmp_path, tokenizer, kind, train, label_names, *overrides):
    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", "task_distill.augment.enabled=true",
                             "task_distill.augment.replace_prob=1.0", "task_distill.augment.copies=3",
                             "task_distill.augment.top_k=5", *overrides])
    return SimpleNamespace(cfg=cfg, tokenizer=tokenizer, tokenized={"train": train}, run_dir=tmp_path / "run",
                           data=SimpleNamespace(kind=kind, label_names=label_names, name="tiny"))


def _words_of(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The words of a tokenized NER row, cut where the labels start a word (specials dropped)."""
    special = set(tokenizer.all_special_ids)
    words: list[list[str]] = []
    for token, tid, label in zip(tokenizer.convert_ids_to_tokens(ids), ids, labels):
        if tid in special:
            continue
        piece = token[2:] if token.startswith("##") else token
        if label != IGNORE:
            words.append([piece])
        else:
            words[-1].append(piece)
    return ["".join(w) for w in words]


def test_ner_copies_change_only_o_words_and_keep_tags_aligned(tmp_path, tokenizer):
    tokens, tags = [list(t) for t, _ in SENTENCES], [list(g) for _, g in SENTENCES]
    train = Dataset.from_dict({"tokens": tokens, "tags": tags})
    train = TOKEN_CLASSIFICATION.tokenize(train, tokenizer, 64, "train")
    ctx = _ctx(tmp_path, tokenizer, TOKEN_CLASSIFICATION, train, TAGS)
    out = augmented_train_set(ctx, assets.minilm_dir())
    n = len(SENTENCES)
    assert len(out) == n * 4
    assert out["input_ids"][:n] == train["input_ids"] and out["labels"][:n] == train["labels"]
    replaced_o = 0
    for i in range(n, len(out)):
        row = i % n
        ids, labels = out["input_ids"][i], out["labels"][i]
        words = _words_of(tokenizer, ids, labels)
        # the reference: the kind's own tokenize of the copy's words with the original tags
        again = encode_words([words], [tags[row]], tokenizer, 64)
        assert again["input_ids"][0] == ids and again["labels"][0] == labels, words
        originals = tokens[row]
        assert len(words) == len(originals)
        for word, original, tag in zip(words, originals, tags[row]):
            if tag != 0:
                assert word == original, (word, original)  # entity words are never touched
            else:
                replaced_o += word != original
        assert "well-known" in words or row != 1  # a tagged word split by the tokenizer stays whole
    assert replaced_o > 10  # p=1: the single-token-word O words were replaced


def test_ner_data_without_an_o_tag_is_refused_with_a_reason(tmp_path, tokenizer):
    train = Dataset.from_dict({"tokens": [["john", "smith"]], "tags": [[0, 1]]})
    train = TOKEN_CLASSIFICATION.tokenize(train, tokenizer, 16, "train")
    ctx = _ctx(tmp_path, tokenizer, TOKEN_CLASSIFICATION, train, ["B-PER", "I-PER"])
    with pytest.raises(ValueError, match="replaces only words tagged 'O'"):
        augmented_train_set(ctx, assets.minilm_dir())


QA = [("What unwatchable film did the extraordinarily famous director make in 1999?",
       "In 1999 the director made a film called solaris, and critics praised it.", "solaris"),
      ("Where does the well-known writer live?", "The writer lives in kathmandu near the old market.", "kathmandu")]


def test_qa_copies_change_only_question_words_and_answer_positions_follow(tmp_path, tokenizer):
    kind = QuestionAnswering(doc_stride=8, max_question_len=32)
    rows = {"id": [f"q{i}" for i in range(len(QA))], "question": [q for q, _, _ in QA],
            "context": [c for _, c, _ in QA],
            "answers": [{"text": [a], "answer_start": [c.index(a)]} for _, c, a in QA]}
    train = kind.tokenize(Dataset.from_dict(rows), tokenizer, 64, "train")
    ctx = _ctx(tmp_path, tokenizer, kind, train, None)
    out = augmented_train_set(ctx, assets.minilm_dir())
    n = len(train)
    sep = tokenizer.sep_token_id
    shorter = answered = 0
    for i in range(n, len(out)):
        ids, (start, end) = out["input_ids"][i], out["labels"][i]
        orig_ids, (orig_start, orig_end) = train["input_ids"][i % n], train["labels"][i % n]
        cut, orig_cut = ids.index(sep), orig_ids.index(sep)  # [CLS] question [SEP] | context [SEP]
        assert ids[cut:] == orig_ids[orig_cut:]  # the context and its separators, token for token
        assert ids[cut + 1:] and out["token_type_ids"][i][cut + 1:] == train["token_type_ids"][i % n][orig_cut + 1:]
        assert ids[1:cut] != orig_ids[1:orig_cut]  # p=1: the question did change
        shorter += cut < orig_cut
        if orig_start == 0:
            assert (start, end) == (0, 0)  # no answer in this window: [CLS] stays
        else:
            assert tokenizer.decode(ids[start:end + 1]) in ("solaris", "kathmandu")  # the gold answer's tokens
            assert start - orig_start == cut - orig_cut  # moved by the change in the question's length
            answered += 1
    assert shorter > 0 and answered > 0  # a multi-piece question word became one piece, so positions did move


def test_question_words_and_o_words_are_the_only_replaceable_ones(tokenizer):
    from distill.data.augment import ReplaceRule

    enc = tokenizer("which unwatchable film?", "the film was solaris.")
    words = split_words(enc["input_ids"], enc["token_type_ids"], tokenizer)
    marked = ReplaceRule.for_task("question_answering", tokenizer, None).mark(words, enc["input_ids"], [0, 0])
    text = [tokenizer.decode(list(p)) for _, p, ok in marked if ok]
    assert text == ["which", "unwatchable", "film"]  # not the context's "film" nor "solaris"
    assert ReplaceRule.for_task("sequence_classification", tokenizer, None).mark(words, [], None) == words


def test_small_ner_data_without_an_o_tag_is_not_augmented_automatically(tmp_path):
    from distill.data.augment import augment_decision

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    data = SimpleNamespace(kind=TOKEN_CLASSIFICATION, train=[0] * 200, name="tiny", label_names=["B-PER", "I-PER"])
    on, line = augment_decision(SimpleNamespace(cfg=cfg, data=data))
    assert not on and "has no 'O' tag" in line
    data.label_names = TAGS
    on, line = augment_decision(SimpleNamespace(cfg=cfg, data=data))
    assert on and line.startswith("[augment] 200 training sentences < task_distill.augment.auto_below=5,000")
