"""Extractive QA data in SQuAD form: the embedded SQuAD v1.1 sets, local SQuAD JSON, the hub's `squad`.

Embedded (``task.name=squad``): SQuAD v1.1 dev (48 Wikipedia articles, 10,565 questions) and SQuAD
Shifts "new_wiki" (48 newer articles, 7,936 questions), both shipped inside the PyPI sdist
``bigbench==1.0.0``. That sdist is 358 MB, so it is not part of ``make setup``: the first QA run (or
``make setup-qa``) streams it once from the package index pip uses, checks its sha256, keeps only the
two JSON files in a cache folder and says so. The 96 articles are split by article (the questions of
one paragraph never straddle splits), deterministically, 80/10/10 into train/dev/test.

Every source becomes a ``datasets.Dataset`` with the hub's ``squad`` columns: id, title, context,
question, answers = {text: [...], answer_start: [...]}.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset

from distill.base.errors import InputError

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
MEMBERS = ("squad_shifts/squaddev_v1.1.json", "squad_shifts/new_wiki_v1.0.json")
SPLIT_SEED = 20201  # fixed: splits never depend on the experiment seed


class QADataError(InputError):
    pass


@dataclass
class LoadStats:
    questions: int = 0
    bad_answers: int = 0  # gold answers whose answer_start does not point at their text (skipped)
    dropped_questions: int = 0  # questions left with no valid answer (skipped)

    def line(self, source: str) -> str:
        return (f"[data] {source}: {self.questions} questions; {self.bad_answers} gold answers whose answer_start "
                f"does not match their text were skipped, {self.dropped_questions} questions left without a valid "
                "answer were dropped")


def cache_root() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "bert-distill"))


def _index_url() -> str:
    """The package index pip is configured with (PIP_INDEX_URL, pip.conf), else pip's default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    try:
        from pip._internal.configuration import Configuration

        config = Configuration(isolated=False)
        config.load()
        for key, value in config.items():
            if key.endswith(".index-url") and value:
                return value
        from pip._internal.models.index import PyPI

        return PyPI.simple_url
    except Exception as err:  # pip internals moved: say what to do instead
        raise QADataError(f"cannot find pip's package index ({err}); set PIP_INDEX_URL") from None


class _HashingReader:
    def __init__(self, raw):
        self.raw, self.sha, self.read_bytes = raw, hashlib.sha256(), 0

    def read(self, n=-1):
        chunk = self.raw.read(n)
        self.sha.update(chunk)
        self.read_bytes += len(chunk)
        return chunk


def fetch_embedded_squad(folder: Path | None = None) -> list[Path]:
    """The two embedded SQuAD JSON files, fetched from the bigbench sdist on first use."""
    folder = Path(folder) if folder else cache_root() / "squad"
    return fetch_bigbench_files(MEMBERS, folder, "first QA run", "put squaddev_v1.1.json and new_wiki_v1.0.json "
                                f"in {folder}, or use task.name=<your SQuAD JSON>")


def fetch_bigbench_files(members: tuple[str, ...], folder: Path, why: str, offline_fix: str) -> list[Path]:
    """``members`` (paths under benchmark_tasks/) of the bigbench sdist, kept in ``folder`` under their
    file names; streamed once from pip's package index and sha256-checked. ``why`` and ``offline_fix``
    word the messages."""
    paths = [folder / Path(m).name for m in members]
    if all(p.is_file() for p in paths):
        return paths
    index = _index_url().rstrip("/")
    print(f"[data] {why}: streaming the {SDIST} sdist (358 MB) from {index} once; only "
          f"{', '.join(p.name for p in paths)} kept, in {folder}")
    request = urllib.request.Request(f"{index}/bigbench/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        listing = json.load(urllib.request.urlopen(request, timeout=60))
        files = [f["filename"] for f in listing["files"]]
        if SDIST not in files:  # PyPI took bigbench 1.0.0 down in December 2026 and lists only 0.0.1
            raise QADataError(f"{index} no longer serves {SDIST} (it lists {', '.join(files) or 'nothing'}); "
                              f"{offline_fix}")
        url = next(f["url"] for f in listing["files"] if f["filename"] == SDIST)
        if url.startswith("/"):
            url = index.split("/simple")[0] + url
        response = urllib.request.urlopen(url, timeout=120)
    except QADataError:
        raise
    except (OSError, StopIteration, KeyError, TypeError, ValueError) as err:
        raise QADataError(f"could not fetch {SDIST} from {index} ({err}); with no network, {offline_fix}") from None
    folder.mkdir(parents=True, exist_ok=True)
    reader = _HashingReader(response)
    found = {}
    from tqdm.auto import tqdm

    with tqdm(total=358_249_635, unit="B", unit_scale=True, desc="bigbench sdist") as bar, \
            tarfile.open(fileobj=reader, mode="r|gz") as tar:
        last = 0
        for member in tar:
            bar.update(reader.read_bytes - last)
            last = reader.read_bytes
            match = next((m for m in members if member.name.endswith("benchmark_tasks/" + m)), None)
            if match and member.isfile():
                tmp = folder / (Path(match).name + ".part")
                tmp.write_bytes(tar.extractfile(member).read())
                found[match] = tmp
        while reader.read(1 << 20):  # the rest, for the checksum
            bar.update(reader.read_bytes - last)
            last = reader.read_bytes
    if reader.sha.hexdigest() != SDIST_SHA256 or len(found) != len(members):
        for tmp in found.values():
            tmp.unlink(missing_ok=True)
        raise QADataError(f"{SDIST}: checksum or contents do not match the expected release; nothing was kept")
    for match, tmp in found.items():
        tmp.rename(folder / Path(match).name)
    return paths


def read_squad_json(path: Path, stats: LoadStats | None = None) -> list[dict]:
    """Questions of a SQuAD v1.1 JSON file as flat records; answers whose ``answer_start`` does not
    point at their text are counted and skipped. SQuAD 2.0 files are refused."""
    stats = stats if stats is not None else LoadStats()
    try:
        data = json.loads(Path(path).read_text())["data"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise QADataError(f"{path}: not a SQuAD JSON file with a top-level 'data' list ({err})") from None
    records = []
    for article in data:
        title = article.get("title", "")
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or (not qa.get("answers") and "plausible_answers" in qa):
                    raise QADataError(f"{path}: question {qa.get('id')!r} is unanswerable (SQuAD 2.0); only SQuAD "
                                      "v1.1 (every question answered in its paragraph) is supported for now")
                stats.questions += 1
                texts, starts = [], []
                for answer in qa.get("answers", []):
                    text, start = answer["text"], int(answer["answer_start"])
                    if context[start:start + len(text)] != text:
                        stats.bad_answers += 1
                        continue
                    texts.append(text)
                    starts.append(start)
                if not texts:
                    stats.dropped_questions += 1
                    continue
                records.append({"id": str(qa["id"]), "title": title, "context": context, "question": qa["question"],
                                "answers": {"text": texts, "answer_start": starts}})
    return records


def split_by_article(records: list[dict], fractions=(0.8, 0.1, 0.1)) -> tuple[list[dict], list[dict], list[dict]]:
    """Whole articles (by title) go to train/dev/test; the order of titles is a fixed seeded shuffle."""
    titles = sorted({r["title"] for r in records})
    order = [titles[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(titles))]
    n_train = round(fractions[0] * len(order))
    n_dev = round(fractions[1] * len(order))
    groups = (set(order[:n_train]), set(order[n_train:n_train + n_dev]), set(order[n_train + n_dev:]))
    return tuple([r for r in records if r["title"] in g] for g in groups)


def to_dataset(records: list[dict]) -> Dataset:
    if not records:
        raise QADataError("a QA split has no questions")
    return Dataset.from_list(records)


def load_embedded_squad(folder: Path | None = None) -> tuple[Dataset, Dataset, Dataset]:
    records, stats = [], LoadStats()
    for path in fetch_embedded_squad(folder):
        records += read_squad_json(path, stats)
    print(stats.line("embedded SQuAD v1.1 dev + new_wiki"))
    return tuple(to_dataset(split) for split in split_by_article(records))


def load_local_squad(path: Path) -> tuple[Dataset, Dataset, Dataset]:
    """One SQuAD JSON file (split by article 80/10/10) or a folder with train/dev(/validation)/test JSON."""
    path = Path(path)
    stats = LoadStats()
    if path.is_file():
        records = read_squad_json(path, stats)
        splits = split_by_article(records)
    else:
        files = {}
        for split, names in (("train", ("train",)), ("dev", ("dev", "validation", "valid")), ("test", ("test",))):
            files[split] = next((p for n in names for p in sorted(path.glob(f"{n}*.json"))), None)
        if files["train"] is None:
            raise QADataError(f"{path}: no train*.json (SQuAD format) in this folder")
        train = read_squad_json(files["train"], stats)
        if files["dev"] is None or files["test"] is None:
            held = files["dev"] or files["test"]
            if held is None:
                splits = split_by_article(train)
            else:  # the one held-out file is the test split; dev comes from train's articles
                t, d, _ = split_by_article(train, (0.9, 0.1, 0.0))
                splits = (t, d, read_squad_json(held, stats))
        else:
            splits = (train, read_squad_json(files["dev"], stats), read_squad_json(files["test"], stats))
    print(stats.line(str(path)))
    for name, split in zip(("train", "dev", "test"), splits):
        if not split:
            raise QADataError(f"{path}: the {name} split has no questions (too few articles to split by article?)")
    return tuple(to_dataset(s) for s in splits)


def check_records(records: list[dict], source: str, stats: LoadStats) -> list[dict]:
    """Flat (hub-style) records: the same checks as the JSON reader: SQuAD 2.0 refused, answers whose
    ``answer_start`` does not point at their text counted and skipped."""
    out = []
    for r in records:
        answers = r["answers"]
        if not answers["text"]:
            raise QADataError(f"{source}: question {r['id']!r} has no answer (SQuAD 2.0); only SQuAD v1.1 (every "
                              "question answered in its paragraph) is supported for now")
        stats.questions += 1
        pairs = [(t, int(a)) for t, a in zip(answers["text"], answers["answer_start"])
                 if r["context"][int(a):int(a) + len(t)] == t]
        stats.bad_answers += len(answers["text"]) - len(pairs)
        if not pairs:
            stats.dropped_questions += 1
            continue
        out.append({**r, "answers": {"text": [t for t, _ in pairs], "answer_start": [a for _, a in pairs]}})
    return out


HUB_COLUMNS = ("id", "title", "context", "question", "answers")


def load_hub_squad(name: str = "squad") -> tuple[Dataset, Dataset, Dataset]:
    """The hub's ``squad`` (train + validation), or any dataset with its columns: validation is the test
    split, dev is carved from train by article."""
    from datasets import load_dataset

    try:
        hub = load_dataset(name)
    except Exception as err:  # noqa: BLE001  (hub errors come in many types)
        raise QADataError(f"task.name {name!r}: could not load it from the hub ({str(err).splitlines()[0][:200]}); "
                          "without network use task.name=squad or a local SQuAD JSON file") from None
    if "train" not in hub or "validation" not in hub:
        raise QADataError(f"{name}: a hub QA dataset needs 'train' and 'validation' splits (found {list(hub)})")
    missing = [c for c in HUB_COLUMNS if c not in hub["train"].column_names]
    if missing:
        raise QADataError(f"{name}: missing column(s) {missing} of SQuAD form {list(HUB_COLUMNS)} (found "
                          f"{hub['train'].column_names})")
    stats = LoadStats()
    train = check_records(hub["train"].to_list(), name, stats)
    test = check_records(hub["validation"].to_list(), name, stats)
    print(stats.line(name))
    t, d, _ = split_by_article(train, (0.95, 0.05, 0.0))
    return to_dataset(t), to_dataset(d), to_dataset(test)
