"""Extractive question answering (SQuAD v1.1): logits (batch, seq, 2), start and end stacked.

Inside the pipeline a window's logits are one (seq, 2) row, so caching, rows and export checks work as for
per-token tasks; the kind turns them into the two per-position distributions the losses compare (soft CE
over the sequence positions of the start and of the end, padding excluded, averaged: the DistilBERT /
TextBrewer recipe). Labels of a window are what the model trains on, ``[start_position, end_position]``.
What the metric needs travels as columns of the tokenized split, as in Hugging Face's QA post-processing:
``question_id`` and ``offset_mapping`` (each token's character span in the context, -1 outside it). A batch
carries them (``QACollator``), ``gold`` turns them into one ``QAWindow`` per window, and the metric picks the
best span over every window of a question and scores EM/F1 against the untokenized split's gold texts. The
kind holds no state: any process, any order of windows, any instance with the same settings scores the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from datasets import Array2D

from distill.tasks.base import TaskKind, TaskKindError
from distill.tasks.squad_features import NO_OFFSET, WindowStats, best_spans, check_budget, window_features
from distill.tasks.squad_metric import squad_scores
from distill.tasks.token_classification import left_padded, pad_rows

NEG = -1e4  # logit given to padding positions: exp() underflows to 0, log-probs stay finite
# export checks: an exported model agrees on a start (end) row when the position it ranks first is within this
# many logits of PyTorch's best there; near-ties between neighbouring tokens are common in QA and flip under
# INT8 noise without changing the answer's score (measured: 64% exact argmax agreement, F1 10.22 -> 10.05)
TIE_LOGITS = 1.0
MAX_POSITIONS = 512  # export checks compare windows padded to BERT's longest sequence
# the columns a scored split carries beside the model's: each window's question and its tokens' context offsets.
# Not "example_id": the engine already uses that name for a training set's row index (feature and logit caches).
WINDOW_COLUMNS = ("question_id", "offset_mapping")
# offsets as a (seq, 2) int32 array column, -1 outside the context instead of HF's None: a None-holed list is
# turned into one tensor per token by the torch formatter (measured 5 ms a window, 0.45 ms as an array)
OFFSETS = Array2D((None, 2), "int32")


class QAWindow(NamedTuple):
    """What the metric needs of one window (a row of ``QuestionAnswering.gold``)."""
    question_id: str  # the question's ``id`` in the untokenized split
    offsets: np.ndarray  # (seq_i, 2) context character span of each real token, NO_OFFSET outside the context


def position_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(b, s, 2) start/end logits -> (2b, s) rows [window 0 start, window 0 end, window 1 start, ...],
    padding positions set to NEG so a softmax over the row ignores them."""
    x = logits.float().transpose(1, 2)  # (b, 2, s)
    x = x.masked_fill(attention_mask[:, None, :] == 0, NEG)
    return x.reshape(-1, x.shape[-1])  # (2b, s)


class QACollator:
    """Pads inputs with the tokenizer; labels stay (batch, 2); cached teacher logits (seq, 2) padded with 0
    (the losses mask padding anyway); a scored split's ``offset_mapping`` padded with -1 to (batch, seq, 2) and
    its ``question_id`` kept as a list of strings."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        features = [dict(f) for f in features]
        labels = [f.pop("labels") for f in features] if "labels" in features[0] else None
        teacher = [f.pop("teacher_logits") for f in features] if "teacher_logits" in features[0] else None
        windows = {c: [f.pop(c) for f in features] for c in WINDOW_COLUMNS if c in features[0]}
        batch = self.tokenizer.pad(features, return_tensors="pt")
        left = self.tokenizer.padding_side == "left"
        if labels is not None:
            batch["labels"] = torch.stack([torch.as_tensor(x, dtype=torch.long) for x in labels])  # (batch, 2)
        if teacher is not None:
            batch["teacher_logits"] = pad_rows(teacher, batch["input_ids"].shape[1], left, 0.0, (2,),
                                               torch.float32)  # (batch, seq, 2)
        if "offset_mapping" in windows:
            batch["offset_mapping"] = pad_rows(windows["offset_mapping"], batch["input_ids"].shape[1], left,
                                               NO_OFFSET[0], (2,), torch.long)  # (batch, seq, 2)
        if "question_id" in windows:
            batch["question_id"] = [str(q) for q in windows["question_id"]]
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
        """Windows of every question: the model's inputs, ``length`` and ``labels`` [start, end]; every split but
        train also gets ``question_id`` and ``offset_mapping`` (WINDOW_COLUMNS), what the metric reads from a
        batch. Nothing scores the train split, so its windows carry labels only (as HF's prepare_train_features
        does), and a training batch stays all tensors. The map function is module-level: ``datasets`` hashes
        only these settings and the tokenizer, never earlier splits."""
        scored = split != "train"
        if scored:
            _check_unique_ids(dataset["id"], split)
        stats = WindowStats()
        out = dataset.map(_window_columns, batched=True, remove_columns=dataset.column_names, desc="tokenize",
                          load_from_cache_file=False,
                          fn_kwargs={"tokenizer": tokenizer, "max_len": max_len, "doc_stride": self.doc_stride,
                                     "max_question_len": self.max_question_len, "scored": scored, "stats": stats})
        print(stats.line(split or "split", max_len, self.doc_stride))
        return out.cast_column("offset_mapping", OFFSETS) if scored else out

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
        super().check_config(cfg)  # augmentation replaces question words only (distill.data.augment.ReplaceRule)
        try:
            check_budget(cfg.task.max_len, self.doc_stride, self.max_question_len)
        except ValueError as err:
            raise TaskKindError(str(err)) from None

    # ---- predictions and metrics ---------------------------------------------------------------------
    def gold(self, batch) -> list:
        """Each window's QAWindow (question id, offsets of its real tokens) when the batch carries the
        WINDOW_COLUMNS; else its [start, end] labels, which train but cannot be scored."""
        if not all(c in batch for c in WINDOW_COLUMNS):
            return super().gold(batch)
        mask = np.asarray(batch["attention_mask"])
        offsets = np.asarray(batch["offset_mapping"])  # (batch, seq, 2)
        return [QAWindow(q, offs) for q, offs in zip(batch["question_id"], self.rows(offsets, None, mask)[0])]

    def rows(self, logits, labels, attention_mask):
        """(seq_i, 2) logits of each window's real tokens; ``labels`` (a (batch, 2) array or the QAWindow rows
        of ``gold``) one row per window."""
        lengths = attention_mask.sum(-1)
        starts = attention_mask.shape[1] - lengths if left_padded(attention_mask) else np.zeros_like(lengths)
        logit_rows = [logits[i, starts[i]:starts[i] + lengths[i]] for i in range(len(logits))]  # (seq_i, 2)
        return logit_rows, list(labels) if labels is not None else []

    def label_rows(self, labels, attention_mask) -> list:
        return list(labels)

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

    def answers(self, logit_rows, label_rows, examples) -> dict[str, str]:
        """Predicted answer text per question id, for the questions with a window in the rows: the best span
        over all of their windows. ``label_rows``: QAWindow rows (``gold``); ``examples``: the untokenized split
        the windows come from (a Dataset or dict with columns id and context)."""
        return self._answers(logit_rows, _scored_windows(label_rows), _by_id(examples, "context"))

    def metrics(self, logit_rows, label_rows, metric, label_names, examples=None) -> dict[str, float]:
        """SQuAD v1.1 EM and F1 over the questions with at least one window in the rows, as fractions like
        every other metric here (the SQuAD leaderboard's percentages / 100). ``label_rows``: the QAWindow rows
        of ``gold``; ``examples``: the untokenized split (id, context, answers)."""
        if not label_rows:
            raise TaskKindError("question answering metrics need the windows' gold rows (kind.gold(batch))")
        windows = _scored_windows(label_rows)
        contexts, answers = _by_id(examples, "context", "answers")
        predictions = self._answers(logit_rows, windows, contexts)
        scores = squad_scores(predictions, {q: list(answers[q]["text"]) for q in predictions})
        return {"exact_match": scores["exact_match"] / 100.0, "f1": scores["f1"] / 100.0,
                "score": scores["f1"] / 100.0}

    def _answers(self, logit_rows, windows: list[QAWindow], contexts: dict[str, str]) -> dict[str, str]:
        for w, logits in zip(windows, logit_rows):
            if w.question_id not in contexts:
                raise TaskKindError(f"question {w.question_id!r} of a window is not in the examples given; pass the "
                                    "untokenized split the windows were tokenized from")
            if len(logits) != len(w.offsets):
                raise TaskKindError(f"question {w.question_id!r}: {len(logits)} logits for a window of "
                                    f"{len(w.offsets)} tokens")
        asked = {w.question_id: contexts[w.question_id] for w in windows}  # first-seen order
        return best_spans(asked, [w.question_id for w in windows], [w.offsets for w in windows],
                          [np.asarray(lg)[:, 0] for lg in logit_rows], [np.asarray(lg)[:, 1] for lg in logit_rows],
                          self.n_best, self.max_answer_len)


def _window_columns(batch: dict, tokenizer, max_len: int, doc_stride: int, max_question_len: int, scored: bool,
                    stats: WindowStats) -> dict:
    """Batched ``datasets.map`` function of ``QuestionAnswering.tokenize`` (module-level: it closes over nothing)."""
    out = window_features(batch, tokenizer, max_len, doc_stride, max_question_len, stats)
    out["labels"] = [[s, e] for s, e in zip(out.pop("start_positions"), out.pop("end_positions"))]
    if not scored:
        for column in WINDOW_COLUMNS:
            out.pop(column)
    return out


def _check_unique_ids(ids, split: str) -> None:
    seen = set()
    for qid in ids:
        if qid in seen:
            raise TaskKindError(f"question id {qid!r} appears twice in the {split or 'given'} split; the metric "
                                "finds a window's question by its id, so ids must be unique within a split")
        seen.add(qid)


def _scored_windows(label_rows) -> list[QAWindow]:
    rows = list(label_rows)
    if not all(isinstance(r, QAWindow) for r in rows):
        raise TaskKindError("question answering metrics need each window's question_id and offset_mapping: take the "
                            "gold rows with kind.gold(batch) from a loader that keeps those columns (not the "
                            "[start, end] labels, and not the train split, which carries neither)")
    return rows


def _by_id(examples, *columns: str):
    """{question id: value} of each of ``columns`` of the untokenized split (a Dataset or a dict of columns)."""
    if examples is None:
        raise TaskKindError("question answering metrics need the untokenized split the windows come from (its "
                            "contexts and gold answers): pass examples=<that split>")
    ids = list(examples["id"])
    _check_unique_ids(ids, "")
    tables = tuple(dict(zip(ids, examples[c])) for c in columns)
    return tables[0] if len(tables) == 1 else tables


QUESTION_ANSWERING = QuestionAnswering()  # the kind of QA model folders; a task's has its own settings


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
    found = best_spans(dict(zip(examples["id"], examples["context"])), enc["question_id"], enc["offset_mapping"],
                       [lg[:, 0] for lg in logits], [lg[:, 1] for lg in logits], n_best, max_answer_len)
    return [found[i] for i in examples["id"]]
