"""Inspect: the data summary alone (sizes, labels, token lengths, truncation, trivial baseline); the
tokenizer and model configs only, no weights, nothing trained, nothing recorded."""
from __future__ import annotations

from distill.report.summary import SUMMARY_FILE, print_summary, run_summary
from distill.stages.context import RunContext
from distill.stages.spec import Output, Stage


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    summary = run_summary(ctx)
    print_summary(summary)
    print(f"[data] kept in {ctx.run_dir / SUMMARY_FILE}")
    return summary


STAGE = Stage("inspect", "", "data summary: sizes, labels, token lengths, truncation, trivial baseline",
              lambda ctx, upstream: {}, work, trains=False)
