"""Which task names are extractive QA, and loading them as a TaskData with its own QuestionAnswering kind.

- ``task.name=squad``: the embedded SQuAD v1.1 dev + SQuAD Shifts new_wiki (fetched once, split by article);
- a SQuAD-format JSON file, or a folder with train*.json (+ dev/validation*.json, test*.json);
- ``task.name=hub:<dataset>`` (e.g. ``hub:squad``), or any hub name with ``task.kind=question_answering``:
  the hub's columns id/title/context/question/answers; validation becomes the test split.
A kind that contradicts the data (QA asked of sentence/NER data, or the reverse) is refused here, before any
model loads.
"""
from __future__ import annotations

import json
from pathlib import Path

from distill.config import TaskConfig
from distill.data.types import SPLIT_SEED, DataError, TaskData
from distill.tasks.question_answering import QuestionAnswering
from distill.data.squad import QADataError, load_embedded_squad, load_hub_squad, load_local_squad

EMBEDDED = "squad"
HUB = "hub:"
KIND = "question_answering"
CLASSIFICATION_TASKS = ("rotten_tomatoes", "conll2003")


def is_squad_json(path: Path) -> bool:
    """A JSON file with a top-level 'data' list of articles holding 'paragraphs'."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    articles = data.get("data") if isinstance(data, dict) else None
    return isinstance(articles, list) and bool(articles) and isinstance(articles[0], dict) \
        and "paragraphs" in articles[0]


def _looks_like_squad(path: Path) -> bool:
    if path.is_dir():
        train = next(iter(sorted(p for p in path.glob("train*.json") if p.is_file())), None)
        return train is not None and is_squad_json(train)
    return is_squad_json(path)


def qa_task_wanted(cfg: TaskConfig) -> bool:
    """Whether task.name is QA data; a task.kind that contradicts the data is refused."""
    name, path = cfg.name, Path(cfg.name)
    looks = name == EMBEDDED or name.startswith(HUB) or (path.exists() and _looks_like_squad(path))
    if cfg.kind == KIND:
        if looks:
            return True
        if path.exists():
            raise DataError(f"task.kind=question_answering but {name} is not SQuAD-format JSON (a top-level 'data' "
                            "list of articles with paragraphs and qas); point task.name at SQuAD JSON or set "
                            "task.kind to the data's kind (or auto)")
        if name in CLASSIFICATION_TASKS or name.startswith("glue/"):
            raise DataError(f"task.kind=question_answering but task.name={name} is a classification task; use "
                            "task.name=squad, a SQuAD-format JSON file/folder or hub:<dataset>")
        return True  # a hub dataset name
    if looks and cfg.kind != "auto":
        raise DataError(f"task.name={name} is question answering (SQuAD) data but task.kind={cfg.kind}; set "
                        "task.kind=question_answering (or auto)")
    if looks and cfg.type != "auto":
        raise DataError(f"config key 'task.type': task.name={name} is question answering (SQuAD) data, which has no "
                        f"{cfg.type} labels; set task.type=auto, or point task.name at text/label data")
    return looks


def load_qa_task(cfg: TaskConfig) -> TaskData:
    name = cfg.name
    try:
        if name == EMBEDDED:
            splits, source = load_embedded_squad(), "squad"
        elif Path(name).exists():
            splits, source = load_local_squad(Path(name)), Path(name).stem if Path(name).is_file() else Path(name).name
        else:
            hub = name[len(HUB):] if name.startswith(HUB) else name
            splits, source = load_hub_squad(hub), hub
    except QADataError as err:
        raise DataError(str(err)) from None
    # question order shuffled once (seeded, within each article-level split) so caps sample many articles
    train, dev, test = (s.shuffle(seed=SPLIT_SEED).flatten_indices() for s in splits)
    # label names: the QA head's two outputs (None would mean a regression task to the stages)
    how = "task.kind=question_answering" if cfg.kind == KIND else "detected from the data (task.kind=auto)"
    note = (f"extractive question answering, {how}: windows of task.max_len={cfg.max_len} tokens, "
            f"task.doc_stride={cfg.doc_stride}")
    return TaskData(source, train, dev, test, ["start", "end"], "squad_f1", note,
                    kind=QuestionAnswering.from_config(cfg))
