"""The run report: report.md, a self-contained report.html (plots embedded), pareto.png, loss curves."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distill.engine.tracking import read_metrics  # noqa: E402

STAGES = ("teacher", "student-general", "student-intermediate", "student-task", "student-pruned", "student-baseline")


INT8_PAYS = 1.1  # INT8 "pays" when it is at least this many times faster than fp32-fused


def _other_metrics(row: dict) -> str:
    """The row's test metrics other than its score, e.g. 'exact_match 0.1950' for QA ('' when none)."""
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(row.get("metrics", {}).items())
                     if row["score"] is None or abs(v - row["score"]) > 1e-12)


def device_of(row: dict) -> str:
    """Where a bench row ran ('cpu (16 threads)', 'cuda: NVIDIA H200'); rows measured before the bench
    recorded it ran on the CPU, with threads unknown."""
    return row.get("device") or "cpu (threads not recorded)"


def on_gpu(row: dict) -> bool:
    return device_of(row).startswith("cuda")


def _table(rows: list[dict], teacher: dict | None) -> list[str]:
    """One line per artifact. 'speed-up' is against the PyTorch teacher (runtime and distillation together);
    'same runtime' against the teacher exported to that artifact's runtime on the same device (what
    distillation alone buys). The last column is the device the row ran on."""
    others = [_other_metrics(r) for r in rows]
    extra = any(others)  # a column for the task's other test metrics (QA: exact match beside F1)
    head = ("| artifact | runtime | test score | " + ("other test metrics | " if extra else "") + "vs teacher | "
            "p50 ms (b1, s128) | p95 ms | p50 ms (real lengths) | "
            "ex/s (b32, s128) | ex/s (b32, real) | speed-up | same runtime | size MB | params | GFLOPs@128 | device |")
    lines = [head, "|" + "---|" * (15 + extra)]
    teachers = {(r["runtime"], device_of(r)): r for r in rows if r["name"] == "teacher"}
    for r, other in zip(rows, others):
        rel = f"{r['score'] / teacher['score']:.1%}" if teacher and teacher["score"] else ""
        speed = f"{teacher['p50_ms'] / r['p50_ms']:.1f}x" if teacher else ""
        same = teachers.get((r["runtime"], device_of(r)))
        same_speed = f"{same['p50_ms'] / r['p50_ms']:.1f}x" if same and r["name"] != "teacher" else ""
        lines.append(f"| {r['name']} | {r['runtime']} | {r['score']:.4f} | " + (f"{other} | " if extra else "")
                     + f"{rel} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p50_ms_real']:.1f} | {r['throughput_b32']:.0f} | {r['throughput_b32_real']:.0f} | {speed} | "
                     f"{same_speed} | {r['size_mb']:.1f} | {r['params'] / 1e6:.1f}M | {r['flops_128'] / 1e9:.2f} | "
                     f"{device_of(r)} |")
    return lines


def runtime_notes(rows: list[dict]) -> list[str]:
    """Sentences read off the measured rows: what the runtime alone buys, and whether INT8 pays here."""
    by = {(r["name"], r["runtime"]): r for r in rows}
    notes = []
    pt, ort_fp32 = by.get(("teacher", "pytorch-fp32")), by.get(("teacher", "onnxruntime-fp32-fused"))
    if pt and ort_fp32:
        notes.append(f"Runtime alone: the teacher in ONNX Runtime (fp32, fused) takes {ort_fp32['p50_ms']:.1f} ms "
                     f"against {pt['p50_ms']:.1f} ms in PyTorch ({pt['p50_ms'] / ort_fp32['p50_ms']:.1f}x, batch 1); "
                     "the 'same runtime' column is what distillation buys on top of that.")
    pairs = [(name, fused, by[(name, "onnxruntime-int8-dynamic")]) for (name, runtime), fused in by.items()
             if runtime == "onnxruntime-fp32-fused" and (name, "onnxruntime-int8-dynamic") in by]
    if pairs:
        figures = "; ".join(f"{name} {q['p50_ms']:.1f} vs {f['p50_ms']:.1f} ms at batch 1, "
                            f"{q['throughput_b32']:.0f} vs {f['throughput_b32']:.0f} ex/s at batch 32"
                            for name, f, q in pairs)
        pays = [name for name, f, q in pairs if f["p50_ms"] / q["p50_ms"] >= INT8_PAYS
                or q["throughput_b32"] / f["throughput_b32"] >= INT8_PAYS]
        if pays:
            notes.append(f"INT8 dynamic pays on this machine for {', '.join(pays)} (at least {INT8_PAYS:g}x faster "
                         f"than fp32 fused); INT8 vs fp32 fused: {figures}.")
        else:
            notes.append(f"INT8 dynamic does not pay on this machine (less than {INT8_PAYS:g}x faster than fp32 fused "
                         f"for every model; CPUs without VNNI/AMX gain little from INT8 matmuls): {figures}. "
                         "Keep it for its size, or for a CPU or GPU with INT8 units.")
    return notes


MARKERS = {False: "o", True: "s"}  # pareto plot: CPU rows are circles, GPU rows squares


def pareto_plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    biggest = max(r["size_mb"] for r in rows)
    for r in rows:
        ax.scatter(r["p50_ms"], r["score"], s=40 + 900 * r["size_mb"] / biggest, alpha=0.6, marker=MARKERS[on_gpu(r)])
        ax.annotate(f"{r['name']} ({r['runtime'].replace('onnxruntime-', 'ort ')})", (r["p50_ms"], r["score"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50, batch 1, seq 128 (ms, log scale)")
    ax.set_ylabel(f"test {rows[0]['metric']}")
    gpu = any(on_gpu(r) for r in rows)
    ax.set_title("accuracy vs latency (marker area = size on disk" + ("; circles CPU, squares GPU)" if gpu else ")"))
    if gpu:
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], marker=MARKERS[g], ls="", color="grey", label=label)
                           for g, label in ((False, "CPU"), (True, "GPU"))], fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_plot(run_dir: Path, path: Path) -> bool:
    curves = {s: read_metrics(run_dir / s / "metrics.jsonl") for s in STAGES}
    curves = {s: [r for r in rows if "loss" in r] for s, rows in curves.items()}
    curves = {s: rows for s, rows in curves.items() if rows}
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], curves.items()):
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="total")
        terms = sorted({k for r in rows for k in r} - {"stage", "step", "time", "loss", "lr", "examples_per_s", "epoch"}
                       - {k for r in rows for k in r if k.startswith("dev_")})
        for term in terms:
            ax.plot([r["step"] for r in rows if term in r], [r[term] for r in rows if term in r], label=term, lw=0.8)
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _img(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" style="max-width:100%">'


def data_section(run_dir: Path, rows: list[dict], config_yaml: str) -> list[str]:
    """Markdown lines of the data summary and baselines (empty when the run has no data_summary.json)."""
    import yaml

    from distill.report.summary import SUMMARY_FILE, report_section

    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return []
    summary = json.loads(path.read_text())
    cap = (yaml.safe_load(config_yaml) or {}).get("bench", {}).get("test_examples", 0)
    n = summary["splits"]["test"]["examples"]
    return report_section(summary, rows, min(n, cap) if cap else n)


def _read_result(path: Path) -> dict:
    """A stage's result.json, or {} when the stage was not run (or its file is unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


TREND_STAGES = (("teacher", "Teacher"), ("student-task", "Student"), ("student-pruned", "Pruned student"),
                ("student-qat/student-task", "QAT student"), ("student-qat/student-pruned", "QAT pruned student"))


def trend_notes(run_dir: Path) -> list[str]:
    """A sentence for each trained model (teacher, student, pruned student) whose dev score was still rising
    when its training stopped (<stage>/trend.json, written by the stage's check)."""
    notes = []
    for folder, who in TREND_STAGES:
        trend = _read_result(Path(run_dir) / folder / "trend.json")
        if not trend.get("rising"):
            continue
        history = ", ".join(f"{v:.4f} @ step {s}" for s, v in zip(trend["steps"], trend["scores"]))
        fix = trend.get("fix") or "teacher.finetune.epochs or max_steps"  # trend.json written before `fix` existed
        then = " before distilling" if folder == "teacher" else ""
        notes.append(f"{who} may be undertrained: dev {trend.get('metric', 'score')} rose from "
                     f"{trend['scores'][-2]:.4f} to {trend['scores'][-1]:.4f} over its last evaluations ({history}); "
                     f"its best score is its last. Train it longer ({fix}, with a new run_id){then}.")
    return notes


def baseline_section(run_dir: Path) -> list[str]:
    """The distilled student beside the same student trained without a teacher (``make baseline``), when
    both finished; a sentence when the baseline wins."""
    student = _read_result(Path(run_dir) / "student-task" / "result.json").get("test")
    baseline = _read_result(Path(run_dir) / "student-baseline" / "result.json").get("test")
    if not baseline:
        return []
    lines = ["## Distilled student vs no teacher", "", "| student | test score |", "|---|---|",
             f"| no teacher (student-baseline) | {baseline['score']:.4f} |"]
    if student:
        lines.append(f"| distilled (student-task) | {student['score']:.4f} |")
    lines.append("")
    if student and baseline["score"] > student["score"]:
        lines += [f"The same student without a teacher scored higher: {baseline['score']:.4f} against "
                  f"{student['score']:.4f} for the distilled one (test). The teacher may be undertrained or the "
                  "distillation settings off (temperature, loss weights, epochs).", ""]
    return lines


def _ptq_refused(run_dir: Path, name: str) -> str | None:
    """'refused (dev drop 3.40 points)' when the export check refused the model's post-training QDQ."""
    entry = _read_result(Path(run_dir) / "export" / "check.json").get(f"{name}-int8-qdq", {})
    if not entry.get("refused"):
        return None
    drop = entry.get("check", {}).get("metric_drop")
    return f"refused (dev drop {drop * 100:.2f} points)" if isinstance(drop, (int, float)) else "refused"


def qat_section(run_dir: Path, rows: list[dict]) -> list[str]:
    """Quantization-aware QDQ INT8 beside post-training QDQ INT8 and fp32 (test scores), when the opt-in qat
    stage finished (student-qat/result.json); the post-training row is the bench's onnxruntime-int8-qdq, or
    the export check's refusal (with its dev drop) when that format was refused."""
    models = _read_result(Path(run_dir) / "student-qat" / "result.json").get("models", {})
    if not models:
        return []
    ptq = {r["name"]: r.get("score") for r in rows if r.get("runtime") == "onnxruntime-int8-qdq"}
    lines = ["## Static INT8 (QDQ): post-training vs quantization-aware", "",
             "| model | fp32 (PyTorch) | post-training QDQ | quantization-aware QDQ | QAT vs fp32 | QAT steps |",
             "|---|---|---|---|---|---|"]
    for name, e in models.items():
        fp32, qat = e.get("fp32", {}).get("test", {}).get("score"), e["qdq"]["test"]["score"]
        post = ptq.get(name)
        cells = [f"{v:.4f}" if isinstance(v, (int, float)) else "-" for v in (fp32, post, qat)]
        if post is None:
            cells[1] = _ptq_refused(run_dir, name) or "-"
        gap = f"{(qat - fp32) * 100:+.2f} points" if isinstance(fp32, (int, float)) else "-"
        steps = e.get("steps", "-")
        if e.get("kept") == "calibrated":  # training never beat calibration alone on dev: no QAT step exported
            steps = f"0 (calibrated state kept; {steps} trained)"
        lines.append(f"| {name} | {' | '.join(cells)} | {gap} | {steps} |")
    return lines + ["", "Test scores; both QDQ rows run in ONNX Runtime (CPU).", ""]


def vocab_section(run_dir: Path) -> list[str]:
    """The vocabulary-pruned students beside the ones they came from (student-vocab/result.json): tokens,
    parameters, INT8 dynamic ONNX size, the test split's out-of-vocabulary rate and the test score."""
    models = _read_result(Path(run_dir) / "student-vocab" / "result.json").get("models", {})
    if not models:
        return []
    lines = ["## Vocabulary pruning", "",
             "| model | tokens | parameters | INT8 dynamic ONNX | test OOV | test score | dev rows identical |",
             "|---|---|---|---|---|---|---|"]
    for name, e in models.items():
        p, before, after = e["params"], e["size_before"], e["size_after"]
        lines.append(f"| {name} | {e['vocab_before']:,} -> {e['vocab_after']:,} | {p['before'] / 1e6:.2f}M -> "
                     f"{p['after'] / 1e6:.2f}M | {before['onnx_int8_dynamic_mb']:.1f} -> "
                     f"{after['onnx_int8_dynamic_mb']:.1f} MB | {e['test_oov_rate']:.2%} | "
                     f"{e['before']['test']['score']:.4f} -> {e['after']['test']['score']:.4f} | "
                     f"{e['dev_rows_identical']:,} / {e['dev_rows']:,} |")
    warnings = [f"Warning: {e['warning']}; keep more tokens with vocab.extra_tokens." for e in models.values()
                if e.get("warning")]
    splits = "+".join(next(iter(models.values())).get("splits", ["train"]))
    return lines + ["", f"Kept: the tokens of the task's {splits} texts and the special tokens (plus "
                    "vocab.extra_tokens general-corpus tokens when set). 'dev rows identical': dev rows (QA: windows) whose "
                    "tokens were all kept, on which the pruned model's logits matched the unpruned one's.", "",
                    *[line for w in warnings for line in (w, "")]]


def _markdown_html(lines: list[str]) -> str:
    """Headings, pipe tables and paragraphs of a markdown section as HTML."""
    out, table = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>"
                                              for c in line.strip("|").split("|")) + "</tr>")
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line:
            out.append(f"<p>{html.escape(line.replace('**', '').replace('`', ''))}</p>")
    return "".join(out)


NOTES_FILE = "report_notes.json"  # the bench's notes under the table (how latency was measured, ...)


def left_out_lines(left_out: list[dict], columns: int) -> list[str]:
    """Table rows for artifacts without figures: refused by the export check (with the measured drop), or
    failed in the bench; every other cell blank."""
    return [f"| {r['name']} | {r['runtime']} | {r['status']}: {r['reason']} |" + " |" * (columns - 3)
            for r in left_out]


def write_report(run_dir: Path, rows: list[dict], config_yaml: str, extra: list[str],
                 left_out: list[dict] | None = None) -> tuple[Path, Path]:
    """report.md, report.html and bench.json. ``left_out``: rows refused by the export or failed in the bench
    (``name``, ``runtime``, ``status``, ``reason``), shown in the table and kept in
    left_out.json beside bench.json; the report is written whatever they are."""
    run_dir = Path(run_dir)
    left_out = left_out or []
    data = data_section(run_dir, rows, config_yaml)
    teacher = next((r for r in rows if r["name"] == "teacher" and r["runtime"] == "pytorch-fp32"), None)
    pareto = run_dir / "pareto.png"
    has_pareto = bool(rows)
    if has_pareto:
        pareto_plot(rows, pareto)
    losses = run_dir / "losses.png"
    has_losses = loss_plot(run_dir, losses)
    table = _table(rows, teacher)
    table += left_out_lines(left_out, table[1].count("|") - 1)
    notes = list(extra)  # as given: the runtime and teacher notes are read off the run again each time
    extra = [*runtime_notes(rows), *trend_notes(run_dir), *extra]
    versus = baseline_section(run_dir) + qat_section(run_dir, rows) + vocab_section(run_dir)
    if left_out:
        extra.append("Left out: " + "; ".join(f"{r['name']} {r['runtime']} ({r['status']})" for r in left_out)
                     + ". A refused format failed its check against PyTorch on the dev set (figures in export/check.json;"
                     " for -vocab rows in student-vocab/check.json);"
                     " the other formats were kept.")
    md = ["# Distillation report", "", f"Run: `{run_dir}`", "", "## Artifacts (measured side by side in one process)",
          "", *table, "", *extra, ""] + (["![pareto](pareto.png)", ""] if has_pareto else [])
    if has_losses:
        md += ["![losses](losses.png)", ""]
    md += versus + data + ["## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    body = io.StringIO()
    body.write("<!doctype html><html><head><meta charset='utf-8'><title>Distillation report</title>"
               "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
               "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
               "td:first-child,td:nth-child(2){text-align:left}</style></head><body>")
    body.write(f"<h1>Distillation report</h1><p>Run: <code>{html.escape(str(run_dir))}</code></p>")
    body.write("<h2>Artifacts</h2><table>")
    for i, line in enumerate(table):
        if i == 1:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        body.write("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
    body.write("</table>")
    for line in extra:
        body.write(f"<p>{html.escape(line)}</p>")
    if has_pareto:
        body.write("<h2>Accuracy vs latency</h2>" + _img(pareto))
    if has_losses:
        body.write("<h2>Loss curves</h2>" + _img(losses))
    body.write(_markdown_html(versus + data))
    body.write(f"<h2>Resolved config</h2><pre>{html.escape(config_yaml)}</pre></body></html>")
    (run_dir / "report.html").write_text(body.getvalue())
    (run_dir / "bench.json").write_text(json.dumps(rows, indent=1))
    (run_dir / "left_out.json").write_text(json.dumps(left_out, indent=1))
    (run_dir / NOTES_FILE).write_text(json.dumps(notes, indent=1))  # what `report` needs to write this again
    return run_dir / "report.md", run_dir / "report.html"
