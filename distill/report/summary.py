"""Know the data before training: per split its size, labels, token lengths with the teacher's
tokenizer (before truncation) and the share cut at ``task.max_len``; plus the trivial baseline.

Needs the task data and the teacher's tokenizer and config only, never weights, so ``python -m distill
inspect`` prints it in seconds. Every command prints it first and keeps it in
``<run>/data_summary.json``; the teacher gate and the report read it from there.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from distill.tasks.baselines import NOISE_RULE, Baseline, noise_margin, score_line, task_baseline, within_noise
from distill.passes.flops import config_encoder_flops

SUMMARY_FILE = "data_summary.json"
HIGH_TRUNCATION = 0.10  # warn when more than this share of train examples is cut at task.max_len
KEEP_QUANTILE = 90  # the suggested max_len keeps this percentile of train examples whole
SPLITS = ("train", "dev", "test")


def _column(dataset, *names: str) -> list | None:
    """The first of ``names`` the dataset has: sentence tasks have text/label, token tasks tokens/tags
    (None: QA data has neither labels nor a single text column)."""
    name = next((n for n in names if n in dataset.column_names), None)
    return None if name is None else dataset[name]


def token_lengths(dataset, tokenizer, max_len: int) -> dict:
    """Untruncated lengths (special tokens included) and, for pairs, which side truncation would cut.
    QA: question + context (longer ones are cut into overlapping windows, nothing is lost)."""
    if "context" in dataset.column_names:
        enc = tokenizer(list(dataset["question"]), list(dataset["context"]), truncation=False, verbose=False)
        return {"lengths": np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)}
    texts = list(_column(dataset, "text", "tokens"))
    kw = {"is_split_into_words": bool(texts) and isinstance(texts[0], list), "verbose": False}  # pre-split words
    if "text_pair" not in dataset.column_names:
        lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=False, **kw)["input_ids"]], dtype=np.int64)
        return {"lengths": lengths}
    pairs = list(dataset["text_pair"])
    first = np.array([len(i) for i in tokenizer(texts, add_special_tokens=False, **kw)["input_ids"]], dtype=np.int64)
    second = np.array([len(i) for i in tokenizer(pairs, add_special_tokens=False, **kw)["input_ids"]], dtype=np.int64)
    lengths = first + second + tokenizer.num_special_tokens_to_add(pair=True)
    long_ids = np.flatnonzero(lengths > max_len)
    if not tokenizer.is_fast:  # only fast tokenizers say which side each token came from
        return {"lengths": lengths}
    cut_text = cut_pair = 0
    if len(long_ids):  # ask the tokenizer itself how truncation=True (longest_first) splits the cut
        enc = tokenizer([texts[i] for i in long_ids], [pairs[i] for i in long_ids], truncation=True,
                        max_length=max_len, **kw)
        for row, i in enumerate(long_ids):
            sides = enc.sequence_ids(row)  # None for special tokens, 0 for text, 1 for text_pair
            cut_text += int(sum(s == 0 for s in sides) < first[i])
            cut_pair += int(sum(s == 1 for s in sides) < second[i])
    return {"lengths": lengths, "cut_text": cut_text, "cut_text_pair": cut_pair}


def label_counts(dataset, label_names: list[str] | None) -> dict:
    labels = _column(dataset, "label", "tags")
    if labels is None:  # QA: answers are spans, not labels
        return {}
    if labels and isinstance(labels[0], (list, tuple)):  # token classification: count tags
        labels = [tag for seq in labels for tag in seq]
    values = np.asarray(labels)
    if label_names is None:
        if len(values) == 0:
            return {}
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max())}
    values = values[values >= 0].astype(int)  # -100: positions a token task leaves unscored
    counts = np.bincount(values, minlength=len(label_names))
    return {name: int(c) for name, c in zip(label_names, counts)}


def suggest_max_len(lengths: np.ndarray, max_positions: int) -> int:
    """The max_len that keeps KEEP_QUANTILE% of examples whole: rounded up to a multiple of 8, capped."""
    keep = int(np.percentile(lengths, KEEP_QUANTILE, method="higher"))
    return int(min(math.ceil(keep / 8) * 8, max_positions))


def flops_factor(teacher_config, lengths: np.ndarray, current: int, proposed: int) -> dict:
    """Encoder FLOPs at ``proposed`` vs ``current``: per padded sequence, and over these real lengths
    (batches are padded to their own longest example, so real lengths are closer to what training pays)."""
    def flops(n: int) -> int:
        return config_encoder_flops(teacher_config, int(n))
    at_max = flops(proposed) / flops(current)
    unique, counts = np.unique(lengths, return_counts=True)
    cost = lambda cap: sum(c * flops(min(u, cap)) for u, c in zip(unique, counts))  # noqa: E731
    return {"at_max_len": round(at_max, 2), "on_data": round(cost(proposed) / cost(current), 2)}


def summarize(data, tokenizer, max_len: int, teacher_config=None) -> dict:
    """The whole summary as a JSON-able dict (lengths include the special tokens)."""
    max_positions = min(getattr(teacher_config, "max_position_embeddings", 512) or 512, 512)
    splits = {}
    train_lengths = None
    for split in SPLITS:
        dataset = getattr(data, split)
        info = {"examples": len(dataset), "labels": label_counts(dataset, data.label_names)}
        if len(dataset):
            tok = token_lengths(dataset, tokenizer, max_len)
            lengths = tok["lengths"]
            info["tokens"] = {f"p{q}": int(np.percentile(lengths, q, method="higher")) for q in (50, 90, 99)}
            info["tokens"]["max"] = int(lengths.max())
            info["truncated"] = int((lengths > max_len).sum())
            info["truncated_share"] = float(np.mean(lengths > max_len))
            if "cut_text" in tok:
                info["cut_text"], info["cut_text_pair"] = tok["cut_text"], tok["cut_text_pair"]
            if split == "train":
                train_lengths = lengths
        splits[split] = info
    summary = {"task": data.name, "metric": data.metric, "max_len": max_len, "pair": data.has_pair,
               "max_positions": max_positions, "splits": splits}
    baseline = task_baseline(data)
    summary["baseline"] = baseline.to_dict() if baseline else None
    share = splits["train"].get("truncated_share", 0.0)
    windows = "context" in data.train.column_names  # QA: long contexts become several windows, nothing is cut
    if train_lengths is not None and share > HIGH_TRUNCATION and not windows:
        proposed = suggest_max_len(train_lengths, max_positions)
        advice = {"share": share, "suggested_max_len": proposed}
        if proposed > max_len and teacher_config is not None:
            advice["flops_factor"] = flops_factor(teacher_config, train_lengths, max_len, proposed)
        summary["truncation_warning"] = advice
    return summary


# ---------------------------------------------------------------------------------------------------
# in a run: computed once, kept in the run folder, printed by every command


def _fingerprint(cfg) -> str:
    from distill.fingerprint import input_digests

    settings = {"task": asdict(cfg.task), "tokenizer": cfg.teacher.name,
                "inputs": input_digests(cfg, "teacher.name", "task.name", "task.data_dir")}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_summary(ctx) -> dict:
    """This run's summary: read from ``<run>/data_summary.json`` when it matches the task settings."""
    path = Path(ctx.run_dir) / SUMMARY_FILE
    fingerprint = _fingerprint(ctx.cfg)
    stored = read_json_on_every_rank(path)
    if stored.get("fingerprint") == fingerprint:
        return stored
    from teachers.load import load_config

    summary = summarize(ctx.data, ctx.tokenizer, ctx.cfg.task.max_len, load_config(ctx.cfg.teacher.name))
    summary["fingerprint"] = fingerprint
    write_json_once(path, summary)
    return summary


def _read_json(path: Path) -> dict:
    """A kept JSON file, or {} when it is missing or was torn by a kill (it is then computed again)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_json_on_every_rank(path: Path) -> dict:
    """``_read_json``, then a barrier: every rank has read the file before the main one may write it, so
    all ranks take the same branch. (A rank that read the file just written skipped write_json_once's
    barrier, and the ranks then hung at their next collective.)"""
    from distill.base.ranks import wait_for_everyone

    stored = _read_json(path)
    wait_for_everyone()
    return stored


def write_json_once(path: Path, data: dict) -> None:
    """Written atomically by the main process only; the other processes wait for it."""
    from distill.base.fsutil import write_text_atomic
    from distill.base.ranks import is_main_process, wait_for_everyone

    if is_main_process():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(path), json.dumps(data, indent=1))
    wait_for_everyone()


def summary_baseline(summary: dict) -> Baseline | None:
    return Baseline.from_dict(summary["baseline"]) if summary.get("baseline") else None


def score_report(ctx, scores: dict) -> str:
    """A stage's dev/test scores, each next to the trivial baseline of this run's task."""
    return score_line(ctx.data, scores, summary_baseline(run_summary(ctx)))


def _pct(share: float) -> str:
    return f"{share:.2%}" if 0 < share < 0.001 else f"{share:.1%}"


def _labels_cell(labels: dict) -> str:
    """Top labels with their share of all counted labels (examples for sentence tasks, tags for token tasks)."""
    if "mean" in labels:
        return f"mean {labels['mean']:.3f} sd {labels['std']:.3f} [{labels['min']:.3g}, {labels['max']:.3g}]"
    total = sum(labels.values())
    ranked = sorted(labels.items(), key=lambda kv: -kv[1])
    cells = [f"{name} {count} ({count / max(total, 1):.1%})" for name, count in ranked[:4]]
    return ", ".join(cells) + (f", +{len(ranked) - 4} more" if len(ranked) > 4 else "")


def _length_cells(info: dict) -> tuple[str, str]:
    """A split's 'p50/p90/p99/max' token lengths and 'share (count)' truncated, or '-' without lengths."""
    tokens = info.get("tokens")
    if not tokens:
        return "-", "-"
    lengths = "/".join(str(tokens[k]) for k in ("p50", "p90", "p99", "max"))
    return lengths, f"{_pct(info['truncated_share'])} ({info['truncated']})"


def _baseline_scores(baseline) -> str:
    return ", ".join(f"{split} {baseline.metric} {baseline.describe(split).rsplit(' ', 1)[-1]}"
                     for split in ("dev", "test"))


def format_summary(summary: dict) -> list[str]:
    """The summary as a small table plus one line per warning (no prefixes)."""
    max_len = summary["max_len"]
    rows = [("split", "examples", f"tokens p50/p90/p99/max", f"cut at {max_len}", "labels")]
    for split, info in summary["splits"].items():
        lengths, cut = _length_cells(info)
        rows.append((split, str(info["examples"]), lengths, cut, _labels_cell(info["labels"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"data: {summary['task']} (metric {summary['metric']}), lengths in teacher tokens before truncation, "
             f"task.max_len={max_len}"]
    lines += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r[:4], widths)))
              + "  " + r[4] for r in rows]
    if summary["pair"]:
        for split, info in summary["splits"].items():
            if info.get("truncated"):
                lines.append(f"  {split}: of {info['truncated']} truncated pairs (longest_first), "
                             f"{info['cut_text']} lose tokens from text and {info['cut_text_pair']} from text_pair")
    baseline = summary_baseline(summary)
    if baseline is None:
        lines.append(f"baseline: none registered for metric {summary['metric']}")
    else:
        scores = _baseline_scores(baseline)
        lines.append(f"baseline: {baseline.rule} scores {scores}" + (f" ({baseline.note})" if baseline.note else ""))
    warning = summary.get("truncation_warning")
    if warning:
        lines.append(truncation_message(summary))
    return lines


def truncation_message(summary: dict) -> str:
    """One line: how much is cut, the max_len that keeps p90 whole, and what it costs in FLOPs."""
    warning = summary["truncation_warning"]
    max_len, proposed = summary["max_len"], warning["suggested_max_len"]
    text = (f"WARNING: {warning['share']:.1%} of train examples are longer than task.max_len={max_len} and are "
            "truncated")
    if proposed <= max_len:
        return text + f" (the teacher's limit is {summary['max_positions']} positions)"
    return text + f"; task.max_len={proposed} {max_len_cost(summary)}"


def max_len_cost(summary: dict) -> str:
    """What the suggested max_len keeps and costs, e.g. 'keeps 90% ... at 2.10x the encoder FLOPs ...'."""
    warning = summary["truncation_warning"]
    text = f"keeps {KEEP_QUANTILE}% of train examples whole"
    factor = warning.get("flops_factor")
    if factor:
        text += (f" at {factor['at_max_len']:.2f}x the encoder FLOPs per full-length sequence "
                 f"({factor['on_data']:.2f}x on this data's real lengths)")
    return text


def report_section(summary: dict, rows: list[dict], test_examples: int) -> list[str]:
    """Markdown for the report: the data table, the baseline, and which artifacts are within noise of it
    (``rows`` are bench rows with name/runtime/score; ``test_examples`` is how many test examples scored them)."""
    max_len = summary["max_len"]
    lines = ["## Data and baselines", "",
             f"Task `{summary['task']}`, lengths in teacher tokens before truncation, task.max_len={max_len}.", "",
             f"| split | examples | tokens p50/p90/p99/max | truncated at {max_len} | labels |", "|---|---|---|---|---|"]
    for split, info in summary["splits"].items():
        lengths, cut = _length_cells(info)
        if info.get("truncated") and "cut_text" in info:
            cut += f"; text cut in {info['cut_text']}, text_pair in {info['cut_text_pair']}"
        lines.append(f"| {split} | {info['examples']} | {lengths} | {cut} | "
                     f"{_labels_cell(info['labels'])} |")
    lines.append("")
    if summary.get("truncation_warning"):
        lines += [truncation_message(summary), ""]
    baseline = summary_baseline(summary)
    if baseline is None:
        return lines + [f"No trivial baseline is registered for metric {summary['metric']}.", ""]
    scores = _baseline_scores(baseline)
    lines.append(f"Baseline: {baseline.rule} scores {scores}." + (f" {baseline.note}." if baseline.note else ""))
    reference = baseline.reference("test")
    margin = noise_margin(baseline.metric, reference, test_examples)
    flagged = [f"{r['name']} ({r['runtime']}, {r['score']:.4f})" for r in rows
               if r.get("score") is not None and within_noise(r["score"], baseline, test_examples)]
    lines += ["", f"Rule: {NOISE_RULE}; here n={test_examples}, so within noise = test {baseline.metric} < "
                  f"{reference + margin:.4f}.", "",
              ("**Within noise of the baseline (learned nothing measurable):** " + "; ".join(flagged)) if flagged
              else "No artifact is within noise of the baseline.", ""]
    return lines


def print_summary(summary: dict, prefix: str = "[data] ") -> None:
    for line in format_summary(summary):
        print(prefix + line)
