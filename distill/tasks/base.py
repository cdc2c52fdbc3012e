"""What a task kind owns, so that the stages stay the same code for every kind.

A stage never asks "is this NER?": it asks the kind for features (tokenize + label alignment), the
collator, the Auto class of its heads, the mask the prediction-layer losses average over, how
per-batch logits become per-example rows, the metric, and the ONNX output axes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.base.errors import InputError


class TaskKindError(InputError):
    """The data, the config or a model folder does not fit the task kind."""


@dataclass(frozen=True)
class TaskKind:
    name: str  # sequence_classification | token_classification | question_answering
    student_kind: str  # the head students.build.build_student builds: classifier | token | qa
    architecture_suffix: str  # model class names of this kind end with it, e.g. ForTokenClassification
    pipeline_task: str  # transformers.pipeline task name for the exported folders
    prediction_unit: str  # what one row of flat_outputs is: "examples" | "real tokens"
    onnx_logits_axes: tuple[tuple[int, str], ...]  # dynamic axes of each ONNX output

    # the model's (and the ONNX graph's) outputs that make up the pipeline's logits, in order
    output_names = ("logits",)  # class attribute, not a field

    # ---- outputs: model / ONNX Runtime -> the pipeline's logits ----------------------------------------
    def logits(self, out) -> torch.Tensor:
        """The pipeline's logits from a Hugging Face model output (e.g. QA: start and end stacked)."""
        return self.join_outputs([getattr(out, n) for n in self.output_names])

    def join_outputs(self, outputs: list):
        """Named outputs (torch tensors or numpy arrays, in ``output_names`` order) -> one logits array."""
        return outputs[0]

    def onnx_axes(self) -> dict[str, dict[int, str]]:
        """Dynamic axes of every ONNX output."""
        return {n: dict(self.onnx_logits_axes) for n in self.output_names}

    def targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The Hugging Face model's target kwargs for its own loss (fine-tuning, Taylor importance)."""
        return {"labels": batch["labels"]}

    # ---- heads -------------------------------------------------------------------------------
    @property
    def auto_class(self):
        raise NotImplementedError

    def head_config(self, label_names: list[str] | None) -> dict[str, Any]:
        """from_pretrained/config kwargs that size and name the head."""
        raise NotImplementedError

    # ---- features ----------------------------------------------------------------------------
    def tokenize(self, dataset, tokenizer, max_len: int, split: str = ""):
        raise NotImplementedError

    def collator(self, tokenizer):
        raise NotImplementedError

    # ---- prediction-layer losses ---------------------------------------------------------------
    def output_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Positions soft/hard CE average over: None = one prediction per example."""
        return None

    def loss_inputs(self, student: torch.Tensor, target: torch.Tensor, batch: dict[str, torch.Tensor],
                    feature: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(student, target, mask) handed to a prediction-layer loss; ``feature`` is "logits" (target =
        teacher logits) or "labels" (target = the batch's gold labels)."""
        if feature == "logits":
            return student, target, self.output_mask(batch)
        return student, target, batch["attention_mask"]

    def check_losses(self, losses: dict[str, float], key: str) -> None:
        """Refuse prediction-layer losses that make no sense for this kind (before any training)."""

    def check_config(self, cfg) -> None:
        """Settings this kind cannot honour, refused before any weight loads (cfg: ExperimentConfig)."""
        self.check_losses(cfg.task_distill.prediction_losses, "task_distill.prediction_losses")
        if cfg.prune.enabled:
            self.check_losses(cfg.prune.recovery_losses, "prune.recovery_losses")

    # ---- predictions and metrics -------------------------------------------------------------------
    def rows(self, logits: np.ndarray, labels: np.ndarray | None, attention_mask: np.ndarray) -> tuple[list, list]:
        """Per-example logits and labels of one batch (padding removed where the kind has a sequence axis)."""
        raise NotImplementedError

    def label_rows(self, labels: np.ndarray, attention_mask: np.ndarray) -> list:
        """Per-example labels of one batch (padding removed where the kind has a sequence axis)."""
        return self.rows(labels, labels, attention_mask)[1]

    def gold(self, batch: dict) -> Any:
        """What ``rows`` and ``metrics`` score a collated batch against, as ``rows`` takes it: the label array
        here; extractive QA adds each window's question and context offsets (batch columns)."""
        labels = batch["labels"]
        return labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)

    def unflatten(self, flat: np.ndarray, attention_masks: list[np.ndarray]) -> list[np.ndarray]:
        """Inverse of flat_outputs over consecutive batches: per-example rows again."""
        raise NotImplementedError

    def collect(self, rows: list) -> Any:
        """Per-example rows back into what metrics and callers take (an array where shapes allow)."""
        return rows

    def flat_outputs(self, logits: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(n, C) predictions of one batch for export checks: one row per example or per real token."""
        raise NotImplementedError

    def agreement(self, reference: np.ndarray, candidate: np.ndarray) -> float:
        """Share of flat_outputs rows on which an exported model predicts what PyTorch predicts."""
        return float(np.mean(reference.argmax(-1) == candidate.argmax(-1)))

    def metrics(self, logit_rows, label_rows, metric: str, label_names: list[str] | None,
                examples=None) -> dict[str, float]:
        """``examples``: the untokenized split the rows come from, for kinds whose metric reads it (QA: contexts
        and gold answers); the others ignore it."""
        raise NotImplementedError

    def check_model_folder(self, architectures: list[str] | None, where: str) -> None:
        """A fine-tuned folder of the other kind (e.g. a sentence classifier for NER data) is refused."""
        if architectures and not any(a.endswith(self.architecture_suffix) for a in architectures):
            raise TaskKindError(f"{where} is a {architectures[0]} but the task is {self.name}; use a model "
                                f"folder fine-tuned for {self.name} (a *{self.architecture_suffix}) or "
                                "set teacher.already_finetuned=false to fine-tune it here")
