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
