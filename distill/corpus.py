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
MIN_WIKI_WORDS = 12  # wiki paragraphs shorter than this are captions, list items or leftovers of tables


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
        if len(words) < MIN_WIKI_WORDS or "|" in para or not para[-1:] in ".!?\"')":
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
            key = hashlib.sha1(f"{source}:{source.stat().st_size}:{MIN_WIKI_WORDS}:v1".encode()).hexdigest()[:12]
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


PACKING = ("concat", "intra_doc", "per_doc")


def _documents(paragraphs: list[str], tokenizer: PreTrainedTokenizerBase, min_tokens: int):
    """Word-piece ids of every document with at least ``min_tokens`` pieces, in corpus order; yields
    (ids, None) per kept document and finally (None, (documents seen, documents kept))."""
    seen = kept = 0
    for start in range(0, len(paragraphs), 1000):
        for piece in tokenizer(paragraphs[start:start + 1000], add_special_tokens=False)["input_ids"]:
            seen += 1
            if len(piece) >= min_tokens:
                kept += 1
                yield piece, None
    yield None, (seen, kept)


def _chunks(ids: list[int], body: int, min_tokens: int) -> list[list[int]]:
    """A document longer than ``body`` pieces cut into pieces of ``body``; a short tail is dropped."""
    pieces = [ids[i:i + body] for i in range(0, len(ids), body)]
    return [p for p in pieces if len(p) >= min_tokens or p is pieces[0]]


def pack_sequences(paragraphs: list[str], tokenizer: PreTrainedTokenizerBase, max_len: int,
                   max_sequences: int = 0, packing: str = "concat", min_doc_tokens: int = 0) -> Dataset:
    """Documents (``paragraphs``, each at least ``min_doc_tokens`` word pieces) as sequences of <= max_len tokens.

    - concat: all documents joined with [SEP] and cut into [CLS] ... [SEP] sequences of max_len tokens
      (documents run across sequence ends and see each other);
    - intra_doc: ``[CLS] document [SEP]`` segments packed whole into sequences (next fit, corpus order),
      with a ``doc_ids`` column numbering each token's segment for the block-diagonal mask;
    - per_doc: one ``[CLS] document [SEP]`` per sequence (batches are length-grouped by the loader).
    A document longer than max_len - 2 pieces is cut into pieces of that size in intra_doc and per_doc.
    """
    if packing not in PACKING:
        raise ValueError(f"general.packing {packing!r} is not one of {list(PACKING)}")
    body = max_len - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids: list[int] = []
    sequences: list[list[int]] = []
    doc_ids: list[list[int]] = []
    counts = (0, 0)
    full = lambda: bool(max_sequences) and len(sequences) >= max_sequences  # noqa: E731
    for piece, counted in _documents(paragraphs, tokenizer, min_doc_tokens):
        if counted is not None:
            counts = counted
            break
        if packing == "concat":
            ids += piece + [sep]
            while len(ids) >= body:
                sequences.append([cls] + ids[:body] + [sep])
                ids = ids[body:]
        else:
            for chunk in _chunks(piece, body, min_doc_tokens):
                segment = [cls] + chunk + [sep]
                if packing == "per_doc":
                    sequences.append(segment)
                    continue
                if not sequences or len(sequences[-1]) + len(segment) > max_len:
                    sequences.append([])
                    doc_ids.append([])
                doc_ids[-1] += [doc_ids[-1][-1] + 1 if doc_ids[-1] else 1] * len(segment)
                sequences[-1] += segment
        if full():
            break
    if packing == "concat" and ids and len(ids) > body // 4 and not full():
        sequences.append([cls] + ids + [sep])
    if max_sequences:
        sequences, doc_ids = sequences[:max_sequences], doc_ids[:max_sequences]
    if not sequences:
        seen, kept = counts
        if not seen:
            raise ValueError("general.corpus holds no text: no document to distil on; point general.corpus at a "
                             "non-empty text file, folder or dataset")
        if not kept:
            raise ValueError(f"general.corpus: all {seen} documents are shorter than general.min_doc_tokens="
                             f"{min_doc_tokens} word pieces; give longer documents or lower general.min_doc_tokens")
        raise ValueError("the general corpus produced no sequences; give it more text or lower general.max_len")
    columns = {
        "input_ids": sequences,
        "attention_mask": [[1] * len(s) for s in sequences],
        "token_type_ids": [[0] * len(s) for s in sequences],
        "length": [len(s) for s in sequences],
    }
    if packing == "intra_doc":
        columns["doc_ids"] = doc_ids
    return Dataset.from_dict(columns)
