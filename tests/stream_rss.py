"""Peak RSS of the general stage's data path over the embedded wiki corpus repeated N times.

    PYTHONPATH=. python tests/stream_rss.py N streaming|memory [packing]

Writes the cleaned wiki text repeated N times to a temporary file (once per N), then reads, tokenizes,
packs and collates every sequence of one pass, as the general stage does, and prints the process's
peak RSS. ``memory`` is the in-memory path (load_paragraphs + pack_sequences), for comparison.
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from torch.utils.data import DataLoader, IterableDataset
from transformers import AutoTokenizer, DataCollatorWithPadding

from distill.base import assets
from distill.data.corpus import _wiki_cache, load_paragraphs, pack_sequences
from distill.data.packing import DocumentCollator
from distill.data.stream import open_stream


def main(copies: int, mode: str, packing: str = "intra_doc") -> None:
    root = Path(tempfile.gettempdir()) / "distill-stream-rss"
    source = _wiki_cache(root / "cache")
    corpus = root / f"wiki-x{copies}.txt"
    if not corpus.is_file():
        text = source.read_text()
        with open(corpus, "w") as fh:
            for _ in range(copies):
                fh.write(text + "\n")
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    collate = DataCollatorWithPadding(tokenizer)
    if packing == "intra_doc":
        collate = DocumentCollator(collate)
    if mode == "streaming":
        train = SimpleNamespace(max_steps=10**9, grad_accum=1, batch_size=32)
        g = SimpleNamespace(corpus=str(corpus), text_column="text", max_len=128, packing=packing, min_doc_tokens=8,
                            max_sequences=0, pack_order="corpus", bm25_window=4096, train=train)
        stream = open_stream(g, tokenizer, None, seed=0)

        class OnePass(IterableDataset):  # the stream's first pass, in its order
            def __iter__(self):
                return stream._ordered(iter(stream.rows()), 0)

        loader = DataLoader(OnePass(), batch_size=32, collate_fn=collate)
        count = "streamed"
    else:
        sequences = pack_sequences(load_paragraphs(str(corpus)), tokenizer, 128, 0, packing, 8)
        count = len(sequences)
        from distill.engine.batching import make_loader

        loader = make_loader(sequences, tokenizer, 32, shuffle=True, collator=collate)
    batches = sum(1 for _ in loader)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"x{copies} {mode} {packing}: {corpus.stat().st_size / 1e6:.0f} MB, {count} sequences, {batches} batches, "
          f"peak RSS {peak / 1024:.0f} MB (after imports and tokenizer {start_rss / 1024:.0f} MB), "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *sys.argv[3:])
