"""Which process writes: under ``accelerate launch`` every rank runs the same stages; only the main
process writes files (checkpoints, model folders, stage records, metrics), and the others wait for it."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
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


HEARTBEAT = ".heartbeat"  # in a scratch folder: touched by the main process while it builds there
BEAT_S = 10.0  # how often the main process touches it
STALE_S = 600.0  # the waiting processes give up when it has not changed for this long


@contextmanager
def heartbeat(scratch: Path, every_s: float = BEAT_S):
    """The main process, while it fills ``scratch``: a thread touches ``scratch/.heartbeat`` every
    ``every_s`` seconds, so the processes waiting on it can tell a long build from a dead one."""
    beat = Path(scratch) / HEARTBEAT
    stop = threading.Event()

    def touch() -> bool:
        try:
            beat.touch()
            return True
        except OSError:  # stop once the folder is gone (an error on the main thread removed it); a passing
            return Path(scratch).is_dir()  # error (e.g. ESTALE on NFS) must not silence a live process

    def run() -> None:
        while not stop.wait(every_s) and touch():
            pass

    touch()
    thread = threading.Thread(target=run, name="distill-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def wait_for_main(done: Callable[[], bool], scratch: Path, poll_s: float = 1.0, grace_s: float = 30.0,
                  building: bool | None = None, stale_s: float | None = None) -> None:
    """A process other than the main one: sleep until the main process has finished writing (``done()``)
    or given up (its ``scratch`` folder gone). Polling the file system, not a collective barrier, so a
    long teacher pass on the main process hits no process-group timeout (30 min gloo, often 10 min NCCL).
    When a build was under way, ``done()`` gets ``grace_s`` more once the scratch folder is gone: on a
    shared file system (NFS) another machine may see the two halves of the rename apart. ``building``: the
    caller knows the main process started a build (it made the scratch folder before a barrier), so the
    grace applies even when the scratch folder is already gone on entry; None: judged from the folder.

    A main process killed mid-build (SIGKILL, out of memory, a lost machine) leaves its scratch folder
    behind: when the folder's heartbeat file (see :func:`heartbeat`) has not changed for ``stale_s``
    seconds (default ``STALE_S``), this raises instead of waiting for ever. Changes are timed on this
    machine's clock, so clocks that differ between machines do not matter."""
    stale_s = STALE_S if stale_s is None else stale_s
    if building is None:
        building = Path(scratch).is_dir()
    beat = Path(scratch) / HEARTBEAT
    seen, changed_at = None, time.monotonic()
    while not done() and Path(scratch).is_dir():
        try:
            stamp = beat.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and stamp != seen:
            seen, changed_at = stamp, time.monotonic()
        elif seen is not None and time.monotonic() - changed_at > stale_s:  # (a beat file gone counts as still)
            raise RuntimeError(f"the main process stopped writing {scratch} (no sign of life for {stale_s:g} s): "
                               "it was probably killed; stop every process and start the command again")
        time.sleep(poll_s)
    end = time.monotonic() + (grace_s if building else 0.0)
    while not done() and time.monotonic() < end:
        time.sleep(poll_s)
