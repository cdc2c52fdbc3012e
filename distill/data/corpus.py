"""Unlabeled text for general distillation: the embedded Wikipedia excerpt (wiki markup removed with
mwparserfromhell), BIG-bench's ~1,000 English Wikipedia articles (``wiki_bigbench``, fetched on first
use), local text files, or a `datasets` name; packed into sequences of max_len tokens."""
from __future__ import annotations

import bz2
import codecs
import hashlib
import itertools
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Iterator

import mwparserfromhell
from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from distill.base import assets
from distill.base.errors import InputError, MissingInputError

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


class CorpusError(InputError):
    """The general corpus cannot be read as text documents."""


def iter_wiki_paragraphs(path: Path) -> Iterator[str]:
    """Article paragraphs of a MediaWiki XML dump (.bz2), markup removed; redirects skipped; page by page."""
    with bz2.open(path) as fh:
        for _event, element in ET.iterparse(fh):
            if element.tag.endswith("}text") and element.text and not element.text.lstrip().upper().startswith("#REDIRECT"):
                yield from _clean_wikitext(element.text)
            if element.tag.endswith("}page"):
                element.clear()


def text_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".text", "")) \
        if path.is_dir() else [path]
    if not files:
        raise MissingInputError(f"general.corpus folder {path} holds no .txt files")
    return files


def check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """Raise CorpusError unless every corpus file under ``path`` decodes as UTF-8; reads in chunks
    (constant memory), so a streamed corpus fails before training, not hours into it."""
    for file in text_files(path):
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0  # bytes of the file before ``data``
        with open(file, "rb") as fh:
            while True:
                data = fh.read(chunk)
                pending = len(decoder.getstate()[0])  # an unfinished character carried over from the last chunk
                try:
                    decoder.decode(data, final=not data)
                except UnicodeDecodeError as err:
                    bad = err.object[err.start]
                    raise CorpusError(f"general.corpus file {file} is not UTF-8 text (byte 0x{bad:02x} "
                                      f"at offset {offset - pending + err.start}); convert it, e.g. "
                                      f"iconv -f latin1 -t utf-8 {file.name} > {file.stem}.utf8.txt") from None
                if not data:
                    break
                offset += len(data)


def _nonempty_lines(texts: Iterable[str]) -> Iterator[str]:
    """Every non-empty line of ``texts``, stripped: how a text file (or the wiki cache) reads as documents."""
    for text in texts:
        for part in text.splitlines():
            if part.strip():
                yield part.strip()


def iter_text_file_paragraphs(path: Path) -> Iterator[str]:
    """Non-empty lines of a text file, or of every .txt file in a folder (sorted), one at a time."""
    for file in text_files(path):
        with open(file, encoding="utf-8") as fh:
            try:
                yield from _nonempty_lines(fh)
            except UnicodeDecodeError:
                check_utf8(file)  # says where
                raise


def text_file_paragraphs(path: Path) -> list[str]:
    return list(iter_text_file_paragraphs(path))


def _wiki_cache_path(cache_dir: Path) -> Path:
    source = assets.wiki_excerpt()
    key = hashlib.sha1(f"{source}:{source.stat().st_size}:{MIN_WIKI_WORDS}:v1".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"wiki-{key}.txt"


def _wiki_cache(cache_dir: Path) -> Path:
    """The cleaned wiki text, one paragraph a line, written once (streamed, page by page)."""
    source = assets.wiki_excerpt()
    cached = _wiki_cache_path(cache_dir)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")  # one per process: ranks may write it at once
        with open(tmp, "w", encoding="utf-8") as fh:
            for i, para in enumerate(iter_wiki_paragraphs(source)):
                fh.write(("\n" if i else "") + para)
        os.replace(tmp, cached)
    return cached


BIGBENCH_WIKI = "wiki_bigbench"
_SEGMENTATION = "paragraph_segmentation/task.json"
_ENGLISH = range(1000, 2000)  # the task's examples come in blocks of 1,000 per language: de, en, es, fr, ...


def bigbench_wiki_paragraphs() -> Path:
    """The ~1,000 English Wikipedia articles of BIG-bench's paragraph_segmentation task, as paragraphs
    (one a line), rebuilt from its sentence list and paragraph-end labels. task.json comes from the
    bigbench==1.0.0 sdist on first use (sha256-checked; ``squad_data.fetch_bigbench_files``)."""
    from distill.data.squad import cache_root, fetch_bigbench_files

    folder = cache_root() / "paragraph_segmentation"
    out = folder / "wiki_bigbench-en-v1.txt"
    if out.is_file():
        return out
    (task,) = fetch_bigbench_files((_SEGMENTATION,), folder, f"first use of general.corpus={BIGBENCH_WIKI}",
                                   f"put BIG-bench's {_SEGMENTATION} in {folder}")
    examples = json.loads(task.read_text())["examples"]
    paragraphs = []
    for example in (examples[i] for i in _ENGLISH):
        sentences = example["input"].rstrip("\n").split("\n")
        ends = example["target"].split()
        if len(sentences) != len(ends):
            raise CorpusError(f"{task}: an example has {len(sentences)} sentences but {len(ends)} labels")
        paragraph: list[str] = []
        for sentence, end in zip(sentences, ends):
            paragraph.append(sentence.strip())
            if end == "1":
                paragraphs.append(" ".join(paragraph))
                paragraph = []
        if paragraph:
            paragraphs.append(" ".join(paragraph))
    english = sum(" the " in f" {p.lower()} " for p in paragraphs) / len(paragraphs)
    if english < 0.8:  # the language blocks moved: refuse rather than train on the wrong language
        raise CorpusError(f"{task}: examples {_ENGLISH.start}-{_ENGLISH.stop - 1} do not look English "
                          f"({english:.0%} of paragraphs contain 'the'); the file is not the expected release")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(paragraphs), encoding="utf-8")
    os.replace(tmp, out)
    return out


def _hub_texts(corpus: str, text_column: str, streaming: bool) -> Iterable[str]:
    name, _, subset = corpus.partition(":")  # e.g. Salesforce/wikitext:wikitext-103-raw-v1
    try:
        data = load_dataset(name, subset or None, split="train", streaming=streaming)
    except Exception as err:  # datasets raises many types for a missing/unreachable name
        raise MissingInputError(f"general.corpus {corpus!r} is not 'wiki', a local text file/folder, or a loadable "
                                f"datasets name ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    columns = data.column_names
    if columns is None:  # a stream whose features are unknown until read: look at its first row
        columns = list(next(iter(data), {}))
    if text_column not in columns:
        raise CorpusError(f"general.corpus {corpus!r} has no {text_column!r} column (found {columns}); set "
                          "general.text_column to the column holding the text")
    if streaming:
        return (row[text_column] for row in data)
    return data[text_column]


def iter_documents(corpus: str, cache_dir: Path | None = None, text_column: str = "text",
                   streaming: bool = False, build_cache: bool = True) -> Iterator[str]:
    """The documents of ``corpus`` one at a time, never all in memory when ``streaming`` (a datasets name
    is then opened with streaming=True). Raises for a missing source or column when called, and for a
    non-UTF-8 file before the first document. The wiki dump is read from its cleaned text in
    ``cache_dir``, written first unless ``build_cache`` is False (a caller that reads only the start of
    the corpus: the dump is then parsed lazily, as far as it is read, into the same documents)."""
    if corpus == "wiki":
        if cache_dir is None:
            return iter_wiki_paragraphs(assets.wiki_excerpt())
        if not build_cache and not _wiki_cache_path(cache_dir).is_file():
            return _nonempty_lines(iter_wiki_paragraphs(assets.wiki_excerpt()))  # as the cache reads back
        return iter_text_file_paragraphs(_wiki_cache(cache_dir))
    if corpus == BIGBENCH_WIKI:
        return iter_text_file_paragraphs(bigbench_wiki_paragraphs())
    path = Path(corpus)
    if path.exists():
        check_utf8(path)
        return iter_text_file_paragraphs(path)
    return (t for t in _hub_texts(corpus, text_column, streaming) if t and t.strip())


def load_paragraphs(corpus: str, cache_dir: Path | None = None, text_column: str = "text") -> list[str]:
    """Cleaned paragraphs of ``corpus``, all in memory; the cleaned wiki text is cached in ``cache_dir``."""
    return list(iter_documents(corpus, cache_dir, text_column))


PACKING = ("concat", "intra_doc", "per_doc")


def _documents(documents: Iterable[str], tokenizer: PreTrainedTokenizerBase, min_tokens: int, counts: list[int],
               chunk: int = 1000, first_chunk: int = 8) -> Iterator[list[int]]:
    """Word-piece ids of every document with at least ``min_tokens`` pieces, in corpus order, tokenized in
    chunks that double from ``first_chunk`` to ``chunk`` documents (the first sequences, e.g. the
    preflight's, need only a few documents read: a lazily parsed wiki dump costs ~1 s per article);
    ``counts`` becomes [documents seen, documents kept]."""
    documents = iter(documents)
    size = first_chunk
    while batch := list(itertools.islice(documents, size)):
        size = min(chunk, size * 2)
        for piece in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            counts[0] += 1
            if len(piece) >= min_tokens:
                counts[1] += 1
                yield piece


def _chunks(ids: list[int], body: int, min_tokens: int) -> list[list[int]]:
    """A document longer than ``body`` pieces cut into pieces of ``body``; a short tail is dropped."""
    pieces = [ids[i:i + body] for i in range(0, len(ids), body)]
    return [p for p in pieces if len(p) >= min_tokens or p is pieces[0]]


def _row(ids: list[int], doc_ids: list[int] | None = None) -> dict:
    row = {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids), "length": len(ids)}
    if doc_ids is not None:
        row["doc_ids"] = doc_ids
    return row


def _pieces(documents: Iterable[str], tokenizer: PreTrainedTokenizerBase, max_len: int, packing: str,
            min_doc_tokens: int, counts: list[int], pack_order: str, window: int) -> Iterator[tuple[list[int], bool]]:
    """(word pieces, starts a group) per document (concat) or per segment body (intra_doc, per_doc), in
    corpus order or BM25-grouped (each group fits one sequence)."""
    body = max_len - 2
    pieces = _documents(documents, tokenizer, min_doc_tokens, counts)
    if packing != "concat":
        pieces = (chunk for piece in pieces for chunk in _chunks(piece, body, min_doc_tokens))
    if pack_order == "corpus":
        return ((piece, False) for piece in pieces)
    from distill.data.bm25 import grouped

    if packing == "concat":  # documents joined with one [SEP] each, in sequences of max_len - 2
        return grouped(pieces, body, 1, window)
    return grouped(pieces, max_len, 2, window)  # [CLS] segment [SEP]


def iter_sequences(documents: Iterable[str], tokenizer: PreTrainedTokenizerBase, max_len: int,
                   packing: str = "concat", min_doc_tokens: int = 0, pack_order: str = "corpus",
                   bm25_window: int = 4096) -> Iterator[dict]:
    """Documents (each at least ``min_doc_tokens`` word pieces) as rows of <= max_len tokens, one at a time.

    - concat: all documents joined with [SEP] and cut into [CLS] ... [SEP] sequences of max_len tokens
      (documents run across sequence ends and see each other);
    - intra_doc: ``[CLS] document [SEP]`` segments packed whole into sequences (next fit, corpus order),
      with a ``doc_ids`` column numbering each token's segment for the block-diagonal mask;
    - per_doc: one ``[CLS] document [SEP]`` per sequence (batches are length-grouped by the loader).
    A document longer than max_len - 2 pieces is cut into pieces of that size in intra_doc and per_doc.
    pack_order=bm25 (concat, intra_doc): documents grouped with their most similar ones
    (``distill.data.bm25``, within windows of ``bm25_window`` documents); under intra_doc a group is one sequence.
    Raises CorpusError at the end of an input that gave no sequence (empty, or every document too short).
    """
    if packing not in PACKING:
        raise InputError(f"general.packing {packing!r} is not one of {list(PACKING)}")
    body = max_len - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    counts = [0, 0]
    produced = 0
    ids: list[int] = []  # concat: the running text; intra_doc: the open sequence
    doc_ids: list[int] = []
    if pack_order not in ("corpus", "bm25") or (pack_order == "bm25" and packing == "per_doc"):
        raise InputError(f"general.pack_order {pack_order!r} with packing {packing!r}: use corpus, or bm25 with "
                         "concat or intra_doc")
    for piece, starts_group in _pieces(documents, tokenizer, max_len, packing, min_doc_tokens, counts, pack_order,
                                       bm25_window):
        if packing == "concat":
            ids += piece + [sep]
            while len(ids) >= body:
                produced += 1
                yield _row([cls] + ids[:body] + [sep])
                ids = ids[body:]
            continue
        segment = [cls] + piece + [sep]
        if packing == "per_doc":
            produced += 1
            yield _row(segment)
            continue
        if ids and (starts_group or len(ids) + len(segment) > max_len):
            produced += 1
            yield _row(ids, doc_ids)
            ids, doc_ids = [], []
        doc_ids += [doc_ids[-1] + 1 if doc_ids else 1] * len(segment)
        ids += segment
    if packing == "concat" and ids and len(ids) > body // 4:
        produced += 1
        yield _row([cls] + ids + [sep])
    elif packing == "intra_doc" and ids:
        produced += 1
        yield _row(ids, doc_ids)
    if not produced:
        seen, kept = counts
        if not seen:
            raise CorpusError("general.corpus holds no text: no document to distil on; point general.corpus at a "
                              "non-empty text file, folder or dataset")
        if not kept:
            raise CorpusError(f"general.corpus: all {seen} documents are shorter than general.min_doc_tokens="
                              f"{min_doc_tokens} word pieces; give longer documents or lower general.min_doc_tokens")
        raise CorpusError("the general corpus produced no sequences; give it more text or lower general.max_len")


def pack_sequences(paragraphs: Iterable[str], tokenizer: PreTrainedTokenizerBase, max_len: int,
                   max_sequences: int = 0, packing: str = "concat", min_doc_tokens: int = 0,
                   pack_order: str = "corpus", bm25_window: int = 4096) -> Dataset:
    """The first ``max_sequences`` (0 = all) rows of ``iter_sequences`` as an in-memory Dataset."""
    rows = list(itertools.islice(iter_sequences(paragraphs, tokenizer, max_len, packing, min_doc_tokens, pack_order,
                                                bm25_window), max_sequences or None))
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return Dataset.from_dict(columns)


def first_sequence(g, tokenizer: PreTrainedTokenizerBase, cache_dir: Path | None) -> dict:
    """The first packed row of the general corpus (``g`` = GeneralStageConfig): reading it raises for a
    missing, empty, too-short, non-UTF-8 or column-less corpus, before anything trains."""
    if g.corpus == "wiki":
        cache_dir = None  # parse lazily up to the first article: building the whole cache here would take ~30 s
    documents = iter_documents(g.corpus, cache_dir, g.text_column, streaming=g.streaming)
    return next(iter_sequences(documents, tokenizer, g.max_len, g.packing, g.min_doc_tokens))
