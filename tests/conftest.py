import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification  # noqa: E402

from distill.base import assets  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**kw) -> BertConfig:
    base = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=128, num_labels=2)
    base.update(kw)
    return BertConfig(**base)


TRAINING_SECTIONS = ("teacher.finetune", "general.train", "task_distill.intermediate", "task_distill.prediction",
                     "prune.recovery")


def tiny_overrides(tmp_path, teacher, task, *extra, hidden=16, ffn=32, max_len=32, steps=2, save_every=0,
                   sections=()) -> list[str]:
    """The config overrides of a tiny run, shared by the pipeline tests: outputs under ``tmp_path / "runs"``, the
    given teacher and task folders, a custom 2-layer student (4 heads, ``hidden``/``ffn`` wide), then for each of
    ``sections`` (e.g. ``TRAINING_SECTIONS``) ``steps`` steps of batch 8 logging every step. ``extra`` comes last, so
    a test's own overrides win over these."""
    out = [f"output_dir={tmp_path / 'runs'}", f"teacher.name={teacher}", f"task.name={task}", f"task.max_len={max_len}",
           "student.preset=custom", "student.layers=2", f"student.hidden={hidden}", "student.heads=4",
           f"student.ffn={ffn}"]
    for section in sections:
        out += [f"{section}.max_steps={steps}", f"{section}.batch_size=8", f"{section}.save_every={save_every}",
                f"{section}.log_every=1"]
    return out + list(extra)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(assets.minilm_dir())


def _tiny_folder(tmp_path_factory, tokenizer, name: str, model_class, config=None):
    """A random tiny BERT (seed 0) of ``model_class`` saved with the real MiniLM tokenizer."""
    folder = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    model_class(config or tiny_config()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer):
    """A random tiny BERT classifier folder using the real MiniLM vocabulary."""
    return _tiny_folder(tmp_path_factory, tokenizer, "tiny_teacher", BertForSequenceClassification)


@pytest.fixture(scope="session")
def tiny_mlm_teacher_dir(tmp_path_factory, tokenizer):
    config = tiny_config()
    config.architectures = ["BertForMaskedLM"]
    return _tiny_folder(tmp_path_factory, tokenizer, "tiny_mlm", BertForMaskedLM, config)


@pytest.fixture()
def task_folder(tmp_path):
    """A local task with string labels, split into train/dev/test files, in a folder of its own: every file of a
    task folder is part of the stages' fingerprints, so a test's corpus or run outputs must not sit in it."""
    import pandas as pd

    folder = tmp_path / "task"
    folder.mkdir()
    rows = []
    for i in range(60):
        good = i % 3 != 0
        rows.append({"text": f"{'a wonderful' if good else 'a dreadful'} film number {i}",
                     "label": "pos" if good else "neg"})
    frame = pd.DataFrame(rows)
    frame.iloc[:40].to_csv(folder / "train.csv", index=False)
    frame.iloc[40:50].to_csv(folder / "dev.csv", index=False)
    frame.iloc[50:].to_json(folder / "test.jsonl", orient="records", lines=True)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tokenizer):
    """A tiny pretrained-style encoder with no task head (as bert-large-uncased on the hub): the teacher the
    NER, QA and regression pipeline tests fine-tune."""
    from transformers import BertModel

    return _tiny_folder(tmp_path_factory, tokenizer, "tiny_encoder", BertModel)
