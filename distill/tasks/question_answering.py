"""Extractive question answering (SQuAD v1.1): logits (batch, seq, 2), start and end stacked.

Inside the pipeline a window's logits are one (seq, 2) row, so caching, rows and export checks work as for
per-token tasks; the kind turns them into the two per-position distributions the losses compare (soft CE
over the sequence positions of the start and of the end, padding excluded, averaged: the DistilBERT /
TextBrewer recipe). Labels of a window are ``[start_position, end_position, window_index]``: the window
index points into the kind's record of every tokenized window (which question, its context offsets), so
the metric can pick the best span over all windows of a question and score EM/F1 against the gold texts.
One QuestionAnswering instance belongs to one task (``TaskData.kind``); it learns its windows in ``tokenize``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from distill.tasks.base import TaskKind, TaskKindError
from distill.tasks.squad_features import WindowStats, best_spans, check_budget, window_features
from distill.tasks.squad_metric import squad_scores
from distill.tasks.token_classification import left_padded, pad_rows

NEG = -1e4  # logit given to padding positions: exp() underflows to 0, log-probs stay finite
# export checks: an exported model agrees on a start (end) row when the position it ranks first is within this
# many logits of PyTorch's best there; near-ties between neighbouring tokens are common in QA and flip under
# INT8 noise without changing the answer's score (measured: 64% exact argmax agreement, F1 10.22 -> 10.05)
TIE_LOGITS = 1.0
MAX_POSITIONS = 512  # export checks compare windows padded to BERT's longest sequence
WINDOW = 2  # index of the window index inside a label row [start, end, window]


def position_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(b, s, 2) start/end logits -> (2b, s) rows [window 0 start, window 0 end, window 1 start, ...],
    padding positions set to NEG so a softmax over the row ignores them."""
    x = logits.float().transpose(1, 2)  # (b, 2, s)
    x = x.masked_fill(attention_mask[:, None, :] == 0, NEG)
    return x.reshape(-1, x.shape[-1])  # (2b, s)


class QACollator:
    """Pads inputs with the tokenizer; labels stay (batch, 3); cached teacher logits (seq, 2) padded with 0
    (the losses mask padding anyway)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        features = [dict(f) for f in features]
        labels = [f.pop("labels") for f in features] if "labels" in features[0] else None
        teacher = [f.pop("teacher_logits") for f in features] if "teacher_logits" in features[0] else None
        batch = self.tokenizer.pad(features, return_tensors="pt")
        if labels is not None:
            batch["labels"] = torch.stack([torch.as_tensor(x, dtype=torch.long) for x in labels])  # (batch, 3)
        if teacher is not None:
            left = self.tokenizer.padding_side == "left"
            batch["teacher_logits"] = pad_rows(teacher, batch["input_ids"].shape[1], left, 0.0, (2,),
                                               torch.float32)  # (batch, seq, 2)
        return batch


@dataclass(frozen=True)
class QuestionAnswering(TaskKind):
    name: str = "question_answering"
    student_kind: str = "qa"
    architecture_suffix: str = "ForQuestionAnswering"
    pipeline_task: str = "question-answering"
    prediction_unit: str = "window start/end rows"
    onnx_logits_axes: tuple[tuple[int, str], ...] = ((0, "batch"), (1, "sequence"))
    doc_stride: int = 128  # tokens shared by consecutive windows of a long context
    max_question_len: int = 64  # longer questions are cut to this many tokens
    n_best: int = 20  # start and end candidates per window in post-processing
    max_answer_len: int = 30  # longest answer span in tokens
    # filled by tokenize(): per split, the questions' contexts and gold texts; per window, (split, row, offsets)
    examples: dict = field(default_factory=dict, compare=False, repr=False)
    windows: list = field(default_factory=list, compare=False, repr=False)

    output_names = ("start_logits", "end_logits")

    @classmethod
    def from_config(cls, task_cfg) -> "QuestionAnswering":
        return cls(doc_stride=task_cfg.doc_stride, max_question_len=task_cfg.max_question_len,
                   n_best=task_cfg.n_best, max_answer_len=task_cfg.max_answer_len)

    # ---- heads -------------------------------------------------------------------------------------
    @property
    def auto_class(self):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def head_config(self, label_names):
        return {"num_labels": 2}  # start and end

    def check_label_names(self, model_labels, data_labels, where) -> None:
        """A QA head always predicts a start and an end: nothing to compare."""

    # ---- outputs -------------------------------------------------------------------------------------
    def join_outputs(self, outputs: list):
        start, end = outputs
        if isinstance(start, torch.Tensor):
            return torch.stack([start, end], dim=-1)  # (batch, seq, 2)
        return np.stack([start, end], axis=-1)  # (batch, seq, 2)

    def targets(self, batch):
        labels = batch["labels"]
        return {"start_positions": labels[:, 0], "end_positions": labels[:, 1]}

    # ---- features ----------------------------------------------------------------------------------
    def tokenize(self, dataset, tokenizer, max_len: int, split: str = ""):
        """Windows of every question; labels [start, end, window index]; the windows are recorded here."""
        key = f"{split or 'split'}#{len(self.examples)}"
        stats = WindowStats()

        def encode(batch: dict, indices: list[int]) -> dict:
            out = window_features(batch, tokenizer, max_len, self.doc_stride, self.max_question_len, stats)
            out["example_index"] = [indices[i] for i in out["example_index"]]
            out.pop("example_id")
            return out

        out = dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                          desc="tokenize", load_from_cache_file=False)
        print(stats.line(split or "split", max_len, self.doc_stride))
        self.examples[key] = {"contexts": list(dataset["context"]),
                              "answers": [list(a["text"]) for a in dataset["answers"]]}
        first = len(self.windows)
        for row, offsets in zip(out["example_index"], out["offset_mapping"]):
            self.windows.append((key, int(row), np.asarray(offsets, dtype=np.int32)))  # (seq, 2)
        labels = [[s, e, first + i] for i, (s, e) in enumerate(zip(out["start_positions"], out["end_positions"]))]
        out = out.remove_columns(["offset_mapping", "example_index", "start_positions", "end_positions"])
        return out.add_column("labels", labels)

    def collator(self, tokenizer):
        return QACollator(tokenizer)

    # ---- prediction-layer losses ---------------------------------------------------------------------
    def output_mask(self, batch):
        return batch["attention_mask"]

    def loss_inputs(self, student, target, batch, feature):
        """Both sides as (2b, s) rows over sequence positions (padding at NEG): soft CE at T and hard CE
        then average over start and end of every window."""
        mask = batch["attention_mask"]
        rows = position_logits(student, mask)
        if feature == "logits":
            return rows, position_logits(target, mask), None
        return rows, target[:, :2].reshape(-1), None  # (2b,) gold start, end of each window

    def check_losses(self, losses: dict[str, float], key: str) -> None:
        bad = [n for n in losses if n in ("logits_mse", "hard_mse")]
        if bad:
            raise TaskKindError(f"config key '{key}.{bad[0]}': a regression loss on a question answering task; "
                                "use soft_ce (and hard_ce)")

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        if cfg.task_distill.augment.enabled:
            raise TaskKindError("config key 'task_distill.augment.enabled': TinyBERT word replacement would move "
                                "the answer spans; set it to false for question answering")
        try:
            check_budget(cfg.task.max_len, self.doc_stride, self.max_question_len)
        except ValueError as err:
            raise TaskKindError(str(err)) from None

    # ---- predictions and metrics ---------------------------------------------------------------------
    def rows(self, logits, labels, attention_mask):
        lengths = attention_mask.sum(-1)
        starts = attention_mask.shape[1] - lengths if left_padded(attention_mask) else np.zeros_like(lengths)
        logit_rows = [logits[i, starts[i]:starts[i] + lengths[i]] for i in range(len(logits))]  # (seq_i, 2)
        return logit_rows, list(labels) if labels is not None else []

    def flat_outputs(self, logits, attention_mask):
        """(2 * windows, 512): each window's start row and end row, padding and unused positions at NEG."""
        b, s, _ = logits.shape
        x = np.where(attention_mask[:, :, None].astype(bool), logits, NEG).transpose(0, 2, 1)  # (b, 2, s)
        out = np.full((b, 2, MAX_POSITIONS), NEG, dtype=np.float32)
        out[:, :, :s] = x
        return out.reshape(2 * b, MAX_POSITIONS)

    def unflatten(self, flat, attention_masks):
        """flat_outputs rows of consecutive batches back to (seq_i, 2) rows per window (real tokens only)."""
        out, k = [], 0
        for mask in attention_masks:
            for m in np.asarray(mask).astype(bool):
                real = np.flatnonzero(m)
                out.append(np.stack([flat[k, real], flat[k + 1, real]], axis=-1))  # (seq_i, 2)
                k += 2
        return out

    def agreement(self, reference, candidate) -> float:
        """Rows where the candidate's top position scores within TIE_LOGITS of the reference's best."""
        picked = np.take_along_axis(reference, candidate.argmax(-1)[:, None], axis=-1)[:, 0]
        return float(np.mean(picked >= reference.max(-1) - TIE_LOGITS))

    def answers(self, logit_rows, label_rows) -> dict[str, dict[int, str]]:
        """Predicted answer text per split and question row: the best span over all of its windows."""
        grouped: dict[str, list] = defaultdict(list)
        for logits, label in zip(logit_rows, label_rows):
            index = int(np.asarray(label)[WINDOW])
            if not 0 <= index < len(self.windows):
                raise TaskKindError(f"window {index} was not tokenized by this task kind; evaluate with the "
                                    "task's own tokenized splits")
            key, row, offsets = self.windows[index]
            logits = np.asarray(logits)
            if len(logits) != len(offsets):
                raise TaskKindError(f"window {index}: {len(logits)} logits for {len(offsets)} tokens")
            grouped[key].append((row, offsets, logits))
        out = {}
        for key, items in grouped.items():
            contexts = self.examples[key]["contexts"]
            rows = [r for r, _, _ in items]
            out[key] = best_spans({r: contexts[r] for r in rows}, rows, [o.tolist() for _, o, _ in items],
                                  [lg[:, 0] for _, _, lg in items], [lg[:, 1] for _, _, lg in items],
                                  self.n_best, self.max_answer_len)
        return out

    def metrics(self, logit_rows, label_rows, metric, label_names) -> dict[str, float]:
        """SQuAD v1.1 EM and F1 over the questions with at least one window in the rows, as fractions like
        every other metric here (the SQuAD leaderboard's percentages / 100)."""
        if not label_rows:
            raise TaskKindError("question answering metrics need the windows' labels (window index)")
        em = f1 = 0.0
        n = 0
        for key, predictions in self.answers(logit_rows, label_rows).items():
            gold = {r: self.examples[key]["answers"][r] for r in predictions}
            scores = squad_scores(predictions, gold)
            em += scores["exact_match"] * len(gold)
            f1 += scores["f1"] * len(gold)
            n += len(gold)
        return {"exact_match": em / n / 100.0, "f1": f1 / n / 100.0, "score": f1 / n / 100.0}


QUESTION_ANSWERING = QuestionAnswering()  # the kind of QA model folders; a task gets its own instance


@torch.no_grad()
def answer_questions(model, tokenizer, questions: list[str], contexts: list[str], max_len: int = 384,
                     doc_stride: int = 128, max_question_len: int = 64, n_best: int = 20,
                     max_answer_len: int = 30) -> list[str]:
    """Answer text for each (question, context) with any ``AutoModelForQuestionAnswering`` model (a student or
    pruned folder included): the same windows and post-processing as training and the metric. transformers 5
    dropped its "question-answering" pipeline; this is the few-line replacement."""
    examples = {"id": [str(i) for i in range(len(questions))], "question": list(questions), "context": list(contexts)}
    enc = window_features(examples, tokenizer, max_len, doc_stride, max_question_len)
    names = [n for n in ("input_ids", "token_type_ids", "attention_mask") if n in enc]
    batch = tokenizer.pad({n: enc[n] for n in names}, return_tensors="pt")
    device = next(model.parameters()).device
    out = model.eval()(**{k: v.to(device) for k, v in batch.items()})
    logits, _ = QUESTION_ANSWERING.rows(QUESTION_ANSWERING.logits(out).float().cpu().numpy(), None,
                                        batch["attention_mask"].numpy())  # (seq_i, 2) per window
    found = best_spans(dict(zip(examples["id"], examples["context"])), enc["example_id"], enc["offset_mapping"],
                       [lg[:, 0] for lg in logits], [lg[:, 1] for lg in logits], n_best, max_answer_len)
    return [found[i] for i in examples["id"]]
