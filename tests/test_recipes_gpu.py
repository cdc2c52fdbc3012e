"""The GPU recipes (experiments/gpu/*.yaml): each is sized as its header says (the whole training data, the
teachers and students trained for full schedules, mixed precision chosen by the machine, an estimated time
within 10 minutes on one H200-class GPU), and each runs end to end here on the CPU for 2 steps a stage with
shrunk data, through the last training stage (prune + recovery; export and bench train nothing and take
longer than the rest here), on the real embedded MiniLM teacher and a small local SQuAD-format folder for QA."""
import re
from pathlib import Path

import pytest

from distill.config import TrainConfig, load_config
from distill.engine.tracking import read_metrics
from distill.runner.plan import build
from distill.stages.context import RunContext
from tests.qa_data import squad_folder

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "experiments" / "gpu").glob("*.yaml"))
SECTIONS = ("teacher.finetune", "general.train", "task_distill.intermediate", "task_distill.prediction",
            "prune.recovery")
# the least each recipe trains, in epochs (the brief's full schedules; the CPU recipes train 0.5-1.5 in 2a)
TEACHER_EPOCHS = {"rotten_tomatoes": 3, "conll2003": 3, "squad": 2}
INTERMEDIATE_EPOCHS = {"rotten_tomatoes": 10, "conll2003": 5, "squad": 3}


def _section(cfg, dotted: str) -> TrainConfig:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def test_there_is_one_gpu_recipe_per_embedded_task():
    assert sorted(load_config(p).task.name for p in RECIPES) == ["conll2003", "rotten_tomatoes", "squad"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_gpu_recipe_is_sized_as_its_header_says(path):
    header = _header(path)
    assert f"make distill EXP=experiments/gpu/{path.name}" in header  # the exact command (STYLE 3)
    assert "ESTIMATE, not a measurement" in header and "H200" in header
    low, high = map(int, re.search(r"total: ~(\d+)-(\d+) s", header).groups())
    assert low < high <= 600, "estimated over 10 minutes"
    cfg = load_config(path)
    assert cfg.name.endswith("_gpu")  # runs land apart from the CPU recipe's
    for dotted in SECTIONS:
        assert _section(cfg, dotted).mixed_precision == "auto", dotted  # bf16 on a GPU that has it
    assert cfg.task.max_train_examples == 0  # every training example (SQuAD: all 15,101 questions)
    task = cfg.task.name
    assert cfg.teacher.finetune.epochs >= TEACHER_EPOCHS[task] and cfg.teacher.finetune.max_steps == 0
    assert cfg.task_distill.intermediate.epochs >= INTERMEDIATE_EPOCHS[task]
    assert cfg.task_distill.prediction.epochs >= 3 and cfg.general.max_sequences == 0
    cpu = load_config(ROOT / "experiments" / f"{path.stem}.yaml")  # the recipe it copies trains less
    assert cfg.task_distill.intermediate.epochs > cpu.task_distill.intermediate.epochs
    assert cfg.teacher.finetune.epochs > cpu.teacher.finetune.epochs


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_gpu_recipe_runs_two_steps_a_stage_on_the_cpu(path, tmp_path):
    cfg = load_config(path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"sentence {i} of the general corpus about films and books." for i in range(200)))
    overrides = [f"output_dir={tmp_path / 'runs'}", f"general.corpus={corpus}", "general.max_len=32",
                 "prune.taylor_batches=1",
                 "teacher.gate=warn"]  # a 2-step teacher learns nothing: the gate would stop the run
    for section in SECTIONS:
        overrides += [f"{section}.{s}" for s in ("max_steps=2", "batch_size=4", "eval_every=0", "save_every=0",
                                                 "log_every=1")]
    if cfg.task.kind == "question_answering":  # a small local SQuAD-format folder instead of `make setup-qa`
        overrides += [f"task.name={squad_folder(tmp_path / 'squad')}", "task.max_len=64", "task.doc_stride=32",
                      "task.max_question_len=16", "task.max_eval_examples=8"]
    else:
        overrides += ["task.max_train_examples=48", "task.max_eval_examples=16", "task.max_len=32"]
    ctx = RunContext(load_config(path, overrides))
    build(ctx, "prune")  # every training stage; export, bench and report train nothing (their settings validated)
    for stage in ("teacher", "student-general", "student-intermediate", "student-task", "student-pruned"):
        assert (ctx.run_dir / stage / "DONE").is_file(), stage
        steps = [r["step"] for r in read_metrics(ctx.run_dir / stage / "metrics.jsonl") if "loss" in r]
        assert steps == [1, 2], stage
