"""bench-train on the CPU: this project's engine against TextBrewer on identical fixed batches.

Why: the engine's loop (distill.engine.trainer.train, which every stage uses) should cost no more per step
than TextBrewer's GeneralDistiller doing the same work, and length grouping should add on top of it. The work,
the engines and the figures are described at the top of distill/benchmarks/train.py (the CLI's help).

Each timed run happens in a fresh interpreter (run_engine) that runs this file by path and calls ``worker``,
so one engine's memory and threads never disturb another's, and "ours-baseline" can time this file's worker
on another checkout's engine. That is why this file imports the project only inside functions: at the top it
would be read from that other checkout."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("intermediate", "task")
ENGINES = ("textbrewer", "ours", "ours-grouped", "ours-baseline")
LABEL_NAMES = ["0", "1"]
STUDENT = dict(layers=3, hidden=384, heads=12, ffn=1536)


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat (Linux; zeros elsewhere)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


class Clock:
    """Wall, own-process CPU and machine CPU stamps; ``contention`` = cores other processes used."""

    def __init__(self):
        self.wall, self.own, self.machine = [], [], []

    def stamp(self) -> None:
        self.wall.append(time.perf_counter())
        self.own.append(time.process_time())
        self.machine.append(machine_cpu_s()[0])

    def own_cpu_s(self, first: int, last: int) -> float:
        return self.own[last] - self.own[first]

    def other_cores(self, first: int, last: int) -> float:
        wall = self.wall[last] - self.wall[first]
        own = self.own[last] - self.own[first]
        return round((self.machine[last] - self.machine[first] - own) / max(wall, 1e-9), 2)


def labelled_snippets(path: Path) -> tuple[list[str], list[int]]:
    """Rotten Tomatoes review snippets (fresh = 1, rotten = 0), in file order."""
    import pandas as pd

    df = pd.read_csv(path)
    df = df[df.category.isin(["fresh", "rotten"])].dropna(subset=["text"])
    return df.text.astype(str).tolist(), (df.category == "fresh").astype(int).tolist()


def fixed_order(n_examples: int, n_batches: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Example indices of each batch: one numpy permutation, read in order, wrapping past the end."""
    order = np.random.default_rng(seed).permutation(n_examples)
    return [order[np.arange(b * batch_size, (b + 1) * batch_size) % n_examples] for b in range(n_batches)]


def fixed_batches(tokenizer, texts: list[str], labels: list[int], n_batches: int, batch_size: int, max_len: int,
                  seed: int) -> list[dict[str, torch.Tensor]]:
    """The benchmark's batches: padded to each batch's longest, truncated to ``max_len``, with labels."""
    batches = []
    for idx in fixed_order(len(texts), n_batches, batch_size, seed):
        enc = tokenizer([texts[i] for i in idx], padding="longest", truncation=True, max_length=max_len,
                        return_tensors="pt")
        batch = dict(enc)  # a plain dict: TextBrewer dispatches on `type(batch) is dict`
        batch["labels"] = torch.tensor([labels[i] for i in idx])
        batches.append(batch)
    return batches


def grouped_batches(tokenizer, texts: list[str], labels: list[int], n_batches: int, batch_size: int, max_len: int,
                    seed: int) -> list[dict[str, torch.Tensor]]:
    """The same examples as ``fixed_batches``, batched by the project's length-grouped sampler."""
    from transformers import DataCollatorWithPadding

    from distill.engine.batching import LengthGroupedBatchSampler

    idx = np.concatenate(fixed_order(len(texts), n_batches, batch_size, seed))
    enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_len)
    rows = [{"input_ids": enc["input_ids"][j], "attention_mask": enc["attention_mask"][j],
             "token_type_ids": enc["token_type_ids"][j], "labels": labels[i]} for j, i in enumerate(idx)]
    sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], batch_size, shuffle=True, seed=seed)
    collate = DataCollatorWithPadding(tokenizer)
    return [dict(collate([rows[j] for j in chunk])) for chunk in list(sampler)[:n_batches]]


def loss_weights(mode: str) -> dict[str, float]:
    if mode == "task":
        return {"soft_ce": 1.0, "hard_ce": 1.0}
    return {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_scores_mse": 1.0}


def _summary(args, engine: str, step_s: list[float], batches, clock: Clock, window: tuple[int, int],
             loss_first: float, loss_last: float, extra: dict) -> dict:
    timed = batches[args.warmup:args.warmup + args.steps]
    samples = sum(b["input_ids"].shape[0] for b in timed)
    other_cores = clock.other_cores(*window)
    return {"engine": engine, "mode": args.mode, "samples_per_s": round(samples / sum(step_s), 3),
            # this process's CPU time per sample: less sensitive than wall time to other programs on the machine
            "cpu_ms_per_sample": round(1000 * clock.own_cpu_s(*window) / (samples * (window[1] - window[0])
                                                                          / len(timed)), 2),
            "median_step_s": round(statistics.median(step_s), 5), "timed_steps": len(step_s),
            "batch_size": args.batch_size, "max_len": args.max_len,
            "mean_padded_len": round(statistics.mean(b["input_ids"].shape[1] for b in timed), 2),
            "real_token_share": round(float(sum(b["attention_mask"].sum() for b in timed))
                                      / sum(b["attention_mask"].numel() for b in timed), 3),
            "other_procs_cpu_cores": other_cores, "threads": torch.get_num_threads(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "loss_first": round(loss_first, 5), "loss_last_timed": round(loss_last, 5), **extra}


def _data(args, tokenizer, grouped: bool):
    from distill.base import assets

    texts, labels = labelled_snippets(assets.rotten_tomatoes_csv())
    make = grouped_batches if grouped else fixed_batches
    return make(tokenizer, texts, labels, args.warmup + args.steps + 1, args.batch_size, args.max_len, args.seed)


def run_ours(args, grouped: bool) -> dict:
    """This project's engine: DistillObjective in distill.engine.trainer.train, one logged record per step."""
    from distill.base import assets
    from distill.config import TrainConfig
    from distill.engine.layer_map import build_layer_map
    from distill.tasks import SEQUENCE_CLASSIFICATION
    from distill.engine.objectives import DistillObjective
    from distill.engine.trainer import train
    from students.build import build_student
    from students.presets import resolve_shape
    from teachers.load import load_classifier, load_tokenizer

    torch.manual_seed(args.seed)
    teacher_dir = str(assets.minilm_dir())
    tokenizer = load_tokenizer(teacher_dir)
    batches = _data(args, tokenizer, grouped)
    teacher = load_classifier(teacher_dir, LABEL_NAMES, SEQUENCE_CLASSIFICATION)
    student = build_student(resolve_shape("custom", **STUDENT), teacher, kind="classifier",
                            label_names=LABEL_NAMES, init="random", seed=args.seed)
    matches = build_layer_map(loss_weights(args.mode), "uniform", STUDENT["layers"], teacher.config.num_hidden_layers)
    objective = DistillObjective(student, teacher, matches, temperature=1.0)
    clock = Clock()
    # a stamp as each batch is fetched (for the contention figure; accelerate fetches one batch ahead)
    loader = torch.utils.data.DataLoader(_Stamped(batches, clock), batch_size=None)
    cfg = TrainConfig(max_steps=len(batches), batch_size=args.batch_size, lr=1e-4, warmup_ratio=0.0, log_every=1,
                      save_every=0, eval_every=0, mixed_precision="no")
    with tempfile.TemporaryDirectory() as out:
        result = train(objective, loader, cfg, out, save_model=lambda m, f: None, seed=args.seed,
                       desc=f"{args.mode} ours")
    first, last = args.warmup, args.warmup + args.steps
    # one record per step (log_every=1): its examples_per_s covers that step's fetch, forward, backward, update
    step_s = [b["input_ids"].shape[0] / h["examples_per_s"] for b, h in zip(batches[first:last], result.history[first:last])]
    # accelerate fetches one batch ahead, so stamp k is taken as step k-1 starts
    window = (first + 1, last) if last > first + 1 else (0, len(clock.wall) - 1)
    return _summary(args, "ours-grouped" if grouped else "ours", step_s, batches, clock, window,
                    result.history[0]["loss"], result.history[last - 1]["loss"],
                    {"student_attention": student.config._attn_implementation})


class _Stamped(torch.utils.data.IterableDataset):
    """A fixed list of batches that records a clock stamp as each one is handed to the loop."""

    def __init__(self, batches, clock: Clock):
        self.batches, self.clock = batches, clock

    def __iter__(self):
        for batch in self.batches:
            self.clock.stamp()
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


def run_textbrewer(args) -> dict:
    """TextBrewer's own loop, GeneralDistiller.train(num_steps), with its README's setup."""
    import random

    import textbrewer
    from textbrewer import DistillationConfig
    from transformers import AutoConfig, AutoTokenizer, BertConfig, BertForSequenceClassification

    from distill.base import assets
    from distill.benchmarks.train_common import recording_distiller

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    teacher_dir = str(assets.minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    batches = _data(args, tokenizer, grouped=False)
    tcfg = AutoConfig.from_pretrained(teacher_dir, num_labels=2, attn_implementation="eager")
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir, config=tcfg)
    h = STUDENT["hidden"]
    scfg = BertConfig(vocab_size=tcfg.vocab_size, hidden_size=h, num_hidden_layers=STUDENT["layers"],
                      num_attention_heads=STUDENT["heads"], intermediate_size=STUDENT["ffn"],
                      max_position_embeddings=tcfg.max_position_embeddings, type_vocab_size=tcfg.type_vocab_size,
                      pad_token_id=tcfg.pad_token_id, num_labels=2, attn_implementation="eager")
    student = BertForSequenceClassification(scfg)
    if args.mode == "task":
        dcfg = DistillationConfig(temperature=1, kd_loss_type="ce", kd_loss_weight=1, hard_label_weight=1)
        adaptor_t = lambda batch, out: {"logits": out.logits}  # noqa: E731
        adaptor_s = lambda batch, out: {"logits": out.logits, "losses": out.loss}  # noqa: E731
        forward_args = {}
    else:
        n_t, n_s = tcfg.num_hidden_layers, STUDENT["layers"]
        matches = [{"layer_T": s * n_t // n_s, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
                   for s in range(n_s + 1)]  # hidden_states[0] is the embedding output
        matches += [{"layer_T": s * n_t // n_s - 1, "layer_S": s - 1, "feature": "attention",
                     "loss": "attention_mse", "weight": 1} for s in range(1, n_s + 1)]
        dcfg = DistillationConfig(temperature=1, kd_loss_weight=0, hard_label_weight=0, intermediate_matches=matches)
        adaptor_t = adaptor_s = lambda batch, out: {"hidden": out.hidden_states, "attention": out.attentions,  # noqa: E731
                                                    "inputs_mask": batch["attention_mask"]}
        forward_args = {"output_hidden_states": True, "output_attentions": True}
    clock, losses = Clock(), []

    def stamp(batch):  # TextBrewer calls its batch_postprocessor at the start of every step
        clock.stamp()
        return batch

    with tempfile.TemporaryDirectory() as out:
        distiller = recording_distiller("cpu", out, len(batches), dcfg, teacher, student, adaptor_t, adaptor_s, losses)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        with distiller:
            distiller.train(optimizer, batches, num_steps=len(batches), batch_postprocessor=stamp, **forward_args)
    first, last = args.warmup, args.warmup + args.steps
    step_s = np.diff(clock.wall)[first:last].tolist()
    return _summary(args, "textbrewer", step_s, batches, clock, (first, last), losses[0], losses[last - 1],
                    {"textbrewer": textbrewer.__version__, "student_attention": "eager"})


def worker(args) -> dict:
    """One timed run of ``args.worker`` in this process (what run_engine's fresh interpreter calls)."""
    torch.set_num_threads(args.threads)
    if args.worker == "textbrewer":
        return run_textbrewer(args)
    return run_ours(args, grouped=args.worker == "ours-grouped")


def _project_root() -> Path:
    """The checkout this file belongs to (distill/benchmarks/train_fixed.py -> the folder holding distill/)."""
    return Path(__file__).resolve().parents[2]


def run_engine(engine: str, args, tb: Path | None) -> dict:
    """One timed run in a fresh interpreter running this file; its last stdout line is the JSON summary.

    ours-baseline: this file's "ours" worker on the engine of another checkout (--baseline-tree, e.g. an
    older commit), for before/after figures in the same alternation."""
    root = Path(args.baseline_tree).resolve() if engine == "ours-baseline" else _project_root()
    path = [str(root)] + ([str(tb)] if engine == "textbrewer" else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    settings = {"worker": "ours" if engine == "ours-baseline" else engine, "mode": args.mode, "steps": args.steps,
                "warmup": args.warmup, "batch_size": args.batch_size, "max_len": args.max_len,
                "threads": args.threads, "seed": args.seed}
    cmd = [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(root)!r}); "
           f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')", json.dumps(settings)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} ({args.mode}) failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "engine": engine}


def run_fixed(args) -> list[dict]:
    """Every engine of ``args.engines`` in every mode, ``args.repeats`` alternations (order reversed every repeat),
    each run in its own interpreter; one summary per run, also appended to ``args.out`` when given."""
    from distill.benchmarks.train_common import BenchTrainError, textbrewer_folder

    engines = [e.strip() for e in args.engines.split(",") if e.strip() and e.strip() != "ours-baseline"]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        raise BenchTrainError(f"bench-train: unknown engines {unknown} (choose from {ENGINES}) or repeats/steps < 1")
    if args.baseline_tree:
        if not (Path(args.baseline_tree) / "distill" / "engine" / "objectives.py").is_file():
            raise BenchTrainError(f"--baseline-tree {args.baseline_tree!r} is not a checkout of this project with the "
                                  "layered engine (distill/engine/objectives.py); give a commit from after the split")
        engines.append("ours-baseline")
    tb = textbrewer_folder(args.textbrewer_path)
    if tb is None and "textbrewer" in engines:
        engines.remove("textbrewer")
        print("TextBrewer not given (--textbrewer-path or TEXTBREWER_PATH): timing this project's engine only")
    modes = MODES if args.mode == "both" else (args.mode,)
    results = []
    for mode in modes:
        for repeat in range(args.repeats):
            for engine in engines if repeat % 2 == 0 else engines[::-1]:
                run_args = argparse.Namespace(**{**vars(args), "mode": mode})
                result = run_engine(engine, run_args, tb)
                results.append(result)
                print(f"[{mode}] run {repeat + 1}/{args.repeats} {engine}: {result['samples_per_s']:.2f} samples/s "
                      f"(other processes {result['other_procs_cpu_cores']:.2f} cores)", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(result) + "\n")
    return results


if __name__ == "__main__":  # run_engine's fresh interpreter: one worker run, its summary as the last stdout line
    print(json.dumps(worker(argparse.Namespace(**json.loads(sys.argv[1])))), flush=True)
