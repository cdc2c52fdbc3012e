"""Distillation of a tiny student, run once as `python mp_equivalence_script.py OUT 32` (one process, batch 32)
and once under `accelerate launch --num_processes 2` with batch 16 (see test_multiprocess.py).

Everything that could differ between the two runs besides the process count is fixed: dropout is off,
every sequence has the same length (no padding, so a per-rank mean over 16 averaged over 2 ranks is the
mean over 32), and the loader keeps the dataset order, so global batch k of the two runs holds the same
32 examples: rank 0 trains on the 16-batch 2k, rank 1 on 2k+1. The student is narrower than the teacher
(trained projections, used outside the DDP-wrapped forward) and has a pooler no loss reaches.
"""
import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertConfig, BertModel

from distill.engine.batching import make_loader
from distill.config import TrainConfig
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective
from distill.engine.trainer import train
from distill.base.ranks import is_main_process, process_state

EXAMPLES, LENGTH, STEPS = 64, 12, 8


def _config(hidden: int, layers: int) -> BertConfig:
    return BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                      intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def main(out: Path, batch_size: int) -> None:
    torch.set_num_threads(1)
    process_state()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (EXAMPLES, LENGTH), generator=generator).tolist()
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * LENGTH] * EXAMPLES,
                              "token_type_ids": [[0] * LENGTH] * EXAMPLES, "length": [LENGTH] * EXAMPLES})
    loader = make_loader(data, None, batch_size, shuffle=False, collator=lambda rows: {
        k: torch.stack([row[k] for row in rows]) for k in rows[0]})
    torch.manual_seed(1)
    teacher, student = BertModel(_config(32, 4)).eval(), BertModel(_config(16, 2))
    matches = build_layer_map({"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_scores_mse": 1.0}, "uniform", 2, 4)
    objective = DistillObjective(student, teacher, matches)
    cfg = TrainConfig(max_steps=STEPS, batch_size=batch_size, lr=1e-2, warmup_ratio=0.0, save_every=0, log_every=1,
                      mixed_precision="no")
    result = train(objective, loader, cfg, out, seed=7, desc=f"equivalence x{batch_size}",
          save_model=lambda m, folder: (folder.mkdir(parents=True, exist_ok=True),
                                        torch.save({k: v.detach().clone() for k, v in m.state_dict().items()},
                                                   folder / "weights.pt")))
    if is_main_process():
        (out / "losses.json").write_text(json.dumps([record["loss"] for record in result.history]))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(Path(sys.argv[1]), int(sys.argv[2]))
