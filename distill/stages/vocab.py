"""Vocabulary pruning (opt-in, vocab.enabled): the distilled (and/or pruned) student keeps only the
word embeddings of the tokens in the task's texts (vocab.splits, train only by default) and the special
tokens; its tokenizer files are rewritten to match. Checked here: identical logits to the unpruned student
on every dev example whose tokens are all kept, the test out-of-vocabulary rate, dev/test scores before and
after, parameters and sizes (safetensors, fp32 ONNX, INT8 dynamic ONNX) before and after."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import students  # noqa: F401  (registers PrunedBert with the Auto classes)
from distill.base.errors import UserError
from distill.fingerprint import input_digests
from distill.engine.batching import to_model_inputs
from distill.engine.evaluation import evaluate
from distill.passes import onnx as onnx_export
from distill.passes import vocab as vocab_pass
from distill.passes.quiet import quiet_library_output
from distill.passes.export import export_model, write_checks
from distill.stages.common import batches_and_labels, load_finetuned
from distill.stages.context import RunContext, save_hf_folder
from distill.stages.spec import Output, Stage

SOURCES = {"student-task": "2b", "student-pruned": "prune"}  # vocab.models -> the stage it reads
ATOL = 1e-5


def _reads(cfg) -> tuple[str, ...]:
    return tuple(SOURCES[m] for m in cfg.vocab.models)


def settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    cfg = ctx.cfg
    out = {"upstream": [upstream[n] for n in _reads(cfg)], "vocab": cfg.vocab, "max_len": cfg.task.max_len}
    # not export.check_examples / max_metric_drop: the ONNX files came later, and folders finished before
    # them stay reusable (their bench rows are PyTorch only); a new check setting re-checks nothing here
    if cfg.vocab.extra_tokens:
        out["corpus"] = cfg.general.corpus
        out["text_column"] = cfg.general.text_column
        out["inputs"] = input_digests(cfg, "general.corpus")
    return out


def _extra(ctx: RunContext, used: set[int]) -> list[int]:
    """vocab.extra_tokens most frequent general-corpus tokens the task's splits did not already bring."""
    from itertools import islice

    from distill.data.corpus import iter_documents

    v, g = ctx.cfg.vocab, ctx.cfg.general
    if not v.extra_tokens:
        return []
    docs = islice(iter_documents(g.corpus, None, g.text_column, streaming=True, build_cache=False), v.extra_documents)
    return vocab_pass.top_tokens(docs, ctx.tokenizer, v.extra_tokens, used)


def used_ids(tokenized, splits) -> set[int]:
    """Every token id in the tokenized rows of the given splits (the task kind's own inputs: sentence
    pairs, NER words, QA question + context windows)."""
    used: set[int] = set()
    for split in splits:
        for row in tokenized[split]["input_ids"]:
            used.update(int(i) for i in row)
    return used


def oov_rate(tokenized_split, vmap: vocab_pass.VocabMap, unk_old: int) -> tuple[float, int, int]:
    """Share of a split's tokens (not [UNK] already) that have no row in the pruned vocabulary."""
    kept, lost, total = set(vmap.kept), 0, 0
    for row in tokenized_split["input_ids"]:
        for i in row:
            if int(i) != unk_old:
                total += 1
                lost += int(i) not in kept
    return (lost / total if total else 0.0), lost, total


def _outputs(model, inputs, kind) -> list[torch.Tensor]:
    out = model(**inputs)
    return [getattr(out, n) for n in kind.output_names]


def check_identical(before, after, loader, lookup: torch.Tensor, unk_old: int, unk_new: int,
                    kind) -> tuple[int, int, float]:
    """Run both models on every dev row whose real tokens are all kept (the pruned one on the remapped ids);
    returns (rows compared, rows in dev, largest |difference|)."""
    compared, rows, worst = 0, 0, 0.0
    with torch.no_grad():
        for batch in loader:
            inputs = to_model_inputs(batch)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            new_ids = lookup[ids]
            real = mask.bool() if mask.dim() == 2 else torch.ones_like(ids, dtype=torch.bool)
            full = ~((new_ids == unk_new) & (ids != unk_old) & real).any(1)  # no real token lost
            rows += ids.shape[0]
            if not full.any():
                continue
            sel = {k: v[full] for k, v in inputs.items()}
            a = _outputs(before, sel, kind)
            b = _outputs(after, {**sel, "input_ids": new_ids[full]}, kind)
            for x, y in zip(a, b):
                worst = max(worst, float((x - y).abs().max()))
            compared += int(full.sum())
    return compared, rows, worst


def _sizes(model, folder: Path, example: dict, kind) -> dict:
    """Bytes of the safetensors weights, the fp32 ONNX and its INT8 dynamic quantization."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_export.export_fp32(model, tmp / "fp32.onnx", example, kind)
        onnx_export.quantize_int8_dynamic(tmp / "fp32.onnx", tmp / "int8.onnx")
        return {"safetensors_mb": (folder / "model.safetensors").stat().st_size / 2**20,
                "onnx_fp32_mb": (tmp / "fp32.onnx").stat().st_size / 2**20,
                "onnx_int8_dynamic_mb": (tmp / "int8.onnx").stat().st_size / 2**20}


# a dev score that falls by more than this (score units: 0.01 = 1 point) is worth a warning: too many of the
# evaluation texts' tokens have no row left (CoNLL-2003 train-only lost 1.85 dev / 2.24 test entity-F1 points)
WARN_DROP = 0.01


def drop_warning(name: str, metric: str, before: float, after: float, dev_oov: float, extra_tokens: int) -> str:
    """The warning (one line + its fix) when the vocabulary-pruned student's dev score fell by more than
    WARN_DROP; '' otherwise."""
    if before - after <= WARN_DROP:
        return ""
    more = max(10000, extra_tokens * 2)
    return (f"[vocab] WARNING {name}: dev {metric} fell {(before - after) * 100:.2f} points ({before:.4f} -> "
            f"{after:.4f}); {dev_oov:.2%} of dev tokens have no row left\n"
            f"  fix: keep frequent general-corpus tokens too: vocab.extra_tokens={more} (now {extra_tokens}), "
            "into a fresh student-vocab/ (or a new run_id)")


def _scores(ctx: RunContext, model, tokenizer) -> dict:
    return {split: evaluate(model, ctx.own_loader(tokenizer, split, 128), ctx.data, getattr(ctx.data, split))
            for split in ("dev", "test")}


EXPORT_FORMATS = ["fp32", "int8-dynamic"]  # the CPU pair; the export stage makes the other formats of the unpruned


def export_checked(ctx: RunContext, stage_dir: Path, name: str, folder: Path, tokenizer) -> dict:
    """The vocabulary-pruned student's fp32 and INT8 dynamic ONNX, built and checked by the export pass like
    any student's, on dev rows tokenized with its own tokenizer: <stage>/<name>-vocab-<format>/."""
    e = ctx.cfg.export
    batches, labels = batches_and_labels(ctx.own_loader(tokenizer, "dev", 64, e.check_examples), ctx.data.kind)
    return export_model(folder, stage_dir, f"{name}-vocab", EXPORT_FORMATS, batches, labels, ctx.data.metric, [],
                        ctx.cfg.task.max_len, False, e.max_metric_drop, kind=ctx.data.kind,
                        label_names=ctx.data.label_names, examples=ctx.data.dev)


def _one(ctx: RunContext, stage, name: str, source: Output) -> dict:
    started, v, kind, tok = time.perf_counter(), ctx.cfg.vocab, ctx.data.kind, ctx.tokenizer
    before = load_finetuned(source.model_dir).cpu().eval()
    used = used_ids(ctx.tokenized, v.splits)
    extra = _extra(ctx, used)
    vmap = vocab_pass.build_map(tok, used | set(extra))
    after = vocab_pass.prune_model(load_finetuned(source.model_dir).cpu().eval(), vmap)
    new_tok = vocab_pass.prune_tokenizer(tok, vmap)
    folder = stage.dir / name / "model"
    save_hf_folder(after, new_tok, folder)
    after = load_finetuned(folder).cpu().eval()  # what a user loads, not the object in memory
    unk_new = vmap.old_to_new[tok.unk_token_id]
    lookup = vmap.lookup(unk_new)
    compared, rows, worst = check_identical(before, after, ctx.loader("dev", 64), lookup, tok.unk_token_id, unk_new,
                                            kind)
    if compared == 0:
        raise UserError(f"vocab {name}: no dev example has all its tokens kept, nothing to check the pruned "
                        f"student against; add dev to vocab.splits or check the task's texts")
    if worst > ATOL:
        raise UserError(f"vocab {name}: the pruned student's logits differ from the unpruned one's by {worst:.2e} "
                        f"(> {ATOL}) on dev examples whose tokens are all kept: the token id map is wrong")
    oov, lost, total = oov_rate(ctx.tokenized["test"], vmap, tok.unk_token_id)
    dev_oov = oov_rate(ctx.tokenized["dev"], vmap, tok.unk_token_id)[0]
    scores = _scores(ctx, after, new_tok)
    old_scores = {s: source.result[s] for s in ("dev", "test") if s in source.result} or _scores(ctx, before, tok)
    example = {k: v[:1] for k, v in to_model_inputs(next(iter(ctx.loader("dev", 4)))).items()}
    exported = export_checked(ctx, stage.dir, name, folder, new_tok)
    with quiet_library_output(log=stage.dir / "library-warnings.log"):  # both sized the same way (scratch exports)
        size_before = _sizes(before, source.model_dir, example, kind)
        size_after = _sizes(after, folder, {**example, "input_ids": lookup[example["input_ids"]]}, kind)
    params = {"before": sum(p.numel() for p in before.parameters()),
              "after": sum(p.numel() for p in after.parameters()),
              "embeddings_before": vocab_pass.embedding_params(before),
              "embeddings_after": vocab_pass.embedding_params(after)}
    entry = {"folder": str(folder), "splits": list(v.splits), "extra_tokens_added": len(extra),
             "vocab_before": vmap.old_size,
             "vocab_after": len(vmap.kept), "params": params, "size_before": size_before, "size_after": size_after,
             "dev_rows_identical": compared, "dev_rows": rows, "max_abs_diff": worst,
             "test_oov_rate": oov, "test_oov_tokens": lost, "test_tokens": total, "dev_oov_rate": dev_oov,
             "before": {s: old_scores[s] for s in old_scores}, "after": scores, "export": exported,
             "seconds": round(time.perf_counter() - started, 1)}
    m = ctx.data.metric
    print(f"[vocab] {name}: {vmap.old_size} -> {len(vmap.kept)} tokens (from {'+'.join(v.splits)}"
          f"{f' + {len(extra)} general-corpus tokens' if extra else ''}), params "
          f"{params['before'] / 1e6:.2f}M -> {params['after'] / 1e6:.2f}M; INT8 ONNX "
          f"{size_before['onnx_int8_dynamic_mb']:.1f} -> {size_after['onnx_int8_dynamic_mb']:.1f} MB")
    print(f"[vocab] {name}: identical logits (max |diff| {worst:.1e}) on {compared}/{rows} dev rows whose tokens "
          f"are all kept; test OOV {oov:.2%} ({lost}/{total} tokens); test {m} "
          f"{old_scores['test']['score']:.4f} -> {scores['test']['score']:.4f}")
    warning = drop_warning(name, m, old_scores["dev"]["score"], scores["dev"]["score"], dev_oov, v.extra_tokens)
    if warning:
        print(warning)
        entry["warning"] = warning.splitlines()[0].removeprefix("[vocab] WARNING ")
    return entry


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    models = {name: _one(ctx, stage, name, inputs[SOURCES[name]]) for name in ctx.cfg.vocab.models}
    # student-vocab/check.json, as export/check.json: what refused_formats (the exit status) reads
    write_checks(stage.dir, {f"{name}-vocab": e["export"] for name, e in models.items()})
    return {"models": models}


def _describe(out: Output) -> str:
    return ", ".join(f"{n} {e['vocab_after']} tokens, test {e['after']['test']['score']:.4f}"
                     for n, e in out.result.get("models", {}).items())


STAGE = Stage("vocab", "student-vocab", "vocabulary pruning: word embeddings of the task's tokens only",
              settings, work, reads=_reads, enabled=lambda cfg: cfg.vocab.enabled, trains=False, artifact="",
              describe=_describe)
