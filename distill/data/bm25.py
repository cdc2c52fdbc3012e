"""Related-document packing (general.pack_order=bm25), after BM25Chunk (Zhao et al. 2024): each
sequence starts with the next unused document in corpus order and is filled with the unused documents
most similar to it, so a sequence holds related text instead of arbitrary neighbours.

Similarity is BM25 (``bm25s``) over the documents' word pieces, computed within windows of
``window`` documents (BM25Chunk's buffer), so a streamed corpus stays in flat memory.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np

CANDIDATES = 32  # most similar documents considered to fill a sequence (BM25 scores of 0 never count)


def related_groups(documents: list[list[int]], budget: int, cost: int = 0) -> list[list[int]]:
    """Indices of ``documents`` (word-piece id lists) in groups: each group starts with the first unused
    document and takes, most similar first, the unused ones that still fit ``budget`` tokens (a
    document costs its length + ``cost``, e.g. its [CLS]/[SEP]). Every index appears exactly once."""
    import bm25s  # local: only this packing order needs it

    n = len(documents)
    terms = [[str(t) for t in doc] for doc in documents]
    retriever = bm25s.BM25()
    retriever.index(terms, show_progress=False)
    k = min(CANDIDATES + 1, n)
    similar, scores = retriever.retrieve(terms, k=k, show_progress=False, n_threads=1)  # (n, k) each
    used = np.zeros(n, dtype=bool)
    groups = []
    for first in range(n):
        if used[first]:
            continue
        used[first] = True
        group, room = [first], budget - len(documents[first]) - cost
        for other, score in zip(similar[first], scores[first]):
            if room <= cost:
                break
            size = len(documents[other]) + cost
            if score > 0 and not used[other] and size <= room:
                used[other] = True
                group.append(int(other))
                room -= size
        groups.append(group)
    return groups


def grouped(documents: Iterable[list[int]], budget: int, cost: int, window: int) -> Iterator[tuple[list[int], bool]]:
    """``documents`` reordered window by window into related groups; yields (document, starts a group)."""
    documents = iter(documents)
    while buffer := list(itertools.islice(documents, window)):
        for group in related_groups(buffer, budget, cost):
            for position, index in enumerate(group):
                yield buffer[index], position == 0
