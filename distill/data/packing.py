"""Document-aware packing (general.packing=intra_doc): several documents share one sequence, and none
of them sees the others.

Each packed sequence is a run of segments ``[CLS] document [SEP]``; a ``doc_ids`` column numbers the
segment of every token (1, 2, ...). The collator turns it into
- ``attention_mask`` (batch, seq, seq): 1 where query and key are real tokens of the same document,
- ``position_ids`` (batch, seq): restarting at 0 in every document (BERT's positions are absolute),
so a document packed with others gets the hidden states it would get alone (Zhao et al. 2024,
intra-document masking). The losses read the same (batch, seq, seq) mask: pair losses over
same-document (query, key) pairs, token losses over its diagonal (the real tokens).

Hugging Face BERT takes a 4-D mask as it is (``masking_utils`` returns it untouched) and the eager
kernel *adds* it to the scores, so models get the additive float form of ``model_attention_mask``.
"""
from __future__ import annotations

import torch
from torch import nn

from distill.engine.batching import model_attention_mask
from distill.base.errors import InputError


def document_attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq) document numbers (0 = padding) -> (batch, seq, seq) long mask of same-document real pairs."""
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (batch, seq, seq)
    return (same & (doc_ids > 0)[:, :, None]).long()


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq) document numbers -> position ids that restart at 0 where a document starts; 0 on padding."""
    b, s = doc_ids.shape
    index = torch.arange(s, device=doc_ids.device).expand(b, s)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # start of each token's document
    return torch.where(doc_ids > 0, index - first, torch.zeros_like(index))


class DocumentCollator:
    """Wraps a collator (padding, or MLM masking): pops ``doc_ids`` from the features, lets ``inner``
    build the batch, then replaces its attention mask by the block-diagonal (batch, seq, seq) one and
    adds restarting ``position_ids``."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        docs = [f["doc_ids"] for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k != "doc_ids"} for f in features])
        b, s = batch["input_ids"].shape
        doc_ids = torch.zeros(b, s, dtype=torch.long)  # (batch, seq)
        for row, ids in enumerate(docs):
            ids = torch.as_tensor(ids, dtype=torch.long)
            doc_ids[row, :len(ids)] = ids
        batch["attention_mask"] = document_attention_mask(doc_ids)
        batch["position_ids"] = document_positions(doc_ids)
        return batch


class BlockMaskError(InputError):
    """The model's attention implementation cannot take a (batch, seq, seq) mask."""


@torch.no_grad()
def check_block_mask(model: nn.Module, who: str, cls_id: int = 101, sep_id: int = 102) -> None:
    """Raise BlockMaskError unless ``model`` really applies a (batch, seq, seq) mask: two short documents
    packed in one sequence must give the second the hidden states it has alone. Catches kernels that
    reject a 4-D mask (flash attention) and ones that silently ignore it, before any training step."""
    impl = getattr(model.config, "_attn_implementation", None)
    word = [i % model.config.vocab_size for i in range(2000, 2005)]  # any ordinary ids of the vocabulary
    first = [cls_id, word[0], word[1], word[2], sep_id]
    second = [cls_id, word[3], word[4], sep_id]
    packed = torch.tensor([first + second])
    doc_ids = torch.tensor([[1] * len(first) + [2] * len(second)])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=packed.to(device), position_ids=document_positions(doc_ids).to(device),
                    attention_mask=model_attention_mask(document_attention_mask(doc_ids)).to(device),
                    output_hidden_states=True)
        alone = model(input_ids=torch.tensor([second], device=device), output_hidden_states=True)
        ok = torch.allclose(out.hidden_states[-1][0, len(first):], alone.hidden_states[-1][0], atol=1e-4)
        problem = "lets documents attend to each other" if not ok else ""
    except Exception as err:  # kernels reject a 4-D mask with many error types
        problem = f"rejects it ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    finally:
        model.train(was_training)
    if problem:
        raise BlockMaskError(f"general.packing=intra_doc needs a (batch, seq, seq) attention mask, but the {who}'s "
                             f"attention implementation {impl!r} {problem}; use eager or sdpa attention, or set "
                             "general.packing to concat or per_doc")
