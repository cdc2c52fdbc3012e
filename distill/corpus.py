"""Unlabeled text for general distillation: the embedded Wikipedia excerpt (wiki markup removed with
mwparserfromhell), local text files, or a `datasets` name; packed into sequences of max_len tokens."""
from __future__ import annotations

import bz2
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import mwparserfromhell
from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from distill import assets

_DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:")
_MIN_WORDS = 12  # paragraphs shorter than this are captions, list items or leftovers of tables


def _clean_wikitext(text: str) -> list[str]:
    code = mwparserfromhell.parse(text)
    for link in code.filter_wikilinks(recursive=False):
        if str(link.title).strip().lower().startswith(_DROP_LINK_PREFIXES):
            try:
                code.remove(link)
            except ValueError:
                pass
    for tag in code.filter_tags(recursive=False):
        if str(tag.tag).lower() in ("ref", "table", "gallery", "math"):
            try:
                code.remove(tag)
            except ValueError:
                pass
    plain = code.strip_code(normalize=True, collapse=True)
    paragraphs = []
    for para in plain.split("\n"):
        para = re.sub(r"\s+", " ", para).strip()
        words = para.split()
        if len(words) < _MIN_WORDS or "|" in para or not para[-1:] in ".!?\"')":
            continue
        if sum(c.isalpha() for c in para) < 0.6 * len(para):
            continue
        paragraphs.append(para)
    return paragraphs


def wiki_paragraphs(path: Path) -> list[str]:
    """Article paragraphs of a MediaWiki XML dump (.bz2), markup removed; redirects skipped."""
    paragraphs = []
    with bz2.open(path) as fh:
        for _event, element in ET.iterparse(fh):
            if element.tag.endswith("}text") and element.text and not element.text.lstrip().upper().startswith("#REDIRECT"):
                paragraphs += _clean_wikitext(element.text)
            if element.tag.endswith("}page"):
                element.clear()
    return paragraphs


def text_file_paragraphs(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".text", "")) \
        if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"general.corpus folder {path} holds no .txt files")
    out = []
    for file in files:
        out += [line.strip() for line in file.read_text(errors="replace").splitlines() if line.strip()]
    return out


def load_paragraphs(corpus: str, cache_dir: Path | None = None) -> list[str]:
    """Cleaned paragraphs of ``corpus``; the cleaned wiki text is cached in ``cache_dir``."""
    if corpus == "wiki":
        source = assets.wiki_excerpt()
        if cache_dir is not None:
            key = hashlib.sha1(f"{source}:{source.stat().st_size}:{_MIN_WORDS}:v1".encode()).hexdigest()[:12]
            cached = Path(cache_dir) / f"wiki-{key}.txt"
            if cached.is_file():
                return cached.read_text().split("\n")
            paragraphs = wiki_paragraphs(source)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")  # one per process: ranks may write it at once
            tmp.write_text("\n".join(paragraphs))
            os.replace(tmp, cached)
            return paragraphs
        return wiki_paragraphs(source)
    path = Path(corpus)
    if path.exists():
        return text_file_paragraphs(path)
    name, _, subset = corpus.partition(":")  # e.g. Salesforce/wikitext:wikitext-103-raw-v1
    try:
        data = load_dataset(name, subset or None, split="train")
    except Exception as err:  # datasets raises many types for a missing/unreachable name
        raise FileNotFoundError(f"general.corpus {corpus!r} is not 'wiki', a local text file/folder, or a loadable "
                                f"datasets name ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if "text" not in data.column_names:
        raise ValueError(f"general.corpus {corpus!r} has no 'text' column (found {data.column_names})")
    return [t for t in data["text"] if t and t.strip()]


def pack_sequences(paragraphs: list[str], tokenizer: PreTrainedTokenizerBase, max_len: int,
                   max_sequences: int = 0) -> Dataset:
    """Concatenate tokenized paragraphs and cut them into [CLS] ... [SEP] sequences of max_len tokens."""
    body = max_len - 2
    ids: list[int] = []
    sequences: list[list[int]] = []
    for start in range(0, len(paragraphs), 1000):
        for piece in tokenizer(paragraphs[start:start + 1000], add_special_tokens=False)["input_ids"]:
            ids += piece + [tokenizer.sep_token_id]
        while len(ids) >= body:
            sequences.append([tokenizer.cls_token_id] + ids[:body] + [tokenizer.sep_token_id])
            ids = ids[body:]
        if max_sequences and len(sequences) >= max_sequences:
            break
    if ids and len(ids) > body // 4 and not (max_sequences and len(sequences) >= max_sequences):
        sequences.append([tokenizer.cls_token_id] + ids + [tokenizer.sep_token_id])
    if max_sequences:
        sequences = sequences[:max_sequences]
    if not sequences:
        raise ValueError("the general corpus produced no sequences; give it more text or lower general.max_len")
    return Dataset.from_dict({
        "input_ids": sequences,
        "attention_mask": [[1] * len(s) for s in sequences],
        "token_type_ids": [[0] * len(s) for s in sequences],
        "length": [len(s) for s in sequences],
    })
