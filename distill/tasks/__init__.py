"""Task kinds: what differs between sentence classification, token classification and extractive QA.

Stages ask ``ctx.data.kind`` (a TaskKind) instead of assuming ``(batch, labels)`` logits; a model folder's
kind is read from its architecture name.
"""
from __future__ import annotations

import json
from pathlib import Path

from distill.tasks.base import TaskKind, TaskKindError
from distill.tasks.question_answering import QUESTION_ANSWERING, QuestionAnswering
from distill.tasks.sequence_classification import SEQUENCE_CLASSIFICATION
from distill.tasks.token_classification import TOKEN_CLASSIFICATION

KINDS: dict[str, TaskKind] = {k.name: k for k in (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION,
                                                  QUESTION_ANSWERING)}

__all__ = ["KINDS", "QUESTION_ANSWERING", "SEQUENCE_CLASSIFICATION", "TOKEN_CLASSIFICATION", "QuestionAnswering",
           "TaskKind", "TaskKindError", "kind_of_folder"]


def kind_of_folder(folder: str | Path) -> TaskKind:
    """The kind of a fine-tuned model folder, from the architecture recorded in its config.json."""
    config = json.loads((Path(folder) / "config.json").read_text())
    for arch in config.get("architectures") or []:
        for kind in KINDS.values():
            if arch.endswith(kind.architecture_suffix):
                return kind
    return SEQUENCE_CLASSIFICATION
