"""Tokenization with dynamic padding, and batches grouped by length."""
from __future__ import annotations

import math

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase


MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels", "teacher_logits")


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length. Training: shuffled within mega-batches, then batches shuffled;
    evaluation: sorted by length. Order depends only on (seed, epoch), so a resumed run sees the
    same batches and can skip the ones it already trained on."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0, mega: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def make_loader(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool,
                seed: int = 0, num_workers: int = 0, collator=None) -> DataLoader:
    """DataLoader over a tokenized dataset; pads each batch to its own longest sequence."""
    # example_id: distill.engine.feature_cache; question_id, offset_mapping: a QA split's windows (TaskKind.gold)
    extra = ("special_tokens_mask", "doc_ids", "example_id", "question_id", "offset_mapping")
    keep = [c for c in dataset.column_names if c in MODEL_COLUMNS or c in extra]
    data = dataset.with_format("torch", columns=keep)
    sampler = LengthGroupedBatchSampler(dataset["length"], batch_size, shuffle, seed)
    collator = collator or DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)
    return DataLoader(data, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)


def to_model_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """The model's arguments; a (batch, seq, seq) document mask (general.packing=intra_doc) becomes the
    additive (batch, 1, seq, seq) bias the attention takes."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids", "position_ids")}
    if "attention_mask" in inputs and inputs["attention_mask"].dim() == 3:
        inputs["attention_mask"] = model_attention_mask(inputs["attention_mask"])
    return inputs


def model_attention_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (batch, seq, seq) 0/1 mask as the additive (batch, 1, seq, seq) bias BERT's attention adds to its
    scores. Padded queries (rows with no allowed key) attend to themselves: a row masked everywhere
    would be NaN in kernels that turn the bias into -inf, and NaN leaks through later layers."""
    allowed = mask.bool() | torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)  # (batch, seq, seq)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return bias[:, None]  # (batch, 1, seq, seq)
