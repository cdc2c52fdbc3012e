"""Token-classification (NER) data: the embedded CoNLL-2003, local CoNLL/JSONL/Parquet files, saved or hub
``datasets``. Every source becomes splits with ``tokens`` (list of words) and ``tags`` (tag ids), plus the
tag names (``id2label``), after the checks that keep a bad file from reaching training.

Decisions:
- Tags must be IOB (IOB1) or IOB2: ``O``, ``B-<type>``, ``I-<type>``. An IOB1 split is converted to IOB2
  (the form the model learns and seqeval scores). BIOES/BILOU tags, bare types and a file mixing IOB1
  entity starts with IOB2 ones are refused.
- Tag names are ``O`` then ``B-``/``I-`` for every entity type seen in train, so the head can emit an
  ``I-X`` even when train only had one-word X entities.
- An entity *type* in dev/test that train never has is refused: the head has no output for it, and
  mapping it to ``O`` would silently change the score.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from sklearn.model_selection import train_test_split

from distill.base import assets
from distill.config import TaskConfig
from distill.data.types import SPLIT_SEED, DataError, TaskData
from distill.tasks.token_classification import TOKEN_CLASSIFICATION

CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".iob2", ".bio")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")
TAG_COLUMNS = ("tags", "ner_tags")
SPLIT_NAMES = {"train": ("train",), "dev": ("dev", "validation", "valid"), "test": ("test",)}
EMBEDDED = "conll2003"
KIND = "token_classification"

Sentences = tuple[list[list[str]], list[list[str]]]  # (tokens, tag strings) per sentence

_TAG = re.compile(r"^([BI])-(.+)$")
_OTHER_SCHEME = re.compile(r"^([SEULM])-(.+)$")


# ---------------------------------------------------------------------------------------------------
# readers


def read_conll(path: Path, tag_column: int = -1) -> Sentences:
    """Whitespace-separated columns, one token per line, a blank line between sentences; -DOCSTART- skipped."""
    tokens, tags, sent_tokens, sent_tags = [], [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if sent_tokens:
                    tokens.append(sent_tokens)
                    tags.append(sent_tags)
                    sent_tokens, sent_tags = [], []
                continue
            if len(parts) < 2:
                raise DataError(f"{path}:{number}: a line with one column ({parts[0]!r}) has no tag column; a CoNLL "
                                "file needs `token ... tag` per line")
            if not -len(parts) <= tag_column < len(parts) or tag_column in (0, -len(parts)):
                raise DataError(f"{path}:{number}: task.tag_column={tag_column} does not name a tag column of a "
                                f"{len(parts)}-column line (column 0 is the token)")
            sent_tokens.append(parts[0])
            sent_tags.append(parts[tag_column])
    if sent_tokens:
        tokens.append(sent_tokens)
        tags.append(sent_tags)
    return tokens, tags


def _tag_names_of(dataset: Dataset, column: str) -> list[str] | None:
    feature = dataset.features[column]
    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list) and feature:  # datasets >= 4: List(ClassLabel)
        inner = feature[0]
    return list(inner.names) if hasattr(inner, "names") else None


def from_dataset(dataset: Dataset, source: str) -> Sentences:
    """``tokens`` + ``ner_tags``/``tags`` columns; integer tags need ClassLabel names."""
    if "tokens" not in dataset.column_names or not any(c in dataset.column_names for c in TAG_COLUMNS):
        hint = (" (text/label columns: sentence classification data; set task.kind=sequence_classification)"
                if "text" in dataset.column_names else "")
        raise DataError(f"{source}: token classification needs 'tokens' and 'ner_tags' (or 'tags') columns, found "
                        f"{dataset.column_names}{hint}")
    column = next(c for c in TAG_COLUMNS if c in dataset.column_names)
    tokens, tags = [list(t) for t in dataset["tokens"]], [list(t) for t in dataset[column]]
    names = _tag_names_of(dataset, column)
    if any(isinstance(t, int) for row in tags for t in row[:1]):
        if names is None:
            raise DataError(f"{source}: column {column!r} holds integer tags without names; store tag strings "
                            "(B-PER, I-PER, O) or a ClassLabel feature with the names")
        tags = [[names[t] for t in row] for row in tags]
    sentences = (tokens, [[str(t) for t in row] for row in tags])
    check_lengths(sentences, source)
    return sentences


def read_table(path: Path) -> Sentences:
    if path.suffix == ".parquet":
        return from_dataset(load_dataset("parquet", data_files=str(path), split="train"), str(path))
    rows = []
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):  # JSON lines, whatever the suffix
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = json.loads(text)
    if not isinstance(rows, list) or (rows and not isinstance(rows[0], dict)):
        raise DataError(f"{path}: expected one JSON object per sentence with 'tokens' and 'tags' lists")
    return from_dataset(Dataset.from_list(rows) if rows else Dataset.from_dict({}), str(path))


def read_any(path: Path, tag_column: int) -> Sentences:
    if path.suffix.lower() in CONLL_SUFFIXES:
        return read_conll(path, tag_column)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return read_table(path)
    raise DataError(f"{path}: unsupported file type {path.suffix!r} for token classification; use a CoNLL file "
                    f"({', '.join(CONLL_SUFFIXES)}), JSONL with tokens/tags, or Parquet")


# ---------------------------------------------------------------------------------------------------
# checks


def check_lengths(split: Sentences, source: str) -> None:
    for i, (tokens, tags) in enumerate(zip(*split)):
        if len(tokens) != len(tags):
            raise DataError(f"{source}: sentence {i} has {len(tokens)} tokens but {len(tags)} tags")
        if not tokens:
            raise DataError(f"{source}: sentence {i} has no tokens")


def to_iob2(tags: list[list[str]], source: str) -> tuple[list[list[str]], int]:
    """Validate IOB/IOB2 tags and return them as IOB2, with the number of IOB1 entity starts converted."""
    iob1_starts, iob2_starts = 0, 0
    first_iob1 = first_iob2 = None
    out = []
    for s, sentence in enumerate(tags):
        converted, previous = [], "O"
        for t in sentence:
            if t != "O":
                match = _TAG.match(t)
                if match is None:
                    scheme = " (BIOES/BILOU style: convert it to IOB2)" if _OTHER_SCHEME.match(t) else ""
                    raise DataError(f"{source}: tag {t!r} in sentence {s} is not IOB/IOB2{scheme}; tags must be O, "
                                    "B-<type> or I-<type>")
                prefix, kind = match.groups()
                continues = previous != "O" and previous[2:] == kind
                if prefix == "I" and not continues:
                    iob1_starts += 1
                    first_iob1 = first_iob1 or (s, t)
                    t = f"B-{kind}"
                elif prefix == "B" and not continues:
                    iob2_starts += 1
                    first_iob2 = first_iob2 or (s, t)
            converted.append(t)
            previous = t
        out.append(converted)
    if iob1_starts and iob2_starts:
        raise DataError(f"{source}: mixed tagging schemes: {iob1_starts} entities start with I- (IOB1, first in "
                        f"sentence {first_iob1[0]}) and {iob2_starts} with B- after O (IOB2, first in sentence "
                        f"{first_iob2[0]}); use one scheme")
    return out, iob1_starts


def tag_names(train_tags: list[list[str]]) -> list[str]:
    types = sorted({t[2:] for row in train_tags for t in row if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def check_types(splits: dict[str, Sentences], names: list[str], source: str) -> None:
    known = set(names)
    for split in ("dev", "test"):
        unseen = Counter(t for row in splits[split][1] for t in row if t not in known)
        if unseen:
            tag, count = unseen.most_common(1)[0]
            raise DataError(f"{source}: {split} has entity type {tag[2:]!r} ({tag!r} x{count}) that train never has; "
                            "the model cannot predict it and scoring it would be meaningless: add train examples or "
                            "remove it")


# ---------------------------------------------------------------------------------------------------
# sources


def conll2003_files() -> dict[str, Path]:
    folder = assets.conll2003_dir()
    return {"train": folder / "train.txt", "dev": folder / "valid.txt", "test": folder / "test.txt"}


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for path in sorted(folder.glob(f"{name}*")):
            if path.is_file() and path.suffix.lower() in CONLL_SUFFIXES + TABLE_SUFFIXES:
                return path
    return None


def _split(sentences: Sentences, fraction: float) -> tuple[Sentences, Sentences]:
    index = list(range(len(sentences[0])))
    if len(index) < 2:
        raise DataError(f"{len(index)} sentence(s) cannot be split into train/dev/test; give more data")
    keep, held = train_test_split(index, test_size=fraction, random_state=SPLIT_SEED)
    pick = lambda ids: ([sentences[0][i] for i in ids], [sentences[1][i] for i in ids])  # noqa: E731
    return pick(sorted(keep)), pick(sorted(held))


def _complete(found: dict[str, Sentences | None]) -> dict[str, Sentences]:
    """Missing dev/test are carved from train (seeded, independent of the experiment seed)."""
    train, dev, test = found["train"], found.get("dev"), found.get("test")
    if dev is None and test is None:
        train, rest = _split(train, 0.2)
        dev, test = _split(rest, 0.5)
    elif dev is None:
        train, dev = _split(train, 0.1)
    elif test is None:
        test = dev
        train, dev = _split(train, 0.1)
    return {"train": train, "dev": dev, "test": test}


def _from_dataset_dict(dd: DatasetDict, source: str) -> dict[str, Sentences | None]:
    found: dict[str, Sentences | None] = {}
    for split, aliases in SPLIT_NAMES.items():
        name = next((a for a in aliases if a in dd), None)
        found[split] = from_dataset(dd[name], f"{source}[{name}]") if name else None
    if found["train"] is None:
        raise DataError(f"{source}: no 'train' split (found {list(dd)})")
    return found


def read_source(cfg: TaskConfig) -> tuple[str, dict[str, Sentences]]:
    name = cfg.name
    if name == EMBEDDED:
        files = conll2003_files()
        return name, {s: read_conll(p, cfg.tag_column) for s, p in files.items()}
    path = Path(name)
    if path.is_file():
        return path.stem, _complete({"train": read_any(path, cfg.tag_column)})
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return path.name, _complete(_from_dataset_dict(load_from_disk(str(path)), str(path)))
        found = {split: _find(path, aliases) for split, aliases in SPLIT_NAMES.items()}
        if found["train"] is None:
            raise DataError(f"{path}: no train.* file (CoNLL {', '.join(CONLL_SUFFIXES)}, .jsonl or .parquet) in "
                            "this folder")
        return path.name, _complete({s: read_any(p, cfg.tag_column) if p else None for s, p in found.items()})
    hub, _, config = name.partition(":")
    try:
        dd = load_dataset(hub, config or None)
    except Exception as err:  # noqa: BLE001  (hub errors come in many types)
        raise DataError(f"task.name {name!r} is not a local file or folder and could not be loaded from the hub "
                        f"({str(err).splitlines()[0][:200]})") from None
    return name, _complete(_from_dataset_dict(dd, name))


def load_token_task(cfg: TaskConfig) -> TaskData:
    source, splits = read_source(cfg)
    for split in ("train", "dev", "test"):
        if not splits[split][0]:
            raise DataError(f"{source}: the {split} split has no sentences")
        check_lengths(splits[split], f"{source} ({split})")
        tags, converted = to_iob2(splits[split][1], f"{source} ({split})")
        if converted:
            print(f"[data] {source} ({split}): IOB1 tags converted to IOB2 ({converted} entity starts)")
        splits[split] = (splits[split][0], tags)
    names = tag_names(splits["train"][1])
    if len(names) == 1:
        raise DataError(f"{source}: train has no entity tags at all (only 'O')")
    check_types(splits, names, source)
    index = {n: i for i, n in enumerate(names)}
    datasets = {s: Dataset.from_dict({"tokens": t, "tags": [[index[x] for x in row] for row in g]})
                for s, (t, g) in splits.items()}
    note = (f"token classification with {len(names)} IOB2 tags [{', '.join(names)}], metric entity F1 "
            "(seqeval)")
    return TaskData(source, datasets["train"], datasets["dev"], datasets["test"], names, "entity_f1", note=note,
                    kind=TOKEN_CLASSIFICATION)


# ---------------------------------------------------------------------------------------------------
# which loader


def _looks_like_tokens(path: Path) -> bool:
    """True when a local file/folder holds token-level data (CoNLL lines or tokens/tags columns)."""
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            dd = load_from_disk(str(path))
            return any("tokens" in d.column_names for d in dd.values())
        train = next(iter(sorted(p for p in path.glob("train*") if p.is_file())), None)  # train.csv: sentences
        return train is not None and _looks_like_tokens(train)
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return True
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):  # a .json array of records
            records = json.loads(text)
            return bool(records) and isinstance(records[0], dict) and "tokens" in records[0]
        first = next((line for line in text.splitlines() if line.strip()), "{}")
        try:
            record = json.loads(first)
        except json.JSONDecodeError:  # e.g. a pretty-printed SQuAD file: not token data
            return False
        return isinstance(record, dict) and "tokens" in record
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return "tokens" in pq.read_schema(path).names
    return False


def token_task_wanted(cfg: TaskConfig) -> bool:
    """Whether task.name is token-classification data; a kind that contradicts the data is refused."""
    path = Path(cfg.name)
    looks = cfg.name == EMBEDDED or (path.exists() and _looks_like_tokens(path))
    if cfg.kind == KIND:
        if path.exists() and not looks:
            raise DataError(f"task.kind=token_classification but {cfg.name} holds sentence classification data "
                            "(no CoNLL lines or tokens/tags columns); set task.kind=sequence_classification or "
                            "point task.name at NER data")
        if cfg.name == "rotten_tomatoes" or cfg.name.startswith("glue/"):
            raise DataError(f"task.kind=token_classification but task.name={cfg.name} is a sentence classification "
                            "task; use task.name=conll2003 or NER files")
        return True
    if looks and cfg.kind == "sequence_classification":
        raise DataError(f"task.name={cfg.name} is token classification (NER) data but task.kind="
                        "sequence_classification; set task.kind=token_classification (or auto)")
    return looks
