"""Which process writes: under ``accelerate launch`` every rank runs the same stages; only the main
process writes files (checkpoints, model folders, stage records, caches), and the others wait for it at
a barrier.

A rank waits at a barrier while the main process alone runs a teacher pass (teacher logits, the 2a
feature cache), which can take far longer than torch's default collective timeout (30 min on gloo,
10 min on NCCL). The process group is therefore created here, once, with ``PROCESS_GROUP_TIMEOUT``;
``distill.engine.trainer.fresh_accelerator`` asks for the same timeout in case it comes first. A rank
that dies does not leave the others waiting that long: ``accelerate launch`` (torchrun) stops every
rank when one fails.
"""
from __future__ import annotations

from datetime import timedelta

from accelerate import PartialState
from accelerate.utils import InitProcessGroupKwargs, parse_flag_from_env

PROCESS_GROUP_TIMEOUT = timedelta(hours=12)  # longest a rank waits at one barrier (a teacher pass on the main one)


def process_group_kwargs() -> InitProcessGroupKwargs:
    """The process group's settings, for ``Accelerator(kwargs_handlers=[...])``."""
    return InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)


def process_state() -> PartialState:
    """This process's accelerate state. The first PartialState fixes the process group for the whole
    process, so every caller goes through here. Accelerator reads the CPU flag of ``accelerate launch
    --cpu`` from the environment, a bare PartialState does not: read it here too."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **process_group_kwargs().to_kwargs())


def is_main_process() -> bool:
    return process_state().is_main_process


def wait_for_everyone() -> None:
    """A barrier across processes; nothing in a single process."""
    process_state().wait_for_everyone()


def process_count() -> int:
    return process_state().num_processes
