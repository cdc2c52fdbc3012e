"""Vocabulary pruning: keep only the word-embedding rows of the tokens a task uses (plus the special
tokens), renumbered in their old order, and rewrite the tokenizer (vocab.txt and tokenizer.json) to match.

Pure: a Hugging Face model + its fast WordPiece tokenizer + the old ids to keep in, a smaller model +
tokenizer out. The id map is order-preserving (new id = rank of the old id among the kept ids), so [PAD]
stays 0 and every special token keeps its relative place.

What WordPiece does with the pruned vocabulary: it matches the longest piece first, so a word whose pieces
were all kept is split into exactly the same pieces (every longer prefix was absent before, so it is absent
now); a word that needed a dropped piece is re-split with the longest kept pieces if that covers the whole
word, else the whole word becomes [UNK]."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn


@dataclass
class VocabMap:
    kept: list[int]  # old ids, ascending; new id i is old id kept[i]
    old_size: int

    @property
    def old_to_new(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}

    def lookup(self, unk_new: int) -> torch.Tensor:
        """(old_size,) tensor: old id -> new id, tokens not kept -> the new [UNK] id."""
        table = torch.full((self.old_size,), unk_new, dtype=torch.long)
        table[torch.tensor(self.kept, dtype=torch.long)] = torch.arange(len(self.kept))
        return table


def build_map(tokenizer, used_ids: Iterable[int]) -> VocabMap:
    """The kept old ids: the used ones plus every special and added token, sorted by old id."""
    size = len(tokenizer.get_vocab())
    keep = {int(i) for i in used_ids}
    bad = [i for i in keep if not 0 <= i < size]
    if bad:
        raise ValueError(f"token ids outside the vocabulary of {size}: {sorted(bad)[:5]}")
    keep |= set(tokenizer.all_special_ids)
    keep |= {i for i in tokenizer.added_tokens_decoder if i < size}
    return VocabMap(sorted(keep), size)


def top_tokens(texts: Iterable[str], tokenizer, k: int, exclude: set[int], batch: int = 256) -> list[int]:
    """The k most frequent token ids of ``texts`` (no special tokens) not in ``exclude``; ties by lower id."""
    from collections import Counter
    from itertools import islice

    counts: Counter = Counter()
    texts = iter(texts)
    while chunk := list(islice(texts, batch)):
        for ids in tokenizer(chunk, add_special_tokens=False, truncation=False)["input_ids"]:
            counts.update(ids)
    ranked = sorted((i for i in counts if i not in exclude), key=lambda i: (-counts[i], i))
    return ranked[:k]


def prune_model(model: nn.Module, vmap: VocabMap) -> nn.Module:
    """Slice the word embeddings (and an output/MLM decoder over the vocabulary, if the model has one) to
    the kept rows, in place; config.vocab_size follows."""
    index = torch.tensor(vmap.kept, dtype=torch.long)
    old = model.get_input_embeddings()
    if old.weight.shape[0] != vmap.old_size:
        raise ValueError(f"the model has {old.weight.shape[0]} word embeddings, the tokenizer {vmap.old_size} tokens")
    pad = old.padding_idx
    new_pad = vmap.old_to_new.get(pad) if pad is not None else None
    new = nn.Embedding(len(vmap.kept), old.weight.shape[1], padding_idx=new_pad,
                       dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.copy_(old.weight[index.to(old.weight.device)])
    model.set_input_embeddings(new)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and out.weight.shape[0] == vmap.old_size:
        tied = out.weight is old.weight
        out.weight = new.weight if tied else nn.Parameter(out.weight.data[index.to(out.weight.device)].clone())
        if getattr(out, "bias", None) is not None:
            out.bias = nn.Parameter(out.bias.data[index.to(out.bias.device)].clone())
        out.out_features = len(vmap.kept)
    model.config.vocab_size = len(vmap.kept)
    if getattr(model.config, "pad_token_id", None) is not None:
        model.config.pad_token_id = vmap.old_to_new.get(model.config.pad_token_id, model.config.pad_token_id)
    return model


def prune_tokenizer(tokenizer, vmap: VocabMap, folder: Path | None = None):
    """A fast tokenizer over the kept tokens: the original saved, its vocab.txt and tokenizer.json (WordPiece
    model.vocab, added_tokens, the post-processor's [CLS]/[SEP] ids) rewritten with the new ids, and loaded
    back with the same class. Normalizer, pre-tokenizer and special tokens are the original's."""
    from transformers import AutoTokenizer

    inverse = {i: t for t, i in tokenizer.get_vocab().items()}
    tokens = [inverse[i] for i in vmap.kept]
    remap = vmap.old_to_new
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(folder) if folder is not None else Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        path = tmp / "tokenizer.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        if spec.get("model", {}).get("type") != "WordPiece":
            raise ValueError(f"vocabulary pruning needs a WordPiece tokenizer, not {spec.get('model', {}).get('type')}")
        spec["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
        for added in spec.get("added_tokens", []):
            added["id"] = remap[added["id"]]
        _remap_post_processor(spec.get("post_processor"), tokenizer.get_vocab(), remap)
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        config_path = tmp / "tokenizer_config.json"
        if config_path.exists():
            cfg = json.loads(config_path.read_text(encoding="utf-8"))
            if "added_tokens_decoder" in cfg:
                cfg["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()}
            config_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
        new = AutoTokenizer.from_pretrained(tmp)
    if new.get_vocab() != {t: i for i, t in enumerate(tokens)}:
        raise ValueError("the rewritten tokenizer's vocabulary is not the kept tokens in order")
    return new


def _remap_post_processor(node, old_vocab: dict[str, int], remap: dict[int, int]) -> None:
    """TemplateProcessing keeps {"special_tokens": {"[CLS]": {"ids": [101], ...}}}; BertProcessing keeps
    "cls": ["[CLS]", 101]; Sequence nests processors."""
    if not isinstance(node, dict):
        return
    for proc in node.get("processors", []) or []:
        _remap_post_processor(proc, old_vocab, remap)
    for entry in (node.get("special_tokens") or {}).values():
        entry["ids"] = [remap[i] for i in entry["ids"]]
    for key in ("cls", "sep"):
        if isinstance(node.get(key), list) and len(node[key]) == 2:
            node[key][1] = remap[node[key][1]]


def embedding_params(model: nn.Module) -> int:
    return model.get_input_embeddings().weight.numel()
