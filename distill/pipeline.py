"""Stages in order; each command of the CLI runs one of these."""
from __future__ import annotations

from distill.config import ExperimentConfig
from distill.context import RunContext


def run_teacher(cfg: ExperimentConfig) -> None:
    from teachers.finetune import finetune_teacher

    finetune_teacher(RunContext(cfg))
