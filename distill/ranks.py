"""Which process writes: under ``accelerate launch`` every rank runs the same stages; only the main
process writes files (checkpoints, model folders, stage records, metrics), and the others wait for it."""
from __future__ import annotations

from accelerate import PartialState


def is_main_process() -> bool:
    return PartialState().is_main_process


def wait_for_everyone() -> None:
    """A barrier across processes; nothing in a single process."""
    PartialState().wait_for_everyone()
