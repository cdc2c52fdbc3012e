"""A stage declared as data: what it reads, what its fingerprint covers, the folder it writes, the work.

The runner (distill/runner) is the only code that knows the order: it resolves which stages a command
needs, prints the plan, and calls ``work`` with the outputs of the stages named in ``reads``. A stage
module never imports another stage; what several stages share lives in ``distill.stages.common``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from distill.config import ExperimentConfig


@dataclass(frozen=True)
class Output:
    """What a finished (or given) stage hands the stages that read it."""
    dir: Path  # the stage folder (projections, metrics.jsonl, result.json live here)
    model_dir: Path  # its artifact: a Hugging Face folder (export: the export folder)
    result: dict[str, Any] = field(default_factory=dict)  # its result.json


def _always(cfg: ExperimentConfig) -> bool:
    return True


def _nothing(cfg: ExperimentConfig) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Stage:
    name: str  # what the plan and the CLI call it: teacher, general, 2a, 2b, baseline, prune, export, bench
    folder: str  # its folder in the run (runs/<name>/<run_id>/<folder>); "" when it records nothing (bench)
    about: str  # one line for the plan and --help
    # (ctx, fingerprints of the stages it reads by name) -> the settings its fingerprint covers: config
    # sections, digests of input files and model folders, and the upstream fingerprints
    settings: Callable[[Any, dict[str, str]], dict[str, Any]]
    # (ctx, the StageRun to write into, outputs of the stages it reads by name) -> its result.json
    work: Callable[[Any, Any, dict[str, Output]], dict[str, Any]]
    reads: Callable[[ExperimentConfig], tuple[str, ...]] = _nothing  # stage names, given the config
    enabled: Callable[[ExperimentConfig], bool] = _always
    trains: bool = True  # read-only commands (bench, export, report) never run a stage that trains
    artifact: str = "model"  # the artifact inside the stage folder ("" = the stage folder itself, e.g. export)
    # True when the user gives this stage's artifact instead (teacher.already_finetuned); ``given(ctx)``
    # then checks and returns it, and nothing is trained or recorded
    is_given: Callable[[ExperimentConfig], bool] = lambda cfg: False
    given: Callable[[Any], Output] | None = None
    # run after the stage is available (trained, reused or given), e.g. the teacher gate
    check: Callable[[Any, Output], None] | None = None
    # what the plan says of a finished stage, e.g. its test score
    describe: Callable[[Output], str] | None = None
