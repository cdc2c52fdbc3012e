"""What a stage's fingerprint is made of, beyond the config values it names.

A stage is reused only when it would be rebuilt the same way. Config values alone miss an edited data
file or a retrained model folder under the same path, so the stages also record a digest of the
contents of every local input they read (``input_digests``), and leave out the keys that change only
bookkeeping, never the result (``stage_value``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

# TrainConfig keys that change when things are written or logged, never what is trained.
# eval_every stays in: it decides which checkpoint is kept as the best model.
NO_EFFECT_KEYS = ("save_every", "log_every")

_CORPUS_SUFFIXES = (".txt", ".text", "")  # what corpus.text_file_paragraphs reads from a folder

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> content digest, per process


def stage_value(value: Any) -> Any:
    """``value`` as plain data for a stage's settings: dataclasses become dicts, minus NO_EFFECT_KEYS."""
    from distill.config import TrainConfig

    if is_dataclass(value) and not isinstance(value, type):
        from distill.engine.trainer import added_later

        train = isinstance(value, TrainConfig)
        return {f.name: stage_value(getattr(value, f.name)) for f in fields(value)
                if not (train and (f.name in NO_EFFECT_KEYS or added_later(f.name, getattr(value, f.name))))}
    if isinstance(value, dict):
        return {k: stage_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stage_value(v) for v in value]
    return value


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes, computed once per process for each (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        with open(path, "rb") as fh:
            _FILE_DIGESTS[key] = hashlib.file_digest(fh, "sha1").hexdigest()
    return _FILE_DIGESTS[key]


def path_digest(path: Path, suffixes: tuple[str, ...] | None = None, recursive: bool = False,
                exclude: Path | None = None) -> str:
    """Digest of a file, or of a folder's files (names and contents; hidden files and folders, ``exclude``
    (the run outputs, should a data folder hold them) and, unless ``recursive``, subfolders left out; only
    ``suffixes`` when given). Copies and moves keep it."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)[:16]
    skip = Path(exclude).resolve() if exclude is not None else None
    files = []
    for root, folders, names in os.walk(path):
        here = Path(root)
        folders[:] = [f for f in folders if recursive and not f.startswith(".") and (here / f).resolve() != skip]
        files += [here / n for n in names if not n.startswith(".") and (here / n).is_file()
                  and (suffixes is None or Path(n).suffix.lower() in suffixes)]
    files.sort()
    total = hashlib.sha1()
    for file in files:
        total.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return total.hexdigest()[:16]


def _model_path(name: str) -> Path | None:
    """A local or embedded model folder; None for a hub name (its files are not here to read)."""
    from teachers.load import EMBEDDED

    if not name:
        return None
    if name in EMBEDDED:
        return Path(EMBEDDED[name]())
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _task_path(name: str) -> Path | None:
    """The task file or folder; a folder is hashed whole (every non-hidden file, subfolders too): the loaders
    read .csv/.tsv/.jsonl/.json/.parquet tables, CoNLL .conll/.txt/.iob files and saved DatasetDict folders."""
    from distill.base import assets

    if name == "rotten_tomatoes":
        return assets.rotten_tomatoes_csv()
    path = Path(name.removeprefix("hub:")).expanduser()  # hub:<folder> loads a local copy of a hub dataset
    return path if path.exists() else None


def _corpus_path(name: str) -> Path | None:
    from distill.base import assets

    if name == "wiki":
        return assets.wiki_excerpt()
    path = Path(name).expanduser()
    return path if path.exists() else None


def _local_input(key: str, value: str) -> tuple[Path, tuple[str, ...] | None, bool] | None:
    """(path, suffixes, recursive) of the local input that config ``key`` names, or None."""
    if key in ("teacher.name", "general.teacher", "task_distill.augment.mlm_model"):
        path = _model_path(value)
        return (path, None, False) if path else None
    if key == "student.init":
        path = _model_path(value) if value not in ("random", "teacher") else None
        return (path, None, False) if path else None
    if key in ("task.name", "task.data_dir"):
        path = _task_path(value) if value else None
        return (path, None, True) if path else None
    if key == "general.corpus":
        path = _corpus_path(value)
        return (path, _CORPUS_SUFFIXES, True) if path else None
    raise KeyError(f"no local input is known for config key {key!r}")


def input_digests(cfg: Any, *keys: str) -> dict[str, str]:
    """{config key: digest of the local file or folder it names} for those ``keys`` that name one;
    hub names, 'random' and empty values name nothing local and are covered by their config value. The
    run outputs (``output_dir``) are never part of an input, wherever they sit."""
    out = {}
    for key in keys:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        found = _local_input(key, value)
        if found is not None:
            out[key] = path_digest(*found, exclude=getattr(cfg, "output_dir", None))
    return out
