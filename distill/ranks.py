"""Which process writes: under ``accelerate launch`` every rank runs the same stages; only the main
process writes files (checkpoints, model folders, stage records, metrics), and the others wait for it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def _state() -> PartialState:
    # the first PartialState fixes the process group for the whole process; Accelerator reads the CPU
    # flag of `accelerate launch --cpu` from the environment, a bare PartialState does not: read it here too
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_main_process() -> bool:
    return _state().is_main_process


def wait_for_everyone() -> None:
    """A barrier across processes; nothing in a single process."""
    _state().wait_for_everyone()


def process_count() -> int:
    return _state().num_processes


def wait_for_main(done: Callable[[], bool], scratch: Path, poll_s: float = 1.0, grace_s: float = 30.0,
                  building: bool | None = None) -> None:
    """A process other than the main one: sleep until the main process has finished writing (``done()``)
    or given up (its ``scratch`` folder gone). Polling the file system, not a collective barrier, so a
    long teacher pass on the main process hits no process-group timeout (30 min gloo, often 10 min NCCL).
    When a build was under way, ``done()`` gets ``grace_s`` more once the scratch folder is gone: on a
    shared file system (NFS) another machine may see the two halves of the rename apart. ``building``: the
    caller knows the main process started a build (it made the scratch folder before a barrier), so the
    grace applies even when the scratch folder is already gone on entry; None: judged from the folder."""
    if building is None:
        building = Path(scratch).is_dir()
    while not done() and Path(scratch).is_dir():
        time.sleep(poll_s)
    end = time.monotonic() + (grace_s if building else 0.0)
    while not done() and time.monotonic() < end:
        time.sleep(poll_s)
