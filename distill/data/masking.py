"""Which tokens the MLM terms of general distillation corrupt (general.masking).

- token: BERT's dynamic masking, each word piece on its own (DataCollatorForLanguageModeling).
- whole_word: words are chosen, and every piece of a chosen word is corrupted together (BERT WWM):
  80% [MASK], 10% random pieces, 10% unchanged.
- mac: MacBERT's "MLM as correction": chosen words are replaced by similar words instead of [MASK],
  80% similar, 10% random, 10% unchanged. Similar = the nearest tokens in the teacher's input
  embeddings (the neighbours task augmentation uses, ``augment.EmbeddingNeighbours``). Sequence lengths
  never change, so a word of several pieces is replaced piece by piece: a word-start piece by a
  similar whole word, a ``##`` piece by a similar ``##`` piece.

Words are WordPiece words: a piece starting with ``##`` continues the word before it. A sentence gets
about ``probability`` x its real tokens corrupted: words are drawn in random order and kept while
they fit that budget (as in BERT's WWM and Hugging Face's DataCollatorForWholeWordMask).
All draws come from the generator passed in, never from the global RNG.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from distill.data.augment import EmbeddingNeighbours, _whole_word_ids
from distill.base.errors import InputError

MASKING = ("token", "whole_word", "mac")
MASKED, RANDOM = 0.8, 0.1  # BERT / MacBERT: 80% corrupted, 10% random, the rest kept


def _continuation_ids(tokenizer) -> np.ndarray:
    """``##`` pieces that continue an alphabetic word: the candidates to replace such a piece with."""
    return np.array(sorted(i for tok, i in tokenizer.get_vocab().items() if tok.startswith("##") and tok[2:].isalpha()))


class WordMasking:
    """Corrupts whole words of a padded batch; ``embeddings`` (vocab, d), the teacher's input embeddings,
    are needed for ``mode="mac"``."""

    def __init__(self, tokenizer, probability: float, mode: str, embeddings: torch.Tensor | None = None,
                 neighbours: int = 5):
        if mode not in ("whole_word", "mac"):
            raise InputError(f"general.masking {mode!r}: WordMasking does whole_word or mac")
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.continues = torch.tensor([t.startswith("##") for t in tokens])  # (vocab,)
        if not self.continues.any():
            raise InputError(f"general.masking={mode} needs a WordPiece tokenizer (## pieces mark words); "
                             f"{type(tokenizer).__name__} has none: use general.masking=token")
        self.special = torch.zeros(len(tokens), dtype=torch.bool)
        self.special[torch.as_tensor(tokenizer.all_special_ids)] = True
        self.mask_id = tokenizer.mask_token_id
        self.vocab = len(tokens)
        self.probability = probability
        self.mode = mode
        self.starts = torch.as_tensor(_whole_word_ids(tokenizer))
        self.continuations = torch.as_tensor(_continuation_ids(tokenizer))
        if mode == "mac":
            if embeddings is None:
                raise InputError("general.masking=mac needs the teacher's input embeddings")
            self.similar_start = EmbeddingNeighbours(embeddings.detach().cpu(), self.starts.numpy(), neighbours)
            self.similar_continuation = EmbeddingNeighbours(embeddings.detach().cpu(), self.continuations.numpy(),
                                                            neighbours)

    def words(self, ids: list[int]) -> list[list[int]]:
        """Positions of each maskable word of one sequence (special tokens and padding are never words)."""
        words: list[list[int]] = []
        for pos, tid in enumerate(ids):
            if self.special[tid]:
                words.append([])  # a boundary: a ## piece after [SEP] starts no word of its own document
                continue
            if self.continues[tid] and words and words[-1]:
                words[-1].append(pos)
            else:
                words.append([pos])
        return [w for w in words if w]

    def choose(self, words: list[list[int]], generator: torch.Generator) -> list[list[int]]:
        """Words in random order, kept while their pieces fit round(probability x pieces) (at least 1)."""
        budget = max(1, round(self.probability * sum(len(w) for w in words)))
        chosen, covered = [], 0
        for i in torch.randperm(len(words), generator=generator).tolist():
            if covered >= budget:
                break
            if covered + len(words[i]) > budget:
                continue
            chosen.append(words[i])
            covered += len(words[i])
        return sorted(chosen)

    def _similar(self, piece: int, generator: torch.Generator) -> int:
        table = self.similar_continuation if self.continues[piece] else self.similar_start
        if (piece,) not in table.table:
            table.prepare([(piece,)])
        options = table.table[(piece,)]
        return int(options[int(torch.randint(len(options), (1,), generator=generator))])

    def _random(self, piece: int, generator: torch.Generator) -> int:
        if self.mode == "whole_word":  # BERT: any token of the vocabulary
            return int(torch.randint(self.vocab, (1,), generator=generator))
        pool = self.continuations if self.continues[piece] else self.starts  # MacBERT: a random word
        return int(pool[int(torch.randint(len(pool), (1,), generator=generator))])

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, seq) ids -> (corrupted ids, labels with -100 where nothing was chosen)."""
        corrupted = input_ids.clone()
        labels = torch.full_like(input_ids, -100)
        for row in range(input_ids.shape[0]):
            ids = input_ids[row].tolist()
            for word in self.choose(self.words(ids), generator):
                draw = float(torch.rand((), generator=generator))
                for pos in word:
                    labels[row, pos] = ids[pos]
                    if draw < MASKED and self.mode == "whole_word":
                        corrupted[row, pos] = self.mask_id
                    elif draw < MASKED:
                        corrupted[row, pos] = self._similar(ids[pos], generator)
                    elif draw < MASKED + RANDOM:
                        corrupted[row, pos] = self._random(ids[pos], generator)
        return corrupted, labels


class MLMCollator:
    """Dynamic masking for the DistilBERT terms: masked inputs, targets in ``mlm_labels``.

    The masks are drawn from a generator seeded by (seed, the batch's token ids), never from the
    global RNG: the data loader collates ahead of the training step, so masks drawn from the global
    RNG would differ between a resumed run and an uninterrupted one. Batches are re-grouped every
    epoch, so a sentence still gets new masks from epoch to epoch. ``masking``: token (BERT), or
    whole_word / mac (``distill.data.masking``; mac needs the teacher's input ``embeddings``)."""

    def __init__(self, tokenizer, probability: float, seed: int = 0, masking: str = "token",
                 embeddings: torch.Tensor | None = None, neighbours: int = 5):
        self.inner = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
        self.tokenizer = tokenizer
        self.seed = seed
        self.words = None if masking == "token" else WordMasking(tokenizer, probability, masking, embeddings,
                                                                 neighbours)

    def __call__(self, features):
        key = zlib.crc32(b"".join(np.asarray(f["input_ids"], dtype=np.int64).tobytes() for f in features))
        seed = (self.seed * 1_000_003 + key) % 2**63
        if self.words is not None:
            batch = self.tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in features],
                                       return_tensors="pt")
            batch["input_ids"], batch["mlm_labels"] = self.words(batch["input_ids"],
                                                                 torch.Generator().manual_seed(seed))
            return batch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            batch = self.inner(features)
        batch["mlm_labels"] = batch.pop("labels")
        return batch
