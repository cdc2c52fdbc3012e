"""Load a teacher by hub name, local folder or ``minilm-l6`` (the embedded all-MiniLM-L6-v2).

The loaded model uses eager attention so that ``output_attentions=True`` really returns one map per
layer (the default sdpa attention silently returns none).
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                          AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase)

from distill import assets

EMBEDDED = {"minilm-l6": assets.minilm_dir}


class TeacherLoadError(OSError):
    pass


def resolve_teacher_path(name: str) -> str:
    """Local folder or embedded name -> folder path; anything else is passed on as a hub name."""
    if name in EMBEDDED:
        return str(EMBEDDED[name]())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TeacherLoadError(f"teacher folder {name!r} has no config.json; point teacher.name at a "
                                   "Hugging Face model folder (save_pretrained output)")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise TeacherLoadError(f"teacher folder {name!r} does not exist")
    return name


def _load(loader, name: str, **kwargs):
    path = resolve_teacher_path(name)
    try:
        return loader(path, **kwargs)
    except OSError as err:
        raise TeacherLoadError(
            f"could not load teacher {name!r} ({str(err).splitlines()[0]}); without network access use a local "
            "folder or teacher.name=minilm-l6") from None


def use_eager_attention(model: PreTrainedModel) -> PreTrainedModel:
    model.set_attn_implementation("eager")
    return model


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    return _load(AutoTokenizer.from_pretrained, name)


def load_config(name: str):
    return _load(AutoConfig.from_pretrained, name)


def has_mlm_head(name: str) -> bool:
    """True when the checkpoint carries masked-language-model weights (e.g. bert-large-uncased)."""
    archs = load_config(name).architectures or []
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs)


def load_classifier(name: str, label_names: list[str] | None) -> PreTrainedModel:
    """Sequence classifier on top of the teacher; regression when ``label_names`` is None."""
    num_labels = 1 if label_names is None else len(label_names)
    kwargs: dict = {"num_labels": num_labels}
    if label_names is not None:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
        kwargs["problem_type"] = "single_label_classification"
    else:
        kwargs["problem_type"] = "regression"
    model = _load(AutoModelForSequenceClassification.from_pretrained, name, **kwargs)
    return use_eager_attention(model)


def load_backbone(name: str, with_mlm_head: bool = False) -> PreTrainedModel:
    """The pretrained encoder (for general distillation), with its MLM head when asked and present."""
    loader = AutoModelForMaskedLM.from_pretrained if with_mlm_head else AutoModel.from_pretrained
    return use_eager_attention(_load(loader, name))


def finetuned_labels(folder: Path) -> list[str] | None:
    """Label names stored in a fine-tuned teacher's config (None for regression)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    if config.get("problem_type") == "regression":
        return None
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]
