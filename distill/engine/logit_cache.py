"""Teacher logits kept on disk in the run folder, so stages that train on the same data reuse them.

Task distillation (2b) and pruning recovery both distil from the fine-tuned teacher's logits; when they
train on the same examples, recovery reads what 2b computed instead of running the teacher again (also
when the stages run in separate commands). The key covers everything the logits depend on: the teacher's
folder and weight files (path, size, modification time), the dataset's content fingerprint and length,
the device type and autocast precision, and the task kind. Any change is a new key, so a stale entry is
never read; an unkeyable dataset (no fingerprint) is simply not cached.

Stage 2a runs the same teacher over the same examples (in one process, one pass or more): a
``LogitSink`` keeps the logits of those passes, and when it has every example they become the cache
entry 2b would otherwise compute with a teacher pass of its own.

Under several processes (``accelerate launch``) the main process alone runs the teacher and writes the
entry; the others poll for the finished folder (no collective barrier, which a long teacher pass would
time out) and read it, so every rank trains on the very same logits. (Each rank writing the same entry
raced on its temporary folder and crashed the run.) Only an unkeyable dataset is computed by every rank,
in the same deterministic evaluation pass.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_DIR = "cache"
WAIT_GRACE_S = 30.0  # distill.base.ranks.wait_for_main: after the main process's scratch folder is gone


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
    the logits uncached and the stage going."""
    from datasets import concatenate_datasets

    from distill.base.ranks import HEARTBEAT, heartbeat, is_main_process, process_count, wait_for_everyone, wait_for_main

    if key is None or run_dir is None:
        return compute(dataset)
    folder = entry_folder(run_dir, key)
    tmp = folder.with_name(folder.name + ".tmp")
    stored = None  # the main process reads a cached entry here, once: its damage check is the load
    if is_main_process() and folder.is_dir():
        stored = _load_entry(folder, dataset)
        if stored is None:
            print(f"[teacher] the cached logits in {folder} are damaged (a file cut short or missing, or another "
                  "row count); computing them again")
            shutil.rmtree(folder, ignore_errors=True)
    cached = folder.is_dir()
    if process_count() > 1:  # the main process decides: another machine's file system view may lag (NFS)
        from accelerate.utils import broadcast_object_list

        cached = broadcast_object_list([cached], from_process=0)[0]
        if cached and not folder.is_dir():
            wait_for_main(folder.is_dir, tmp, grace_s=WAIT_GRACE_S, building=True)
    if not cached and is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left
        tmp.mkdir(parents=True)
    wait_for_everyone()  # every rank has looked, and the scratch folder exists iff the main process computes
    if not cached:
        if is_main_process():
            try:
                with heartbeat(tmp):  # the others can tell a long teacher pass from a dead process
                    out = compute(dataset)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # the others stop waiting
                raise
            try:
                with heartbeat(tmp):
                    out.select_columns(["teacher_logits"]).save_to_disk(str(tmp))
                (tmp / HEARTBEAT).unlink(missing_ok=True)
                tmp.rename(folder)
            except BaseException as error:
                shutil.rmtree(tmp, ignore_errors=True)
                if not isinstance(error, OSError) or process_count() > 1:  # the other ranks need the entry
                    raise
                print(f"[teacher] could not store the teacher logits in {folder} ({error.strerror or error}); "
                      "this stage goes on with them in memory, the next computes its own")
            return out
        wait_for_main(folder.is_dir, tmp, grace_s=WAIT_GRACE_S, building=True)
        if not folder.is_dir():
            raise RuntimeError(f"the main process did not write the teacher logits {folder}; see its error")
    if stored is None:
        stored = _load_entry(folder, dataset)
    if stored is None:
        raise RuntimeError(f"the teacher logits in {folder} cannot be read (damaged or incomplete); delete that "
                           "folder and run the stage again")
    if cached:
        print(f"[teacher] logits for {len(dataset)} training examples reused from {folder}")
    # joined column-wise in Arrow: turning 10k rows into Python lists and back took ~6 s a stage
    return concatenate_datasets([dataset, stored], axis=1)


def arrow_rows(rows: list[np.ndarray]):
    """Rows of shape (labels,) or (tokens, labels) as one Arrow list column of float32, built from the
    arrays themselves: no Python float per value (per-token rows of a large NER or QA set would take
    gigabytes and tens of seconds as Python lists)."""
    import pyarrow as pa

    width = rows[0].shape[-1]
    flat = pa.array(np.concatenate([row.reshape(-1) for row in rows]))
    if rows[0].ndim == 1:
        return pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1, dtype=np.int64) * width), flat)
    tokens = np.array([row.shape[0] for row in rows], dtype=np.int64)
    inner = pa.ListArray.from_arrays(pa.array(np.arange(int(tokens.sum()) + 1, dtype=np.int64) * width), flat)
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(tokens)]).astype(np.int64)), inner)


class LogitSink:
    """Teacher logits gathered from a stage's own teacher passes, one row per training example (rows as
    ``with_teacher_logits`` stores them), found by the batch's ``example_id`` column. Rows are kept as
    float32 arrays; once every example has its row, later passes add nothing (and copy nothing), and
    ``on_complete()`` (when set) runs once, right then: 2a stores the entry at that moment, so a 2a killed
    later (a second epoch, or training after its feature cache was built) still leaves it to 2b."""

    def __init__(self, examples: int, kind, on_complete: Callable[[], None] | None = None):
        self.rows: list = [None] * examples
        self.kind = kind
        self.missing = examples
        self.on_complete = on_complete

    def add(self, example_ids, logits, attention_mask) -> None:
        if self.missing == 0:
            return
        rows, _ = self.kind.rows(logits.detach().float().cpu().numpy(), None, attention_mask.cpu().numpy())
        for index, row in zip(example_ids.tolist(), rows):
            if self.rows[index] is None:
                self.missing -= 1
                self.rows[index] = np.array(row, dtype=np.float32)  # a copy: rows may be views of the batch
        if self.missing == 0 and self.on_complete is not None:
            done, self.on_complete = self.on_complete, None
            done()

    @property
    def complete(self) -> bool:
        return self.missing == 0
