"""What every stage of a run shares: the config, the task data, the tokenizer, trackers, saving."""
from __future__ import annotations

from functools import cached_property
from typing import Callable
from pathlib import Path

import yaml
from torch import nn
from transformers import PreTrainedTokenizerBase

from distill.engine.batching import make_loader
from distill.config import ExperimentConfig, to_dict
from distill.data.task_data import TaskData, load_task
from distill.base.fsutil import replace_folder, write_text_atomic
from distill.base.ranks import is_main_process
from distill.stages.records import on_first_stage_start
from distill.engine.tracking import Tracker, git_commit


class RunContext:
    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # config.yaml describes the run folder's artifacts: it is written when a stage starts work, after
        # the stage checks passed, never by a command that a finished stage then refuses
        on_first_stage_start(self.run_dir, self.save_config)

    def save_config(self) -> None:
        if is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))

    @cached_property
    def data(self) -> TaskData:
        return load_task(self.cfg.task)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        from teachers.load import load_tokenizer

        return load_tokenizer(self.cfg.teacher.name)

    @cached_property
    def tokenized(self) -> dict:
        """train/dev/test tokenized with the teacher's tokenizer (students share its vocabulary)."""
        return {split: self.data.kind.tokenize(getattr(self.data, split), self.tokenizer, self.cfg.task.max_len, split)
                for split in ("train", "dev", "test")}

    def loader(self, split: str, batch_size: int, shuffle: bool = False, dataset=None, collator=None):
        return make_loader(dataset if dataset is not None else self.tokenized[split], self.tokenizer, batch_size,
                           shuffle, seed=self.cfg.seed, num_workers=self.cfg.num_workers,
                           collator=collator or self.data.kind.collator(self.tokenizer))

    def own_loader(self, tokenizer: PreTrainedTokenizerBase, split: str, batch_size: int, limit: int = 0):
        """A split tokenized with another tokenizer (a vocabulary-pruned student's own) and batched like
        ``loader``; ``limit`` keeps its first rows (0 = all)."""
        rows = self.data.kind.tokenize(getattr(self.data, split), tokenizer, self.cfg.task.max_len, split)
        if limit:
            rows = rows.select(range(min(limit, len(rows))))
        return make_loader(rows, tokenizer, batch_size, False, seed=self.cfg.seed, num_workers=self.cfg.num_workers,
                           collator=self.data.kind.collator(tokenizer))

    def tracker(self, stage_dir: Path, stage: str) -> Tracker:
        return Tracker(stage_dir, stage, config={**to_dict(self.cfg), "git_commit": git_commit()},
                       project=self.cfg.wandb_project,
                       group=f"{self.cfg.name}-{self.cfg.run_id}", mode=self.cfg.wandb_mode, run_dir=self.run_dir)

    def saver(self, tokenizer: PreTrainedTokenizerBase | None = None):
        """save_model(trainable, folder) for the trainer: a Hugging Face folder, replaced atomically."""
        tokenizer = tokenizer or self.tokenizer

        def save(trainable: nn.Module, folder: Path) -> None:
            model = getattr(trainable, "student", trainable)  # distillation wraps student + projections
            save_hf_folder(model, tokenizer, folder)
        return save


def save_hf_folder(model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path,
                   extra: Callable[[Path], None] | None = None) -> None:
    """Weights (safetensors), config and tokenizer, plus whatever ``extra(tmp)`` writes beside them (e.g.
    the trained projections), swapped in together with one ``replace_folder`` (crash-safe: a kill at any
    point leaves the old set or the new set, never a mix)."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
    replace_folder(folder, write)
