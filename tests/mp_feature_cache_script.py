"""Stage 2a's teacher feature cache under `accelerate launch --num_processes 2` (see test_feature_cache.py):
the main process builds it, the other waits for it, both read it while training, neither runs the teacher
in training. Each rank writes what it saw to <out>/rank<i>.json."""
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from distill.base import assets

from distill.engine import feature_cache
from distill.engine.batching import make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import ExperimentConfig
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective
from distill.base.ranks import process_state, wait_for_everyone
from distill.engine.trainer import train
from distill.stages.teacher import load_finetuned

# hard_ce (gold labels, from the batch) trains the pooler and classifier too: without it DDP refuses the step,
# since the intermediate losses leave them without gradients (as in stage 2a under DDP, cache or not)
LOSSES = {"embedding_mse": 1.0, "attention_scores_mse": 1.0, "hidden_mse": 1.0, "hard_ce": 0.1}


def tiny(layers: int, width: int) -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
                      intermediate_size=2 * width, max_position_embeddings=64)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    state = process_state()
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    teacher_dir = out / "teacher"
    if state.is_main_process:
        torch.manual_seed(0)
        BertForSequenceClassification(tiny(4, 32)).save_pretrained(teacher_dir)
    wait_for_everyone()
    words = ["a wonderful", "a dreadful", "an okay", "a truly wonderful old"]
    texts = [f"{words[i % 4]} film number {i}" for i in range(24)]
    train_set = tokenize(Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(24)]}), tokenizer, 32)
    teacher = load_finetuned(teacher_dir)
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny(2, 16))
    objective = DistillObjective(student, teacher, build_layer_map(LOSSES, "uniform", 2, 4))
    cfg = ExperimentConfig()
    cfg.task_distill.intermediate.epochs = 2
    cfg.task_distill.intermediate.batch_size = 4
    cfg.task_distill.intermediate.mixed_precision = "no"
    ctx = SimpleNamespace(cfg=cfg, run_dir=out / "run", tokenizer=tokenizer,
                          loader=lambda split, bs, shuffle=False, dataset=None:
                          make_loader(dataset, tokenizer, bs, shuffle, seed=0))
    data = feature_cache.prepare(ctx, objective, teacher_dir, train_set)
    cache = objective.feature_cache

    worst = 0.0  # every example's stored hidden states against this rank's own teacher pass
    with torch.no_grad():
        for batch in make_loader(data, tokenizer, 4, shuffle=False):
            mask = batch["attention_mask"].bool()
            direct = objective.teacher_tap({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
            stored = cache.features(batch)
            for layer, value in enumerate(stored.hidden):
                if value is not None:
                    diff = (value - direct.hidden[layer]).abs()[mask].max() / direct.hidden[layer][mask].abs().max()
                    worst = max(worst, float(diff))

    class NoTeacher:
        blocks = objective.teacher_tap.blocks

        def __call__(self, *args, **kwargs):
            raise AssertionError("the teacher ran in training although its features are cached")

    objective.teacher_tap = NoTeacher()
    train_cfg = cfg.task_distill.intermediate
    train_cfg.lr, train_cfg.save_every, train_cfg.log_every = 1e-3, 0, 1
    result = train(objective, make_loader(data, tokenizer, 4, shuffle=True, seed=0), train_cfg, out / "run" / "stage",
                   save_model=lambda m, folder: None, seed=0, desc="mp-2a")
    report = {"rank": state.process_index, "processes": state.num_processes, "folder": str(cache.folder),
              "steps": result.step, "worst_relative_diff": worst,
              "losses": [r["loss"] for r in result.history]}
    (out / f"rank{state.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(Path(sys.argv[1]))
