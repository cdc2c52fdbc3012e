"""Command line: ``python -m distill <command> [--config experiments/x.yaml] [key.sub=value ...]``."""
from __future__ import annotations

import argparse
import os
import sys

import yaml

COMMANDS = {
    "config": "print the resolved config (defaults + YAML + overrides) and exit",
    "inspect": "data summary alone (sizes, labels, token lengths, truncation, trivial baseline); loads no weights",
    "teacher": "fine-tune the teacher on the task; prints dev and test metrics",
    "general": "stage 1: general distillation of the student on unlabeled text",
    "task": "stage 2: task distillation (2a intermediate layers, 2b prediction layer)",
    "baseline": "fine-tune the same student without a teacher, for comparison",
    "prune": "prune heads and FFN neurons of the distilled student, then recover by distillation",
    "export": "ONNX fp32/fused/fp16 and INT8 (dynamic, static QDQ), each checked against PyTorch",
    "bench": "teacher and every artifact side by side: test metric, latency, throughput, size; writes the report",
    "distill": "the whole pipeline: teacher, general, task, prune, export, bench + report (finished stages reused)",
}

EPILOG = """\
overrides:
  Any config key, dotted: teacher.finetune.lr=3e-5 student.preset=tinybert-4l-312 task.name=glue/sst2
  Lists and maps in YAML syntax: student.init_layer_list=[0,2,4] general.losses={hidden_mse: 1.0}
  An unknown key, a wrong type or an impossible value stops before any weight loads.

runs:
  Everything lands in <output_dir>/<name>/<run_id>/ (default runs/<name>/default/): one folder per stage
  with model/ (a Hugging Face folder), metrics.jsonl and result.json; config.yaml holds the resolved
  config. Re-running the same command reuses finished stages and resumes a killed one.

examples:
  python -m distill inspect --config experiments/rotten_tomatoes_minilm.yaml task.max_len=32
  python -m distill teacher --config experiments/rotten_tomatoes_minilm.yaml
  python -m distill distill --config experiments/rotten_tomatoes_minilm.yaml run_id=try2 task_distill.temperature=2
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Distil a fine-tuned BERT teacher into a small student (TinyBERT / DistilBERT style).")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command",
                        help="; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    parser.add_argument("--config", "-c", default=None, help="experiment YAML (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    from distill.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)  # validated: nothing heavy has happened yet
    if args.command == "config":
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    _quiet_libraries()
    from distill.runner import pipeline

    return getattr(pipeline, f"run_{args.command}")(cfg) or 0


def main(argv: list[str] | None = None) -> None:
    from distill.config import ConfigError

    try:
        sys.exit(run(argv))
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        if os.environ.get("DISTILL_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
