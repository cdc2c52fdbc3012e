"""One stage trained by every process of `accelerate launch --num_processes 2 --cpu` (see test_multiprocess.py).

Each rank writes what it saw to <out>/rank<i>.json; the test compares the ranks with each other, with the
sampler and with the files in the stage folder.
"""
import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from distill.base import assets

from distill.engine import logit_cache
from distill.engine.batching import LengthGroupedBatchSampler, make_loader
from distill.tasks.sequence_classification import tokenize
from distill.config import TrainConfig
from distill.stages.context import save_hf_folder
from distill.engine.evaluation import evaluate
from distill.engine.layer_map import build_layer_map
from distill.engine.objectives import DistillObjective, FineTuneObjective
from distill.stages.records import StageRun
from distill.engine.tracking import Tracker
from distill.engine.trainer import train
from distill.base.ranks import process_state

BATCH, SEED = 4, 3


class Recording(FineTuneObjective):
    """Keeps every batch this rank trained on, without its padding."""

    def __init__(self, model):
        super().__init__(model)
        self.batches = []

    def __call__(self, batch):
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        self.batches.append(rows)
        return super().__call__(batch)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    state = process_state()  # as the CLI's first is_main_process() creates it: the process group's long timeout
    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_dir())
    words = ["a wonderful", "a dreadful", "an okay", "a truly wonderful old"]  # lengths differ: grouping matters
    texts = [f"{words[i % 4]} film number {i}" for i in range(40)]
    labels = [int("wonderful" in t) for t in texts]
    train_set = tokenize(Dataset.from_dict({"text": texts, "label": labels}), tokenizer, 32)
    loader = make_loader(train_set, tokenizer, BATCH, shuffle=True, seed=SEED)
    dev = make_loader(train_set.select(range(8)), tokenizer, 8, shuffle=False)

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     intermediate_size=64, max_position_embeddings=64))
    initial = float(torch.nn.utils.parameters_to_vector(model.parameters()).detach().double().abs().sum())
    objective = Recording(model)
    stage = StageRun(out / "run", "stage", {"x": 1})
    assert not stage.is_done()
    stage.start()
    cfg = TrainConfig(epochs=2, batch_size=BATCH, lr=1e-3, save_every=3, eval_every=4, log_every=1,
                      warmup_ratio=0.0, mixed_precision="no")
    result = train(objective, loader, cfg, stage.dir, tracker=Tracker(stage.dir, "t", mode="disabled"),
                   evaluate=lambda m: evaluate(m, dev, "accuracy"), seed=SEED, desc="mp",
                   save_model=lambda m, folder: save_hf_folder(m, tokenizer, folder))
    stage.finish({"steps": result.step})
    probe = objective.batches.pop(0)  # under DDP, train() first probes the loss once (freeze_unreached)
    assert len(probe) == BATCH and state.num_processes > 1

    sampler = LengthGroupedBatchSampler(train_set["length"], BATCH, shuffle=True, seed=SEED)
    expected = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected.append([[train_set[i]["input_ids"] for i in batch] for batch in sampler.batches()])
    params = torch.nn.utils.parameters_to_vector(objective.trainable.parameters()).detach()
    report = {"rank": state.process_index, "processes": state.num_processes, "steps": result.step,
              "seen": objective.batches, "expected_by_epoch": expected,
              "param_sum": float(params.double().sum()), "param_abs_sum": float(params.double().abs().sum()),
              "initial_abs_sum": initial, "timeout_s": _process_group_timeout_s(),
              "backend": torch.distributed.get_backend()}
    report.update(_distill_stage(out, train_set, tokenizer), **_teacher_logits_once(out, train_set))
    (out / f"rank{state.process_index}.json").write_text(json.dumps(report))


def _process_group_timeout_s() -> float:
    """The collective timeout the default process group was created with (its gloo backend on CPU processes,
    its NCCL backend on GPU ones)."""
    from torch.distributed import distributed_c10d

    group = distributed_c10d._get_default_group()
    return group._get_backend(process_state().device).options._timeout.total_seconds()


def _distill_stage(out: Path, train_set, tokenizer) -> dict:
    """Two steps of general-style distillation into a BertModel student: its pooler gets no gradient."""
    torch.manual_seed(0)
    config = dict(vocab_size=tokenizer.vocab_size, num_attention_heads=4, max_position_embeddings=64)
    teacher = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **config)).eval()
    student = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, intermediate_size=32, **config))
    objective = DistillObjective(student, teacher, build_layer_map({"hidden_mse": 1.0}, "uniform", 1, 2))
    loader = make_loader(train_set, tokenizer, BATCH, shuffle=True, seed=SEED)
    cfg = TrainConfig(max_steps=2, batch_size=BATCH, lr=1e-3, save_every=0, log_every=1, mixed_precision="no")
    result = train(objective, loader, cfg, out / "distill", seed=SEED, desc="mp distill",
                   save_model=lambda m, folder: save_hf_folder(m.student, tokenizer, folder))
    return {"distill_steps": result.step, "pooler_trainable": student.pooler.dense.weight.requires_grad}


def _teacher_logits_once(out: Path, train_set) -> dict:
    """The run's logit cache under 2 processes: who ran the teacher, and what each rank got."""
    computed = []

    def compute(dataset):
        computed.append(len(dataset))
        rows = [[float(sum(ids) % 7), float(process_state().process_index)] for ids in dataset["input_ids"]]
        return dataset.add_column("teacher_logits", rows)  # rank-dependent: a rank that computed would show it

    key = logit_cache.cache_key(out / "run" / "stage" / "model", train_set, "cpu", "float32", "test")
    got = logit_cache.reuse_or_compute(out / "run", key, train_set, compute)
    return {"computed_logits": computed, "logits": list(got["teacher_logits"])}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(Path(sys.argv[1]))
