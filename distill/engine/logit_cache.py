"""Teacher logits kept on disk in the run folder, so stages that train on the same data reuse them.

Task distillation (2b) and pruning recovery both distil from the fine-tuned teacher's logits; when they
train on the same examples, recovery reads what 2b computed instead of running the teacher again (also
when the stages run in separate commands). The key covers everything the logits depend on: the teacher's
folder and weight files (path, size, modification time), the dataset's content fingerprint and length,
the device type and autocast precision, and the task kind. Any change is a new key, so a stale entry is
never read; an unkeyable dataset (no fingerprint) is simply not cached.

Under several processes (``accelerate launch``) the main process alone runs the teacher and writes the
entry while the others wait at a barrier (the process group's timeout is long: distill.base.ranks), then
every rank reads the entry, so every rank trains on the very same logits. (Each rank writing the same
entry raced on its temporary folder and crashed the run.) Only an unkeyable dataset is computed by every
rank, in the same deterministic evaluation pass.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

CACHE_DIR = "cache"


def weights_stamp(folder: Path) -> list:
    files = sorted(p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".bin", ".json"))
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_key(teacher_dir: Path | str, dataset, device_type: str, dtype, kind_name: str) -> str | None:
    fingerprint = getattr(dataset, "_fingerprint", None)
    folder = Path(teacher_dir)
    if not fingerprint or not folder.is_dir():
        return None
    payload = [str(folder.resolve()), weights_stamp(folder), fingerprint, len(dataset), device_type, str(dtype),
               kind_name]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]


def entry_folder(run_dir: Path, key: str) -> Path:
    """Where the logits stored under ``key`` live in a run folder."""
    return Path(run_dir) / CACHE_DIR / f"teacher-logits-{key}"


def _load_entry(folder: Path, dataset):
    """The stored ``teacher_logits`` column, or None when the folder is damaged (a file cut short or
    missing, another row count): such an entry is computed again, never read."""
    from datasets import load_from_disk

    try:
        stored = load_from_disk(str(folder))
    except Exception:  # noqa: BLE001  (Arrow, JSON and file errors all mean: not a usable entry)
        return None
    if stored.num_rows != len(dataset) or stored.column_names != ["teacher_logits"]:
        return None
    return stored


def reuse_or_compute(run_dir: Path | None, key: str | None, dataset, compute: Callable):
    """``dataset`` with its ``teacher_logits`` column: read from the run's cache when ``key`` is there,
    else ``compute(dataset)`` and stored under ``key`` (written to a temporary name, then renamed). A
    damaged entry is removed and computed again; in one process, a write that fails (full disk) leaves
    the logits uncached and the stage going. Under several processes the main process computes and
    writes; the others wait for it at a barrier and read the entry."""
    from datasets import concatenate_datasets

    from distill.base.ranks import is_main_process, wait_for_everyone

    if key is None or run_dir is None:
        return compute(dataset)
    folder = entry_folder(run_dir, key)
    stored = computed = None
    if is_main_process():
        stored = _load_entry(folder, dataset) if folder.is_dir() else None  # the damage check is the load
        if stored is not None:
            print(f"[teacher] logits for {len(dataset)} training examples reused from {folder}")
        else:
            if folder.is_dir():
                print(f"[teacher] the cached logits in {folder} are damaged (a file cut short or missing, or "
                      "another row count); computing them again")
                shutil.rmtree(folder, ignore_errors=True)
            computed = _compute_and_store(folder, dataset, compute)
    # the main process has read or written the entry (should it fail, the launcher stops every rank)
    wait_for_everyone()
    if computed is not None:
        return computed
    if stored is None:  # another rank: it reads what the main process read or wrote
        stored = _load_entry(folder, dataset)
        if stored is None:
            raise RuntimeError(f"the main process did not write the teacher logits {folder} (or they cannot be "
                               "read); see its error, delete that folder and run the stage again")
    # joined column-wise in Arrow: turning 10k rows into Python lists and back took ~6 s a stage
    return concatenate_datasets([dataset, stored], axis=1)


def _compute_and_store(folder: Path, dataset, compute: Callable):
    """Main process: ``compute(dataset)``, stored in ``folder`` through a scratch folder and a rename."""
    from distill.base.ranks import process_count

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left
    out = compute(dataset)
    try:
        tmp.mkdir(parents=True)
        out.select_columns(["teacher_logits"]).save_to_disk(str(tmp))
        tmp.rename(folder)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(error, OSError) or process_count() > 1:  # the other ranks need the entry
            raise
        print(f"[teacher] could not store the teacher logits in {folder} ({error.strerror or error}); "
              "this stage goes on with them in memory, the next computes its own")
    return out
