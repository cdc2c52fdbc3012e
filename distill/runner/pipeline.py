"""The CLI's commands: each resolves its stages (distill/runner/graph.py), prints the plan, checks what
it can before any weight loads (preflight, data summary), then runs the plan."""
from __future__ import annotations

import json
import time

from distill.base.fsutil import write_text_atomic
from distill.base.ranks import is_main_process
from distill.config import ExperimentConfig
from distill.passes.export import refused_formats
from distill.runner.graph import COMMANDS, STAGES
from distill.runner.plan import PlanError, Step, check_plan, execute, make_plan, print_plan
from distill.runner.preflight import preflight
from distill.stages.context import RunContext
from distill.stages.records import STAGE_SECONDS

REFUSED_EXIT = 3  # the run finished with its report, but some formats were refused by their checks
STAGE_LABELS = {"teacher": "teacher", "student-general": "general", "student-intermediate": "2a",
                "student-task": "2b", "student-pruned": "prune + recovery", "export": "export", "bench": "bench"}
SWITCHES = {"general": "general.enabled", "prune": "prune.enabled", "export": "export.enabled"}


def _hint(cfg: ExperimentConfig) -> str:
    return f" EXP={cfg.source}" if getattr(cfg, "source", "") else ""


def plan_for(cfg: ExperimentConfig, command: str) -> tuple[RunContext, list[Step]]:
    """The context and the plan of ``command``, printed, with every check that needs no weights done."""
    targets, may_train = COMMANDS[command]
    for target in targets:
        if len(targets) == 1 and not STAGES[target].enabled(cfg):
            raise PlanError(f"`{command}` runs the {target} stage, but {SWITCHES[target]} is false in this "
                            f"config; set {SWITCHES[target]}=true")
    ctx = RunContext(cfg)
    steps = make_plan(ctx, targets)
    print_plan(ctx, steps, command)
    check_plan(steps, command, may_train, _hint(cfg))
    return ctx, steps


def _prepare(cfg: ExperimentConfig, command: str) -> tuple[RunContext, list[Step]]:
    from distill.report.summary import print_summary, run_summary

    ctx, steps = plan_for(cfg, command)
    general = next((s for s in steps if s.stage.name == "general"), None)
    preflight(cfg, ctx, general_will_run=general is not None and general.will_run)
    print_summary(run_summary(ctx))  # know the data before anything trains
    return ctx, steps


def run_plan(cfg: ExperimentConfig) -> int:
    """Print what `distill` would do (reused / to run / why) and nothing else."""
    plan_for(cfg, "distill")
    return 0


def run_inspect(cfg: ExperimentConfig) -> int:
    """The data summary alone: tokenizer and configs only, no weights, no preflight of the stages."""
    STAGES["inspect"].work(RunContext(cfg), None, {})
    return 0


def _run(cfg: ExperimentConfig, command: str) -> tuple[RunContext, dict]:
    ctx, steps = _prepare(cfg, command)
    return ctx, execute(ctx, steps)


def run_teacher(cfg: ExperimentConfig) -> int:
    _run(cfg, "teacher")
    return 0


def run_general(cfg: ExperimentConfig) -> int:
    _, out = _run(cfg, "general")
    print(f"[general] student -> {out['general'].model_dir}")
    return 0


def run_task(cfg: ExperimentConfig) -> int:
    _, out = _run(cfg, "task")
    print(f"[task] student -> {out['2b'].model_dir}")
    return 0


def run_baseline(cfg: ExperimentConfig) -> int:
    _run(cfg, "baseline")
    return 0


def run_prune(cfg: ExperimentConfig) -> int:
    _, out = _run(cfg, "prune")
    print(f"[prune] pruned student -> {out['prune'].model_dir}")
    return 0


def run_qat(cfg: ExperimentConfig) -> int:
    _, out = _run(cfg, "qat")
    print(f"[qat] QDQ INT8 students -> {out['qat'].model_dir}")
    return 0


def run_vocab(cfg: ExperimentConfig) -> int:
    _, out = _run(cfg, "vocab")
    print(f"[vocab] vocabulary-pruned students -> {out['vocab'].model_dir}")
    return 0


def run_export(cfg: ExperimentConfig) -> int:
    ctx, out = _run(cfg, "export")
    print(f"[export] artifacts -> {out['export'].model_dir}")
    return refusal_status(ctx, "export")


def run_bench(cfg: ExperimentConfig) -> int:
    ctx, _ = _run(cfg, "bench")
    return refusal_status(ctx, "bench")


def run_report(cfg: ExperimentConfig) -> int:
    """report.md / report.html again from the bench's measurements (bench.json), measuring nothing."""
    import yaml

    from distill.config import to_dict
    from distill.report.report import write_report

    run_dir = cfg.run_dir
    bench = run_dir / "bench.json"
    if not bench.is_file():
        raise PlanError(f"`report` rebuilds the report from {bench}, which does not exist: run `make bench{_hint(cfg)}` "
                        "(or `make distill`) first")
    from distill.report.report import NOTES_FILE

    def read(name: str, default):
        return json.loads((run_dir / name).read_text()) if (run_dir / name).is_file() else default

    # the config the run was built with (config.yaml), not whatever EXP/ARGS this command was given
    config = run_dir / "config.yaml"
    config_yaml = config.read_text() if config.is_file() else yaml.safe_dump(to_dict(cfg), sort_keys=False)
    md, page = write_report(run_dir, read("bench.json", []), config_yaml, read(NOTES_FILE, []),
                            read("left_out.json", []))
    print(f"[report] {md} and {page}")
    return 0


def run_distill(cfg: ExperimentConfig) -> int:
    """The whole pipeline in order; finished stages are reused."""
    STAGE_SECONDS.clear()  # this command's stages only
    began = time.perf_counter()
    ctx, out = _run(cfg, "distill")
    total = time.perf_counter() - began
    print(f"[distill] student: {out['2b'].model_dir}")
    if "prune" in out:
        print(f"[distill] pruned student: {out['prune'].model_dir}")
    if "export" in out:
        print(f"[distill] ONNX artifacts: {out['export'].model_dir}")
    ran = dict(STAGE_SECONDS)
    if is_main_process():
        print(describe_times(ran, total))
        # the whole pipeline's stage times: this command's, and for reused stages the seconds they took when built
        times = {name: ran.get(o.dir.name, o.result.get("seconds")) for name, o in out.items()
                 if name != "bench" and o.dir != ctx.run_dir and o.dir.parent == ctx.run_dir}
        times = {out[name].dir.name: v for name, v in times.items() if v is not None}
        reused = sorted(k for k in times if k not in ran)
        # total: this command's wall time; with reused stages, the whole pipeline's (their seconds + this bench)
        whole = sum(times.values()) + ran.get("bench", 0.0) if reused else total
        timings = {"total": round(whole, 1),
                   **{k: round(v, 1) for k, v in times.items()}, "bench": round(ran.get("bench", 0.0), 1)}
        if reused:
            timings["reused"] = reused  # their seconds are from the command that built them
            timings["this_command"] = round(total, 1)
        write_text_atomic(ctx.run_dir / "timings.json", json.dumps(timings))
    return refusal_status(ctx, "distill")


def refusal_status(ctx: RunContext, command: str) -> int:
    """The last line and exit status of a command that exported: 0, or REFUSED_EXIT naming what was left out."""
    refused = refused_formats(ctx.run_dir / "export") if ctx.cfg.export.enabled else {}
    if ctx.cfg.vocab.enabled:  # the vocabulary-pruned students' own ONNX formats (student-vocab/check.json)
        refused.update(refused_formats(ctx.run_dir / "student-vocab"))
    if not refused:
        return 0
    print(f"[{command}] finished, but {len(refused)} format(s) refused and left out: "
          + "; ".join(f"{key} ({reason})" for key, reason in refused.items()), flush=True)
    return REFUSED_EXIT


def describe_times(times: dict[str, float], total: float) -> str:
    """One line: this command's wall time, per stage that ran (reused ones cost nothing), and the ratio to
    the teacher stage when it ran here."""
    parts = [f"{STAGE_LABELS.get(name, name)} {seconds / 60:.1f}" for name, seconds in times.items()]
    other = total - sum(times.values())
    line = f"[distill] wall time {total / 60:.1f} min: " + ", ".join(parts + [f"other {other / 60:.1f}"])
    if times.get("teacher"):
        line += f" (minutes); {total / times['teacher']:.1f}x the teacher stage"
    else:
        line += " (minutes); no teacher stage ran in this command"
    return line
