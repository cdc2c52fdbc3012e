"""Which process writes: under ``accelerate launch`` every rank runs the same stages; only the main
process writes files (checkpoints, model folders, stage records, metrics), and the others wait for it."""
from __future__ import annotations

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
