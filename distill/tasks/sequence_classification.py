"""Sentence (pair) classification and regression: one prediction per example, logits (batch, labels)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.tasks.base import TaskKind

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SequenceClassification(TaskKind):
    name: str = "sequence_classification"
    student_kind: str = "classifier"
    architecture_suffix: str = "ForSequenceClassification"
    pipeline_task: str = "text-classification"
    prediction_unit: str = "examples"
    onnx_logits_axes: tuple[tuple[int, str], ...] = ((0, "batch"),)

    @property
    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def head_config(self, label_names: list[str] | None) -> dict[str, Any]:
        if label_names is None:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                "label2id": {n: i for i, n in enumerate(label_names)}, "problem_type": "single_label_classification"}

    def tokenize(self, dataset, tokenizer, max_len: int, split: str = ""):
        return tokenize(dataset, tokenizer, max_len)

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)

    def rows(self, logits, labels, attention_mask):
        return list(logits), list(labels) if labels is not None else []

    def collect(self, rows: list) -> np.ndarray:
        return np.stack(rows) if rows else np.zeros((0,))

    def flat_outputs(self, logits, attention_mask):
        return logits

    def unflatten(self, flat, attention_masks):
        return list(flat)

    def metrics(self, logit_rows, label_rows, metric, label_names, examples=None):
        from distill.tasks.metrics import compute_metrics

        return compute_metrics(self.collect(list(logit_rows)), self.collect(list(label_rows)), metric)


SEQUENCE_CLASSIFICATION = SequenceClassification()


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_len: int) -> Dataset:
    """Adds input_ids/attention_mask/token_type_ids/labels/length; nothing is padded here."""
    has_pair = "text_pair" in dataset.column_names

    def encode(batch: dict) -> dict:
        pair = batch["text_pair"] if has_pair else None
        enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_len)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        if "label" in batch:
            enc["labels"] = batch["label"]
        return enc

    return dataset.map(encode, batched=True, desc="tokenize", load_from_cache_file=False)
