"""What every task loader returns (TaskData) and raises (DataError), shared by the loaders of each kind."""
from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind
from distill.base.errors import InputError

SPLIT_SEED = 20201  # fixed: splits never depend on the experiment seed


class DataError(InputError):
    pass


@dataclass
class TaskData:
    name: str
    train: Dataset
    dev: Dataset
    test: Dataset
    label_names: list[str] | None  # None for regression
    metric: str  # accuracy | f1 | mcc | pearson | entity_f1
    note: str = ""  # how the labels were read (classification or regression, and why), printed when loaded
    kind: TaskKind = SEQUENCE_CLASSIFICATION  # what stages ask: features, heads, losses' mask, metric, export

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def has_pair(self) -> bool:
        return "text_pair" in self.train.column_names
