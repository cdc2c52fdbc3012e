"""The runner: which stages a command needs, in what order, and what each will do (the plan), then
running them. The only code that knows the order of the stages.

Each stage's fingerprint covers its settings and the fingerprints of the stages it reads, so a change
upstream shows as a change in every stage after it. Before any work the plan is printed: per stage
``reused``, ``given``, ``to run`` (new, resume, or settings changed: the unfinished attempt is set aside)
or ``refused`` (finished with other settings: a finished artifact is never overwritten).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from distill.base.ranks import is_main_process, wait_for_everyone
from distill.runner.graph import STAGES
from distill.stages.context import RunContext
from distill.stages.records import STAGE_SECONDS, StageConflictError, StageRun
from distill.stages.spec import Output, Stage
from distill.base.errors import UserError


class PlanError(UserError, RuntimeError):
    """The command cannot go ahead: a read-only command lacks a trained input, or a stage is disabled."""


@dataclass
class Step:
    stage: Stage
    run: StageRun | None  # None for a stage that records nothing (bench, inspect)
    state: str  # done | given | new | resume | changed | conflict | always
    why: str

    @property
    def will_run(self) -> bool:
        return self.state in ("new", "resume", "changed", "always")

    def line(self) -> str:
        where = f"  {self.run.dir}" if self.run is not None else ""
        label = {"done": "reused", "given": "given", "new": "to run", "resume": "to run (resume)",
                 "changed": "to run (settings changed)", "conflict": "REFUSED", "always": "to run"}[self.state]
        why = self.why
        if self.state == "done" and self.stage.describe is not None:
            why = self.stage.describe(_output(self)) or why
        return f"  {self.stage.name:<9} {label:<26} {why}{where}"


def order(cfg, targets: tuple[str, ...]) -> list[str]:
    """The enabled stages ``targets`` need, each after the stages it reads (depth first, in reading order)."""
    out: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise PlanError(f"stage graph has a cycle: {' -> '.join(path + (name,))}")
        stage = STAGES[name]
        if name in out or not stage.enabled(cfg):
            return
        for upstream in stage.reads(cfg):
            visit(upstream, path + (name,))
        out.append(name)

    for target in targets:
        visit(target, ())
    return out


def make_plan(ctx: RunContext, targets: tuple[str, ...]) -> list[Step]:
    """One Step per needed stage, from the records on disk alone (nothing is changed)."""
    steps, fingerprints = [], {}
    for name in order(ctx.cfg, targets):
        stage = STAGES[name]
        upstream = {r: fingerprints[r] for r in stage.reads(ctx.cfg) if r in fingerprints}
        settings = stage.settings(ctx, upstream)
        if not stage.folder:
            steps.append(Step(stage, None, "always", "runs every time (records nothing)"))
            continue
        run = StageRun(ctx.run_dir, stage.folder, settings)
        fingerprints[name] = run.fingerprint
        if stage.is_given(ctx.cfg):
            steps.append(Step(stage, run, "given", "teacher.already_finetuned: the given folder is used"))
            continue
        state, why = run.status()
        steps.append(Step(stage, run, state, why))
    return steps


def print_plan(ctx: RunContext, steps: list[Step], command: str) -> None:
    if is_main_process():
        print(f"[plan] {command} in {ctx.run_dir}:\n" + "\n".join(step.line() for step in steps), flush=True)


def check_plan(steps: list[Step], command: str, may_train: bool, config_hint: str) -> None:
    """Refuse before any work: a finished stage with other settings, or a read-only command that would train."""
    conflicts = [s for s in steps if s.state == "conflict"]
    if conflicts:
        s = conflicts[0]
        raise StageConflictError(f"stage '{s.run.name}' in {s.run.dir} already finished with other settings "
                                 f"({s.why}); pick a new run_id=... or delete that folder to rebuild it")
    if not may_train:
        missing = [s.stage.name for s in steps if s.stage.trains and s.will_run]
        if missing:
            raise PlanError(f"`{command}` only reads trained models, and this run lacks {', '.join(missing)}: "
                            f"run `make distill{config_hint}` (python -m distill distill ...) first; it trains nothing")


def _output(step: Step) -> Output:
    run = step.run
    return Output(run.dir, run.dir / step.stage.artifact if step.stage.artifact else run.dir, run.result())


class _Starting:
    """The StageRun a stage's work writes into, started (settings recorded, folder made) on first use of its
    folder, or earlier by the stage itself after its own cheap checks (``stage.start()``)."""

    def __init__(self, run: StageRun):
        self._run = run

    def start(self) -> None:
        if not self._run.started:
            self._run.start()

    def __getattr__(self, name):
        if name in ("dir", "model_dir"):
            self.start()
        return getattr(self._run, name)


def execute(ctx: RunContext, steps: list[Step]) -> dict[str, Output]:
    """Run the plan in order; returns every stage's output by name."""
    outputs: dict[str, Output] = {}
    for step in steps:
        stage = step.stage
        inputs = {r: outputs[r] for r in stage.reads(ctx.cfg) if r in outputs}
        if step.state == "given":
            out = stage.given(ctx)
        elif step.run is None:
            began = time.perf_counter()
            result = (stage.work(ctx, None, inputs) or {}) if stage.trains or is_main_process() else {}
            wait_for_everyone()  # a stage that does not train runs on the main process alone
            out = Output(ctx.run_dir, ctx.run_dir, result)
            STAGE_SECONDS[stage.name] = time.perf_counter() - began
        elif step.run.is_done():  # also sets aside an unfinished attempt made with other settings
            out = _output(step)
        else:
            step.run.begin_clock()
            # a stage that does not train (export) writes shared folders: the main process alone does it
            run_here = stage.trains or is_main_process()
            result = stage.work(ctx, _Starting(step.run), inputs) if run_here else {}
            if not step.run.started:
                step.run.start()
            step.run.finish(result)
            out = _output(step)
        if stage.check is not None:
            stage.check(ctx, out)
        outputs[stage.name] = out
    return outputs


def build(ctx: RunContext, target: str) -> Path:
    """Resolve and run everything ``target`` needs (no plan printed): its artifact folder."""
    steps = make_plan(ctx, (target,))
    check_plan(steps, target, True, "")
    return execute(ctx, steps)[target].model_dir


def stage_run(ctx: RunContext, name: str) -> StageRun:
    """The record of stage ``name`` as this config would build it (its folder, fingerprint, result)."""
    step = next(s for s in make_plan(ctx, (name,)) if s.stage.name == name)
    return step.run
