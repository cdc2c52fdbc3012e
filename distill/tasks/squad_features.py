"""Extractive QA features as the field builds them, and the way back from logits to answer text.

Features (``window_features``): question + context in one sequence, the context cut into overlapping windows of
``max_len`` tokens (``doc_stride`` tokens shared by consecutive windows), with the offset mapping kept
for the context tokens. Training windows carry the answer's token start/end, or point at [CLS]
(position 0) when the answer is not wholly inside the window.

Post-processing: over every window of a question, the ``n_best`` highest start and end logits are
paired; a span is valid when both ends lie in the context, end >= start and it is at most
``max_answer_len`` tokens long; the best valid span by start + end logit is the answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from distill.base.errors import InputError

NO_OFFSET = (-1, -1)  # offset of a token that is not part of the context (question, specials, padding)


class QAFeatureError(InputError):
    pass


@dataclass
class WindowStats:
    questions: int = 0
    windows: int = 0
    long_questions: int = 0  # questions cut to max_question_len tokens
    multi_window: int = 0  # contexts that needed more than one window
    answer_outside: int = 0  # training windows whose answer lies elsewhere (they point at [CLS])
    answer_in_no_window: int = 0  # questions whose gold answer is wholly inside none of their windows
    per_question: list[int] = field(default_factory=list)

    def line(self, split: str, max_len: int, doc_stride: int) -> str:
        most = max(self.per_question, default=0)
        return (f"[data] {split}: {self.questions} questions -> {self.windows} windows of <= {max_len} tokens "
                f"(doc_stride {doc_stride}); {self.multi_window} contexts need several windows (most: {most}); "
                f"{self.long_questions} questions cut to fit" + (
                    f"; WARNING {self.answer_in_no_window} answers fit in no window (longer than task.doc_stride "
                    "tokens and split by every window boundary): those questions only teach [CLS]; raise "
                    "task.doc_stride or task.max_len" if self.answer_in_no_window else ""))


def _cut_questions(questions: list[str], tokenizer, max_question_len: int,
                   stats: WindowStats) -> tuple[list[str], int]:
    """Questions longer than ``max_question_len`` tokens are cut (at a token boundary) so a window
    always has room for context; SQuAD's leading whitespace is stripped. Returns the questions and
    the longest one's token count."""
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out, longest = [], 0
    for q, offsets in zip(questions, enc["offset_mapping"]):
        if len(offsets) > max_question_len:
            stats.long_questions += 1
            q = q[:offsets[max_question_len - 1][1]]
        out.append(q)
        longest = max(longest, min(len(offsets), max_question_len))
    return out, longest


def check_budget(max_len: int, doc_stride: int, question_len: int) -> None:
    """The context part of a window must be longer than the overlap, or windows never advance."""
    budget = max_len - question_len - 3  # [CLS] question [SEP] context [SEP]
    if budget <= doc_stride:
        raise QAFeatureError(
            f"task.max_len={max_len} leaves {budget} context tokens per window after a question of "
            f"{question_len} tokens, not more than task.doc_stride={doc_stride}; raise task.max_len or lower "
            "task.doc_stride / task.max_question_len")


def _windows(examples: dict, tokenizer, max_len: int, doc_stride: int, max_question_len: int,
             stats: WindowStats):
    if not getattr(tokenizer, "is_fast", False):
        raise QAFeatureError("question answering needs a fast tokenizer (offset mappings); the teacher's tokenizer "
                             f"{type(tokenizer).__name__} is not one")
    pad_right = tokenizer.padding_side == "right"
    questions, longest = _cut_questions(examples["question"], tokenizer, max_question_len, stats)
    check_budget(max_len, doc_stride, longest)
    first, second = (questions, examples["context"]) if pad_right else (examples["context"], questions)
    enc = tokenizer(first, second, truncation="only_second" if pad_right else "only_first", max_length=max_len,
                    stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    context_id = 1 if pad_right else 0
    sample = enc.pop("overflow_to_sample_mapping")
    counts = np.bincount(sample, minlength=len(questions))
    stats.questions += len(questions)
    stats.windows += len(sample)
    stats.multi_window += int((counts > 1).sum())
    stats.per_question += counts.tolist()
    return enc, sample, context_id


def _answer_span(offsets, seq: list, context_id: int, answers: dict) -> tuple[int, int] | None:
    """Token start/end of the first gold answer in one window, or None when it is not wholly inside."""
    a_start = answers["answer_start"][0]
    a_end = a_start + len(answers["text"][0])  # exclusive character end
    ctx = [j for j, s in enumerate(seq) if s == context_id]
    lo, hi = ctx[0], ctx[-1]
    if offsets[lo][0] > a_start or offsets[hi][1] < a_end:
        return None
    s = lo
    while s <= hi and offsets[s][1] <= a_start:
        s += 1
    e = hi
    while e >= lo and offsets[e][0] >= a_end:
        e -= 1
    return s, e


def window_features(examples: dict, tokenizer, max_len: int, doc_stride: int, max_question_len: int = 64,
                    stats: WindowStats | None = None) -> dict:
    """A batch of questions as windows: start/end positions (where ``answers`` are given), each window's
    ``question_id`` and ``offset_mapping`` (the context character span of each token, NO_OFFSET elsewhere)."""
    stats = stats if stats is not None else WindowStats()
    enc, sample, context_id = _windows(examples, tokenizer, max_len, doc_stride, max_question_len, stats)
    starts, ends, ids, offsets_out = [], [], [], []
    answered = set()  # questions (rows of the batch) with the answer wholly inside at least one window
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        if "answers" in examples:
            span = _answer_span(offsets, seq, context_id, examples["answers"][sample[i]])
            if span is None:
                stats.answer_outside += 1
            else:
                answered.add(int(sample[i]))
            starts.append(span[0] if span else 0)  # [CLS]: the answer is not in this window
            ends.append(span[1] if span else 0)
        ids.append(examples["id"][sample[i]])
        offsets_out.append([list(o) if s == context_id else list(NO_OFFSET) for o, s in zip(offsets, seq)])
    out = dict(enc)
    if "answers" in examples:
        stats.answer_in_no_window += len(set(int(x) for x in sample) - answered)
        out["start_positions"], out["end_positions"] = starts, ends
    out["offset_mapping"] = offsets_out
    out["question_id"] = ids
    out["length"] = [len(x) for x in enc["input_ids"]]
    return out


def best_spans(contexts: dict[str, str], feature_ids: list[str], offsets: list, start_logits: list,
               end_logits: list, n_best: int = 20, max_answer_len: int = 30) -> dict[str, str]:
    """Answer text per question id from per-window logits (rows of any length; padding beyond each
    window's offsets is ignored)."""
    best: dict[str, tuple[float, str]] = {}
    for qid, offs, s_log, e_log in zip(feature_ids, offsets, start_logits, end_logits):
        n = len(offs)
        s_log, e_log = np.asarray(s_log)[:n], np.asarray(e_log)[:n]
        starts = np.argsort(s_log)[::-1][:n_best]
        ends = np.argsort(e_log)[::-1][:n_best]
        for s in starts:
            if offs[s][0] < 0:
                continue
            for e in ends:
                if offs[e][0] < 0 or e < s or e - s + 1 > max_answer_len:
                    continue
                score = float(s_log[s] + e_log[e])
                if qid not in best or score > best[qid][0]:
                    best[qid] = (score, contexts[qid][offs[s][0]:offs[e][1]])
    return {qid: best[qid][1] if qid in best else "" for qid in contexts}
