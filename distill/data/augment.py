"""TinyBERT data augmentation, batched: each word is replaced with probability p by one of K candidates.

Which words may be replaced depends on the task kind (``ReplaceRule``): any whole alphabetic word of a
sentence (pair) for sentence classification; for NER only words tagged ``O``, each a whole tagged word; for
QA only question words, never the context. A replaced word becomes one whole-word token, so a copy's labels
are rebuilt as the kind's tokenize would align them (NER) or moved with the question's new length (QA).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from distill.base.errors import InputError
from distill.base.fsutil import replace_folder
from distill.engine.logit_cache import weights_stamp
from distill.engine.placement import placement
from distill.base.ranks import is_main_process
from distill.tasks.token_classification import IGNORE

Word = tuple[int, tuple[int, ...], bool]  # (segment, piece ids, replaceable)
NewWord = tuple[int, tuple[int, ...]]  # (segment, piece ids) of a word in a copy
OUTSIDE_TAG = "O"  # NER: the tag of words outside any entity, the only words a copy may replace
# what auto_below counts, per task kind: the rows of the untokenized training split
UNITS = {"token_classification": "sentences", "question_answering": "questions"}


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


def join_words(words: list[NewWord]) -> dict[str, list[int]]:
    ids = [t for _, pieces in words for t in pieces]
    types = [seg for seg, pieces in words for _ in pieces]
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids), "length": len(ids)}


@dataclass(frozen=True)
class ReplaceRule:
    """Which words of a tokenized training row a copy may replace, and the copy's labels, for one task kind.

    Candidates are single whole-word tokens, so a replaced word becomes one piece: a copy is never longer
    than its row, and every word left alone keeps its pieces."""

    kind: str  # the task kind's name
    special: frozenset  # ids of the tokenizer's special tokens
    sep: int | None = None  # QA: the separator between question and context
    question_first: bool = True  # QA: [CLS] question [SEP] context [SEP] (the tokenizer pads on the right)
    outside: int | None = None  # NER: the id of the O tag

    @classmethod
    def for_task(cls, kind: str, tokenizer, label_names: list[str] | None) -> "ReplaceRule":
        outside = None
        if kind == "token_classification":
            if not label_names or OUTSIDE_TAG not in label_names:
                raise InputError(f"task_distill.augment: TinyBERT word replacement on NER data replaces only words "
                                 f"tagged {OUTSIDE_TAG!r}, and the tags {label_names} have none; set "
                                 "task_distill.augment.enabled=false and task_distill.augment.auto_below=0")
            outside = label_names.index(OUTSIDE_TAG)
        return cls(kind, frozenset(tokenizer.all_special_ids), tokenizer.sep_token_id,
                   getattr(tokenizer, "padding_side", "right") == "right", outside)

    def key(self) -> dict:
        """What the rule adds to the augmentation cache key (nothing for sentence classification, whose copies
        were made before the rule existed)."""
        if self.kind == "token_classification":
            return {"kind": self.kind, "outside": self.outside}
        if self.kind == "question_answering":
            return {"kind": self.kind, "question_first": self.question_first}
        return {}

    def mark(self, words: list[Word], input_ids: list[int], labels) -> list[Word]:
        """``words`` (split_words of the row) with only the words this kind may replace left replaceable."""
        if self.kind == "token_classification":
            return self._outside_words(words, input_ids, labels)
        if self.kind == "question_answering":
            return self._question_words(words)
        return words

    def _outside_words(self, words: list[Word], input_ids: list[int], labels: list[int]) -> list[Word]:
        """Words tagged O that are a whole tagged word (their first piece carries the tag, the rest -100, and the
        next token starts another word). Never a word inside an entity: the replacement would keep a B-/I- tag
        that no longer fits it. Never part of a tagged word that split_words splits (e.g. "well" of
        "well-known"): the tag belongs to the whole."""
        starts = [y != IGNORE or t in self.special for t, y in zip(input_ids, labels)]  # a new word or a special
        out, pos = [], 0
        for seg, pieces, ok in words:
            end = pos + len(pieces)
            whole = starts[pos] and not any(starts[pos + 1:end]) and (end == len(labels) or starts[end])
            out.append((seg, pieces, ok and whole and labels[pos] == self.outside))
            pos = end
        return out

    def _question_words(self, words: list[Word]) -> list[Word]:
        """Question words only: the context keeps every token, so the answer span and its offsets stay valid."""
        out, seps = [], 0
        for seg, pieces, ok in words:
            in_question = (seps == 0) == self.question_first  # question first: before the first [SEP]
            out.append((seg, pieces, ok and in_question))
            seps += pieces == (self.sep,)
        return out

    def labels(self, words: list[Word], new: list[NewWord], labels):
        """The labels of a copy ``new`` of the row ``words``: sentence classification, the row's; NER, each word's
        tag on its first piece and -100 on the others (token_classification.align_labels), a kept word keeping
        its own; QA, [start, end] moved to where the same context tokens sit in the copy."""
        if self.kind == "token_classification":
            out, pos = [], 0
            for (_, old, _), (_, pieces) in zip(words, new):
                tags = list(labels[pos:pos + len(old)])
                out += tags if pieces == old else [tags[0]] + [IGNORE] * (len(pieces) - 1)
                pos += len(old)
            return out
        if self.kind == "question_answering":
            moved, old_pos, new_pos = {}, 0, 0
            for (_, old, _), (_, pieces) in zip(words, new):
                if pieces == old:
                    moved.update((old_pos + i, new_pos + i) for i in range(len(old)))
                old_pos, new_pos = old_pos + len(old), new_pos + len(pieces)
            return [moved[p] for p in labels]  # [CLS] and context tokens are never replaced
        return labels


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


def _augment_embedding(rows: list[list[Word]], ctx, teacher_dir: Path, rng: np.random.Generator) -> list[list[NewWord]]:
    """``copies`` copies of every row (copy-major: all rows' first copy, then their second, ...)."""
    from transformers import AutoModel

    aug = ctx.cfg.task_distill.augment
    emb = AutoModel.from_pretrained(teacher_dir).get_input_embeddings().weight.detach()
    emb = emb.to(placement(ctx.cfg.task_distill.intermediate.mixed_precision).device)
    neighbours = EmbeddingNeighbours(emb, _whole_word_ids(ctx.tokenizer), aug.top_k)
    neighbours.prepare([p for words in rows for _, p, ok in words if ok])
    out = []
    for _ in tqdm(range(aug.copies), desc="augment (embedding)"):
        for words in rows:
            out.append([(seg, (int(rng.choice(neighbours.table[p])),) if ok and rng.random() < aug.replace_prob else p)
                        for seg, p, ok in words])
    return out


@torch.no_grad()
def _augment_mlm(rows: list[list[Word]], ctx, mlm_name: str, rng: np.random.Generator) -> list[list[NewWord]]:
    """``copies`` copies of every row (copy-major), the chosen words of a batch masked and predicted at once."""
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
                out.append(new)
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
        raise InputError(f"task_distill.augment.method=mlm needs an MLM head but {name!r} has none; set "
                         "task_distill.augment.mlm_model to a masked-LM checkpoint or use augment.method=embedding")
    return name


def cache_key(ctx, teacher_dir: Path, rule: ReplaceRule | None = None) -> str:
    """Everything that shapes the copies, the weights of the model that makes them included (not its path: a
    teacher retrained in place makes other copies), and the kind's replacement rule (NER, QA). Whether the
    copies are made (``enabled``, ``auto_below``) does not shape them: the key is the same either way."""
    aug = ctx.cfg.task_distill.augment
    train = ctx.tokenized["train"]
    settings = {k: v for k, v in vars(aug).items() if k != "auto_below"} | {"enabled": True}
    parts = {"augment": settings, "task": vars(ctx.cfg.task), "seed": ctx.cfg.seed, "n": len(train),
             "fingerprint": train._fingerprint, "weights": weights_key(source_model(ctx, teacher_dir))}
    if rule is not None and rule.key():
        parts["rule"] = rule.key()
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def auto_augment(aug, examples: int, max_train_examples: int, unit: str = "examples") -> tuple[bool, str]:
    """Whether the training split is augmented, and the log line that says why when ``auto_below`` decided it
    ("" otherwise). ``aug``: task_distill.augment; ``examples``: rows of the untokenized training split, in
    ``unit``; ``max_train_examples``: task.max_train_examples (a cap that cut the split marks a slice of a
    larger set taken for a quick run, which augmentation would multiply: it stays off unless enabled)."""
    if aug.enabled:
        return True, ""
    if not aug.auto_below or examples >= aug.auto_below:
        return False, ""
    small = f"{examples:,} training {unit} < task_distill.augment.auto_below={aug.auto_below:,}"
    if max_train_examples and examples >= max_train_examples:
        return False, (f"[augment] {small}, but task.max_train_examples={max_train_examples:,} took them from a "
                       "larger set for a quick run: no augmentation (task_distill.augment.enabled=true augments them)")
    copies = f"{aug.copies} {'copy' if aug.copies == 1 else 'copies'} of each"
    return True, (f"[augment] {small}: augmentation on ({copies}, method={aug.method}), as TinyBERT does for its "
                  "small tasks; task_distill.augment.auto_below=0 turns it off")


def augment_decision(ctx) -> tuple[bool, str]:
    """``auto_augment`` for this run's task data; NER data without an O tag (the only words a copy may replace)
    is never augmented unless asked for (augmented_train_set then says why it cannot be)."""
    aug, data = ctx.cfg.task_distill.augment, ctx.data
    unit = UNITS.get(data.kind.name, "examples")
    on, why = auto_augment(aug, len(data.train), ctx.cfg.task.max_train_examples, unit)
    if on and not aug.enabled and data.kind.name == "token_classification" and \
            OUTSIDE_TAG not in (data.label_names or []):
        return False, (f"[augment] {len(data.train):,} training sentences < task_distill.augment.auto_below, but "
                       f"{data.name} has no {OUTSIDE_TAG!r} tag, the only words a copy may replace: no augmentation")
    return on, why


def augmented_train_set(ctx, teacher_dir: Path) -> Dataset:
    """Original training rows + ``copies`` augmented copies of each (labels carried over as the kind's rule
    says), cached."""
    aug = ctx.cfg.task_distill.augment
    train = ctx.tokenized["train"]
    rule = ReplaceRule.for_task(ctx.data.kind.name, ctx.tokenizer, ctx.data.label_names)
    cache = ctx.run_dir / "cache" / f"augment-{aug.method}-{cache_key(ctx, teacher_dir, rule)}"
    if (cache / "dataset_info.json").is_file():
        return load_from_disk(str(cache))
    mlm_name = mlm_source(ctx) if aug.method == "mlm" else None
    types = train["token_type_ids"] if "token_type_ids" in train.column_names else [[0] * n for n in train["length"]]
    labels = list(train["labels"])
    rows = [rule.mark(split_words(ids, tt, ctx.tokenizer), ids, y)
            for ids, tt, y in zip(train["input_ids"], types, labels)]
    rng = np.random.default_rng(ctx.cfg.seed)
    made = _augment_mlm(rows, ctx, mlm_name, rng) if mlm_name else _augment_embedding(rows, ctx, teacher_dir, rng)
    n = len(rows)  # copy-major: copy i is of row i % n
    extra = Dataset.from_list([{**join_words(new), "labels": rule.labels(rows[i % n], new, labels[i % n])}
                               for i, new in enumerate(made)])
    keep = ["input_ids", "token_type_ids", "attention_mask", "length", "labels"]
    result = concatenate_datasets([train.select_columns(keep).cast(extra.features), extra])
    if not is_main_process():  # every rank computed the same set; only the main one writes the cache
        return result
    replace_folder(cache, lambda tmp: result.save_to_disk(str(tmp)))
    return load_from_disk(str(cache))
