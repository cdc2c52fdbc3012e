"""Token classification (NER): one tag per word, logits (batch, seq, labels).

Sub-word alignment: the first sub-token of a word carries the word's tag, the other sub-tokens and the
special tokens get -100 (ignored by the losses and the metric). A sentence longer than ``max_len``
tokens is cut at a word boundary, never inside a word; the words cut off are counted and reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.tasks.base import TaskKind, TaskKindError

IGNORE = -100  # label of positions that carry no word tag (special tokens, non-first sub-tokens, padding)


def cut_at_word_boundary(word_ids: list[int | None], max_len: int) -> list[int]:
    """Positions to keep so that the sequence fits in ``max_len`` without splitting a word: the leading
    tokens up to the last whole word that fits, then the trailing special tokens (e.g. [SEP])."""
    trailing = 0
    while trailing < len(word_ids) and word_ids[len(word_ids) - 1 - trailing] is None:
        trailing += 1
    p = max_len - trailing
    while p > 0 and word_ids[p] is not None and word_ids[p - 1] == word_ids[p]:
        p -= 1  # p would split a word: cut before its first sub-token
    return list(range(p)) + list(range(len(word_ids) - trailing, len(word_ids)))


def align_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """First sub-token of each word gets its tag; other sub-tokens and special tokens get -100."""
    labels, previous = [], None
    for w in word_ids:
        labels.append(IGNORE if w is None or w == previous else tags[w])
        previous = w
    return labels


@dataclass
class AlignmentStats:
    sentences: int = 0
    long_sentences: int = 0  # longer than max_len tokens
    truncated_words: int = 0  # words cut off at the boundary: not trained on, not scored
    empty_words: int = 0  # words the tokenizer turns into no token at all (e.g. control characters)

    def line(self, split: str, max_len: int) -> str:
        return (f"[data] {split}: {self.long_sentences} of {self.sentences} sentences longer than task.max_len="
                f"{max_len} tokens; {self.truncated_words} words cut off at a word boundary (not trained on, not "
                f"scored); {self.empty_words} words with no sub-token")


def encode_words(tokens: list[list[str]], tags: list[list[int]] | None, tokenizer, max_len: int,
                 stats: AlignmentStats | None = None) -> dict[str, list]:
    """Tokenize pre-split words (fast tokenizer's word_ids) and align the tags; no padding."""
    if not getattr(tokenizer, "is_fast", False):
        raise TaskKindError("token classification needs a fast tokenizer (word_ids()); the teacher's tokenizer "
                            f"{type(tokenizer).__name__} is not one")
    enc = tokenizer(tokens, is_split_into_words=True, truncation=False)
    out: dict[str, list] = {k: [] for k in enc.keys()}
    out["length"], out["labels"] = [], []
    stats = stats or AlignmentStats()
    for i in range(len(tokens)):
        word_ids = enc.word_ids(i)
        row = {k: enc[k][i] for k in enc.keys()}
        stats.sentences += 1
        present = {w for w in word_ids if w is not None}
        stats.empty_words += len(tokens[i]) - len(present)
        if len(word_ids) > max_len:
            keep = cut_at_word_boundary(word_ids, max_len)
            kept_words = {word_ids[j] for j in keep if word_ids[j] is not None}
            stats.long_sentences += 1
            stats.truncated_words += len(present) - len(kept_words)
            row = {k: [v[j] for j in keep] for k, v in row.items()}
            word_ids = [word_ids[j] for j in keep]
        for k, v in row.items():
            out[k].append(v)
        out["length"].append(len(word_ids))
        out["labels"].append(align_labels(word_ids, tags[i]) if tags is not None else [IGNORE] * len(word_ids))
    return out


def pad_rows(rows, length: int, left: bool, fill, tail_shape: tuple, dtype) -> torch.Tensor:
    """Per-example rows of different lengths (n_i, *tail_shape) -> (batch, length, *tail_shape), placed on
    the tokenizer's padding side, the rest ``fill``."""
    out = torch.full((len(rows), length, *tail_shape), fill, dtype=dtype)
    for i, row in enumerate(rows):
        row = torch.as_tensor(row, dtype=dtype)
        n = row.shape[0]
        if left:
            out[i, length - n:] = row
        else:
            out[i, :n] = row
    return out


class TokenCollator:
    """Pads inputs with the tokenizer, labels with -100 and cached teacher logits (seq, labels) with 0."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        features = [dict(f) for f in features]
        labels = [f.pop("labels") for f in features] if "labels" in features[0] else None
        teacher = [f.pop("teacher_logits") for f in features] if "teacher_logits" in features[0] else None
        batch = self.tokenizer.pad(features, return_tensors="pt")
        s = batch["input_ids"].shape[1]
        left = self.tokenizer.padding_side == "left"
        if labels is not None:
            batch["labels"] = pad_rows(labels, s, left, IGNORE, (), torch.long)  # (batch, seq)
        if teacher is not None:
            width = torch.as_tensor(teacher[0]).shape[-1]
            batch["teacher_logits"] = pad_rows(teacher, s, left, 0.0, (width,), torch.float32)  # (batch, seq, labels)
        return batch


@dataclass(frozen=True)
class TokenClassification(TaskKind):
    name: str = "token_classification"
    student_kind: str = "token"
    architecture_suffix: str = "ForTokenClassification"
    pipeline_task: str = "token-classification"
    prediction_unit: str = "real tokens"
    onnx_logits_axes: tuple[tuple[int, str], ...] = ((0, "batch"), (1, "sequence"))

    @property
    def auto_class(self):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def head_config(self, label_names: list[str] | None) -> dict[str, Any]:
        if not label_names:
            raise TaskKindError("token classification needs tag names (id2label)")
        return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                "label2id": {n: i for i, n in enumerate(label_names)}}

    def tokenize(self, dataset, tokenizer, max_len: int, split: str = ""):
        stats = AlignmentStats()

        def encode(batch: dict) -> dict:
            return encode_words(batch["tokens"], batch.get("tags"), tokenizer, max_len, stats)

        out = dataset.map(encode, batched=True, desc="tokenize", load_from_cache_file=False)
        print(stats.line(split or "split", max_len))
        return out

    def collator(self, tokenizer):
        return TokenCollator(tokenizer)

    def output_mask(self, batch):
        """Real word positions: the first sub-token of every word (labels != -100)."""
        if "labels" in batch:
            return batch["labels"] != IGNORE
        return batch["attention_mask"]

    def check_losses(self, losses: dict[str, float], key: str) -> None:
        bad = [n for n in losses if n in ("logits_mse", "hard_mse")]
        if bad:
            raise TaskKindError(f"config key '{key}.{bad[0]}': a regression loss on a token classification task; "
                                "use soft_ce (and hard_ce)")

    def rows(self, logits, labels, attention_mask):
        lengths = attention_mask.sum(-1)
        if left_padded(attention_mask):
            starts = attention_mask.shape[1] - lengths
            logit_rows = [logits[i, starts[i]:] for i in range(len(logits))]
            label_rows = [labels[i, starts[i]:] for i in range(len(labels))] if labels is not None else []
        else:
            logit_rows = [logits[i, :lengths[i]] for i in range(len(logits))]
            label_rows = [labels[i, :lengths[i]] for i in range(len(labels))] if labels is not None else []
        return logit_rows, label_rows

    def flat_outputs(self, logits, attention_mask):
        return logits[attention_mask.astype(bool)]  # (real tokens, labels)

    def unflatten(self, flat, attention_masks):
        lengths = np.concatenate([m.sum(-1) for m in attention_masks]).astype(int)
        return np.split(flat, np.cumsum(lengths)[:-1])

    def metrics(self, logit_rows, label_rows, metric, label_names, examples=None):
        from distill.tasks.metrics import entity_metrics

        if not label_names:
            raise TaskKindError("entity F1 needs the tag names (id2label)")
        predicted, gold = [], []
        for logits, labels in zip(logit_rows, label_rows):
            words = np.asarray(labels) != IGNORE
            predicted.append([label_names[i] for i in np.asarray(logits)[words].argmax(-1)])
            gold.append([label_names[i] for i in np.asarray(labels)[words]])
        return entity_metrics(gold, predicted)


def left_padded(attention_mask: np.ndarray) -> bool:
    return bool(attention_mask.shape[1] and (attention_mask[:, 0] == 0).any())


TOKEN_CLASSIFICATION = TokenClassification()
