"""Crash-safe files and folders: a kill at any instant leaves the last complete copy under a known name.

A folder ``F`` is replaced in four steps: write ``F.tmp``; rename ``F`` to ``F.old``; rename ``F.tmp`` to
``F``; delete ``F.old``. Renames are atomic, so at every instant either ``F`` or ``F.old`` holds a complete
copy; ``recover_folder(F)`` (called before every read and every replace) puts it back under ``F``.
``F.tmp`` is never trusted: a kill may have cut it short.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def scratch_path(folder: Path) -> Path:
    """Where ``begin_replace`` puts the new copy of ``folder``."""
    return folder.with_name(folder.name + ".tmp")


def _old(folder: Path) -> Path:
    return folder.with_name(folder.name + ".old")


def recover_folder(folder: Path) -> bool:
    """Undo a replace that a kill interrupted; True when ``folder`` now holds a complete copy."""
    folder, old = Path(folder), _old(Path(folder))
    if old.exists():
        if folder.exists():  # killed after the swap, while deleting the old copy
            shutil.rmtree(old)
        else:  # killed between the two renames: the old copy is the complete one
            old.rename(folder)
    return folder.exists()


def begin_replace(folder: Path) -> Path:
    """An empty scratch folder to write the new copy into (then call ``commit_replace``)."""
    folder = Path(folder)
    recover_folder(folder)
    tmp = scratch_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def commit_replace(folder: Path, staged: Path | None = None) -> None:
    """Swap the finished new copy (``staged``, by default the scratch folder of ``begin_replace``) in place
    of ``folder``; ``staged`` must be on the same file system."""
    folder = Path(folder)
    tmp, old = Path(staged) if staged is not None else scratch_path(folder), _old(folder)
    if not tmp.is_dir():
        raise FileNotFoundError(f"{tmp} does not exist: write the new copy there first")
    recover_folder(folder)  # a stale folder.old would block the rename below
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def replace_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Write a new copy of ``folder`` with ``write(scratch_folder)`` and swap it in crash-safely."""
    tmp = begin_replace(folder)
    tmp.mkdir()
    write(tmp)
    commit_replace(folder)
    return Path(folder)


def remove_folder(folder: Path) -> None:
    """Delete ``folder`` and any scratch or old copy of it."""
    folder = Path(folder)
    tmp = scratch_path(folder)
    shutil.rmtree(_old(folder), ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    if folder.exists():
        folder.rename(tmp)  # one atomic step: a kill never leaves a half-deleted folder under its own name
    shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small file in one rename: readers see the old or the new text, never a torn one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
