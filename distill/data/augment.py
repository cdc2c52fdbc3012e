"""TinyBERT data augmentation, batched: each word is replaced with probability p by one of K candidates.

Candidates come from an MLM head (``method=mlm``: all chosen words of a sentence are masked at once
and predicted in one forward pass, instead of one pass per word as in the original), or from the
teacher's input embeddings (``method=embedding``: the K nearest whole-word tokens to the word's
mean piece embedding; works with any BERT teacher, MLM head or not). N copies per example are
written next to the originals and cached on disk, keyed by everything that shapes them. Both run on
the accelerator; the MLM pass in the precision of stage 2a (``task_distill.intermediate.mixed_precision``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm


from distill.base.fsutil import replace_folder
from distill.engine.logit_cache import weights_stamp
from distill.engine.placement import placement
from distill.base.ranks import is_main_process

Word = tuple[int, tuple[int, ...], bool]  # (segment, piece ids, replaceable)


def _whole_word_ids(tokenizer) -> np.ndarray:
    """Token ids that are whole alphabetic words (no ## continuation, no special or unused tokens)."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    return np.array(sorted(i for tok, i in vocab.items()
                           if i not in special and tok.isalpha() and len(tok) > 1 and not tok.startswith("##")))


def split_words(input_ids: list[int], token_type_ids: list[int], tokenizer) -> list[Word]:
    """Group word pieces into words; special tokens are words that are never replaced."""
    tokens = tokenizer.convert_ids_to_tokens(input_ids)
    special = set(tokenizer.all_special_ids)
    words: list[list] = []
    for tid, tok, seg in zip(input_ids, tokens, token_type_ids):
        if tok.startswith("##") and words and words[-1][2]:
            words[-1][1].append(tid)
        else:
            words.append([seg, [tid], tid not in special and tok.isalpha()])
    return [(seg, tuple(pieces), ok) for seg, pieces, ok in words]


def join_words(words: list[tuple[int, tuple[int, ...]]]) -> dict[str, list[int]]:
    ids = [t for _, pieces in words for t in pieces]
    types = [seg for seg, pieces in words for _ in pieces]
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids), "length": len(ids)}


class EmbeddingNeighbours:
    """K nearest whole-word tokens (cosine, teacher input embeddings) to a word's mean piece embedding."""

    def __init__(self, embeddings: torch.Tensor, candidate_ids: np.ndarray, top_k: int):
        self.emb = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (vocab, d)
        self.candidates = torch.as_tensor(candidate_ids, device=self.emb.device)
        self.cand_emb = self.emb[self.candidates]  # (C, d)
        self.top_k = top_k
        self.table: dict[tuple[int, ...], list[int]] = {}

    def prepare(self, words: list[tuple[int, ...]], chunk: int = 2048) -> None:
        todo = [w for w in dict.fromkeys(words) if w not in self.table]
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            vecs = torch.stack([self.emb[list(w)].mean(0) for w in part])  # (n, d)
            vecs = torch.nn.functional.normalize(vecs, dim=-1)
            sims = vecs @ self.cand_emb.T  # (n, C)
            top = sims.topk(self.top_k + 1, dim=-1).indices
            for w, row in zip(part, self.candidates[top].tolist()):
                ids = [int(i) for i in row]
                self.table[w] = [i for i in ids if (i,) != w][: self.top_k]


def _augment_embedding(rows: list[list[Word]], ctx, teacher_dir: Path, rng: np.random.Generator):
    from transformers import AutoModel

    aug = ctx.cfg.task_distill.augment
    emb = AutoModel.from_pretrained(teacher_dir).get_input_embeddings().weight.detach()
    emb = emb.to(placement(ctx.cfg.task_distill.intermediate.mixed_precision).device)
    neighbours = EmbeddingNeighbours(emb, _whole_word_ids(ctx.tokenizer), aug.top_k)
    neighbours.prepare([p for words in rows for _, p, ok in words if ok])
    out = []
    for _ in tqdm(range(aug.copies), desc="augment (embedding)"):
        for words in rows:
            new = [(seg, (int(rng.choice(neighbours.table[p])),) if ok and rng.random() < aug.replace_prob else p)
                   for seg, p, ok in words]
            out.append(join_words(new))
    return out


@torch.no_grad()
def _augment_mlm(rows: list[list[Word]], ctx, mlm_name: str, rng: np.random.Generator):
    from teachers.load import load_backbone

    aug = ctx.cfg.task_distill.augment
    tok = ctx.tokenizer
    place = placement(ctx.cfg.task_distill.intermediate.mixed_precision)
    model = load_backbone(mlm_name, with_mlm_head=True).eval().to(place.device)
    model.set_attn_implementation("sdpa")
    allowed = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=place.device)
    allowed[torch.as_tensor(_whole_word_ids(tok))] = True
    out = []
    for _ in tqdm(range(aug.copies), desc="augment (mlm)"):
        for start in range(0, len(rows), aug.batch_size):
            chunk = rows[start:start + aug.batch_size]
            chosen = [[ok and rng.random() < aug.replace_prob for _, _, ok in words] for words in chunk]
            masked = [join_words([(seg, (tok.mask_token_id,) if c else p) for (seg, p, _), c in zip(words, ch)])
                      for words, ch in zip(chunk, chosen)]
            batch = tok.pad([{k: m[k] for k in ("input_ids", "token_type_ids", "attention_mask")} for m in masked],
                            return_tensors="pt")
            with place.autocast():
                logits = model(**place.inputs(dict(batch))).logits.float()  # (batch, seq, vocab)
            logits[..., ~allowed] = float("-inf")
            top = logits.topk(aug.top_k, dim=-1).indices.cpu()  # (batch, seq, K)
            for i, (words, ch) in enumerate(zip(chunk, chosen)):
                pos, new = 0, []
                for (seg, pieces, _), c in zip(words, ch):
                    if c:
                        new.append((seg, (int(top[i, pos, rng.integers(aug.top_k)]),)))
                        pos += 1
                    else:
                        new.append((seg, pieces))
                        pos += len(pieces)
                out.append(join_words(new))
    return out


def _mlm_name(ctx) -> str:
    return ctx.cfg.task_distill.augment.mlm_model or ctx.cfg.teacher.name  # the pretrained teacher's own MLM head


def source_model(ctx, teacher_dir: Path) -> str:
    """The model whose weights make the copies: method=mlm, the MLM (``augment.mlm_model``, else the pretrained
    ``teacher.name``); method=embedding, the fine-tuned teacher's input embeddings (``teacher_dir``)."""
    return _mlm_name(ctx) if ctx.cfg.task_distill.augment.method == "mlm" else str(teacher_dir)


def weights_key(name: str) -> list:
    """What identifies the weights ``name`` loads: the weights stamp of its folder (a local or embedded folder,
    or the hub cache's snapshot of a hub name, named by its commit); a hub name not in the cache, itself."""
    from teachers.load import resolve_teacher_path

    path = Path(resolve_teacher_path(name))
    if not path.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):
            return [name]
        path = Path(cached).parent  # .../snapshots/<commit>/
        return [name, path.name, weights_stamp(path)]
    return weights_stamp(path)


def mlm_source(ctx) -> str:
    """The MLM model for method=mlm; raises before any work when there is none."""
    from teachers.load import has_mlm_head

    name = _mlm_name(ctx)
    if not has_mlm_head(name):
        raise ValueError(f"task_distill.augment.method=mlm needs an MLM head but {name!r} has none; set "
                         "task_distill.augment.mlm_model to a masked-LM checkpoint or use augment.method=embedding")
    return name


def cache_key(ctx, teacher_dir: Path) -> str:
    """Everything that shapes the copies, the weights of the model that makes them included (not its path: a
    teacher retrained in place makes other copies)."""
    aug = ctx.cfg.task_distill.augment
    train = ctx.tokenized["train"]
    parts = {"augment": vars(aug), "task": vars(ctx.cfg.task), "seed": ctx.cfg.seed, "n": len(train),
             "fingerprint": train._fingerprint, "weights": weights_key(source_model(ctx, teacher_dir))}
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def augmented_train_set(ctx, teacher_dir: Path) -> Dataset:
    """Original training examples + ``copies`` augmented copies of each (labels inherited), cached."""
    aug = ctx.cfg.task_distill.augment
    train = ctx.tokenized["train"]
    cache = ctx.run_dir / "cache" / f"augment-{aug.method}-{cache_key(ctx, teacher_dir)}"
    if (cache / "dataset_info.json").is_file():
        return load_from_disk(str(cache))
    mlm_name = mlm_source(ctx) if aug.method == "mlm" else None
    types = train["token_type_ids"] if "token_type_ids" in train.column_names else [[0] * n for n in train["length"]]
    rows = [split_words(ids, tt, ctx.tokenizer) for ids, tt in zip(train["input_ids"], types)]
    rng = np.random.default_rng(ctx.cfg.seed)
    made = _augment_mlm(rows, ctx, mlm_name, rng) if mlm_name else _augment_embedding(rows, ctx, teacher_dir, rng)
    labels = list(train["labels"]) * aug.copies
    extra = Dataset.from_list([{**m, "labels": y} for m, y in zip(made, labels)])
    keep = ["input_ids", "token_type_ids", "attention_mask", "length", "labels"]
    result = concatenate_datasets([train.select_columns(keep).cast(extra.features), extra])
    if not is_main_process():  # every rank computed the same set; only the main one writes the cache
        return result
    replace_folder(cache, lambda tmp: result.save_to_disk(str(tmp)))
    return load_from_disk(str(cache))
