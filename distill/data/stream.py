"""Streaming general corpora (general.streaming=true): documents are read, tokenized and packed while
training runs, so memory stays flat however large the corpus (text files, folders, `datasets` names
opened with streaming=True).

Order: the stream is cut into windows of ``batch_size x window_batches`` sequences; each window is
sorted by length, cut into batches and the batches shuffled, from a generator seeded by (seed, pass,
window): the same length grouping as the in-memory loader, and the same order on every run. The
stream starts again from the top when it ends (a new pass), until the training's sequences are out.

Resume: the order depends only on (seed, position), so a killed run that skips the batches it already
trained on (the trainer does) continues at the same point of the stream. Skipping re-reads and re-packs
the skipped part of the corpus; nothing is stored.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from distill.base.errors import InputError


class SequenceStream(IterableDataset):
    """``total`` packed rows drawn from ``rows()`` (a fresh iterator over one pass of the corpus)."""

    def __init__(self, rows: Callable[[], Iterable[dict]], total: int, batch_size: int, seed: int = 0,
                 window_batches: int = 50):
        self.rows = rows
        self.total = total
        self.batch_size = batch_size
        self.seed = seed
        self.window = batch_size * window_batches

    def __len__(self) -> int:
        return self.total

    def _ordered(self, rows: Iterator[dict], pass_index: int) -> Iterator[dict]:
        for index in itertools.count():
            window = list(itertools.islice(rows, self.window))
            if not window:
                return
            rng = np.random.default_rng([self.seed, pass_index, index])
            order = np.argsort([-row["length"] for row in window], kind="stable")
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            for b in rng.permutation(len(batches)):
                for i in batches[b]:
                    yield {k: v for k, v in window[i].items() if k != "length"}  # the collators pad the rest

    def __iter__(self) -> Iterator[dict]:
        if get_worker_info() is not None and get_worker_info().num_workers > 1:
            raise InputError("general.streaming reads the corpus in one process; set num_workers=0")
        produced = 0
        for pass_index in itertools.count():
            before = produced
            for row in self._ordered(iter(self.rows()), pass_index):
                yield row
                produced += 1
                if produced >= self.total:
                    return
            if produced == before:  # iter_sequences raises first for an empty corpus; this is a guard
                raise InputError("general.corpus gave no sequences on a new pass")


def open_stream(g, tokenizer, cache_dir, seed: int) -> SequenceStream:
    """The general stage's sequences as a stream (``g`` = GeneralStageConfig). Reads up to the first
    sequence before returning, so a missing, empty, too-short, non-UTF-8 or column-less corpus fails
    here, before any model loads."""
    from distill.data.corpus import first_sequence, iter_documents, iter_sequences

    def rows() -> Iterator[dict]:
        documents = iter_documents(g.corpus, cache_dir, g.text_column, streaming=True)
        packed = iter_sequences(documents, tokenizer, g.max_len, g.packing, g.min_doc_tokens, g.pack_order,
                                g.bm25_window)
        return itertools.islice(packed, g.max_sequences or None)

    first_sequence(g, tokenizer, cache_dir)
    t = g.train
    return SequenceStream(rows, t.max_steps * t.grad_accum * t.batch_size, t.batch_size, seed)
