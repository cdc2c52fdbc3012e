"""Command line: ``python -m distill <command> [--config experiments/x.yaml] [key.sub=value ...]``."""
from __future__ import annotations

import argparse
import os
import sys

import yaml

# command -> (what it does, what it reads, what it writes, whether it trains); `make help` shows the make targets
COMMANDS = {
    "config": ("print the resolved config (defaults + YAML + overrides) and exit",
               "the experiment YAML", "nothing", "no"),
    "plan": ("print what `distill` would do, stage by stage: reused / to run / why (which setting changed)",
             "the run folder's stage records", "nothing", "no"),
    "inspect": ("data summary: sizes, labels, token lengths, truncation, trivial baseline; loads no weights",
                "the task data and the teacher's tokenizer", "<run>/data_summary.json", "no"),
    "teacher": ("fine-tune the teacher on the task; prints dev and test metrics",
                "the pretrained teacher, the task data", "<run>/teacher/", "yes"),
    "general": ("stage 1: general distillation of the student on unlabeled text",
                "the teacher, the general corpus", "<run>/student-general/", "yes (and the teacher if "
                "general.teacher=task)"),
    "task": ("stage 2: task distillation (2a intermediate layers, 2b prediction layer)",
             "the teacher, the general student, the task data",
             "<run>/student-intermediate/, <run>/student-task/", "yes (and every stage before)"),
    "baseline": ("fine-tune the same student without a teacher, for comparison",
                 "the pretrained teacher's layers, the task data", "<run>/student-baseline/", "yes"),
    "prune": ("prune heads and FFN neurons of the distilled student, then recover by distillation",
              "the teacher, student-task/", "<run>/student-pruned/", "yes (and every stage before)"),
    "qat": ("quantization-aware distillation (opt-in: qat.enabled=true): fake-quant INT8 student, QDQ ONNX",
            "the teacher, student-task/ (student-pruned/ if qat.models lists it)",
            "<run>/student-qat/<model>-qat-int8-qdq/, result.json", "yes (and every stage before)"),
    "vocab": ("vocabulary pruning (opt-in: vocab.enabled=true): only the word embeddings of the task's tokens",
              "student-task/ (student-pruned/ if vocab.models lists it), the task's vocab.splits",
              "<run>/student-vocab/<model>/model/, result.json", "yes (and every stage before)"),
    "export": ("ONNX fp32/fused/fp16 and INT8 (dynamic, static QDQ), each checked against PyTorch",
               "teacher/, student-task/, student-pruned/", "<run>/export/<model>-<format>/, export/check.json",
               "no: stops with the plan if a trained model is missing"),
    "bench": ("teacher and every artifact side by side: test metric, latency, throughput, size; writes the report",
              "teacher/, the students, export/", "<run>/report.md, report.html, bench.json, pareto.png",
              "no: stops with the plan if a trained model is missing (builds export/ if absent)"),
    "report": ("write report.md / report.html again from bench.json (measures nothing)",
               "<run>/bench.json", "<run>/report.md, report.html", "no"),
    "distill": ("the whole pipeline: teacher, general, task, prune, export, bench + report (finished stages reused)",
                "everything above", "everything above, timings.json", "yes"),
}

OVERRIDES = """\
overrides:
  Any config key, dotted: teacher.finetune.lr=3e-5 student.preset=tinybert-4l-312 task.name=glue/sst2
  Lists and maps in YAML flow syntax, quoted or not (a value the shell split at its spaces is joined):
    student.init_layer_list=[0, 2, 4]   general.losses={hidden_mse: 1.0, attention_kl: 1.0}
    through make: make distill ARGS="general.losses={hidden_mse: 1.0} run_id=try2"
  An unknown key, a wrong type or an impossible value stops before any weight loads.
"""

EPILOG = OVERRIDES + """
runs:
  Everything lands in <output_dir>/<name>/<run_id>/ (default runs/<name>/default/; <name> is the
  experiment's `name:`, not the data): one folder per stage with model/ (a Hugging Face folder),
  metrics.jsonl and result.json; config.yaml holds the resolved config. Every command prints its plan
  first; re-running the same command reuses finished stages and resumes a killed one.

examples:
  python -m distill plan --config experiments/rotten_tomatoes_minilm.yaml
  python -m distill inspect --config experiments/rotten_tomatoes_minilm.yaml task.max_len=32
  python -m distill distill --config experiments/rotten_tomatoes_minilm.yaml run_id=try2 task_distill.temperature=2
  python -m distill <command> --help      what one command reads, writes and trains
"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The global parser (command list, --help) and one parser per command (its own --help)."""
    parser = argparse.ArgumentParser(
        prog="python -m distill", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Distil a fine-tuned BERT teacher into a small student (TinyBERT / DistilBERT style).")
    commands = parser.add_subparsers(dest="command", metavar="command", title="commands")
    commands.required = True
    subs = {}
    for name, (about, reads, writes, trains) in COMMANDS.items():
        sub = subs[name] = commands.add_parser(
            name, help=about, formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"{about}\n\n  reads:  {reads}\n  writes: {writes}\n  trains: {trains}",
            epilog=OVERRIDES)
        sub.add_argument("--config", "-c", default=None, help="experiment YAML (default: built-in defaults)")
        sub.add_argument("overrides", nargs="*", default=[], help="optional key.sub=value overrides")
    # its own flags (python -m distill choose-student --help); listed here, parsed by its module
    commands.add_parser(CHOOSE, add_help=False, help="time candidate student shapes on this machine and pick the "
                        "largest that meets a speed budget, e.g. --budget 2ms@128; writes a student: section")
    return parser, subs


def parse(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """(command, its arguments); options and overrides may come before or after the command."""
    parser, subs = build_parser()
    names = [i for i, a in enumerate(argv) if a in subs and (i == 0 or argv[i - 1] not in ("--config", "-c"))]
    if not names:
        parser.parse_args(argv)  # --help, or the error that names the commands
        parser.error("give a command")
    i = names[0]
    return argv[i], subs[argv[i]].parse_intermixed_args(argv[:i] + argv[i + 1:])


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def _main_process_speaks() -> None:
    """Under ``accelerate launch`` every rank runs the same command: only rank 0 prints (plan, data summary,
    scores); the others keep stderr, so an error on any rank is still seen."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of this process)


CHOOSE = "choose-student"
CHOOSE_MODULE = "distill.benchmarks.choose"  # a sibling layer of the CLI (.importlinter): run by name, not imported


def _run_choose(argv: list[str]) -> int:
    """``choose-student``: the benchmark module's own command line, in this process."""
    import importlib

    i = next(i for i, a in enumerate(argv) if a == CHOOSE and (i == 0 or argv[i - 1] not in ("--config", "-c")))
    saved = sys.argv
    sys.argv = [f"python -m distill {CHOOSE}", *argv[:i], *argv[i + 1:]]
    try:
        importlib.import_module(CHOOSE_MODULE).main()
    finally:
        sys.argv = saved
    return 0


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == CHOOSE and (i == 0 or argv[i - 1] not in ("--config", "-c")) for i, a in enumerate(argv)):
        _quiet_libraries()
        return _run_choose(argv)
    command, args = parse(argv)
    from distill.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)  # validated: nothing heavy has happened yet
    if command == "config":
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    _quiet_libraries()
    _main_process_speaks()
    from distill.runner import pipeline

    return getattr(pipeline, f"run_{command}")(cfg) or 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """The project's own error classes: their messages name the problem and the fix."""
    from distill.base.errors import UserError
    from distill.config import ConfigError
    from distill.runner.plan import PlanError
    from distill.stages.records import StageConflictError
    from distill.stages.teacher import TeacherGateError

    return UserError, ConfigError, PlanError, StageConflictError, TeacherGateError


def main(argv: list[str] | None = None) -> None:
    try:
        sys.exit(run(argv))
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001  (re-raised below unless it is one of the project's own errors)
        if os.environ.get("DISTILL_TRACEBACK") or not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
