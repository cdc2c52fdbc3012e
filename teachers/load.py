"""Load a teacher by hub name, local folder or ``minilm-l6`` (the embedded all-MiniLM-L6-v2).

The loaded model uses eager attention so that ``output_attentions=True`` really returns one map per
layer (the default sdpa attention silently returns none).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase)

from distill.base import assets
from distill.base.errors import UserError

EMBEDDED = {"minilm-l6": assets.minilm_dir}


class TeacherLoadError(UserError, OSError):
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


HUB_PROBE_TIMEOUT_S = 3.0  # one request to the hub before a hub name is loaded; past it the hub counts as down
_NO_NETWORK_HINT = ("set teacher.name to a local model folder (a save_pretrained output) or teacher.name=minilm-l6 "
                    "(the embedded all-MiniLM-L6-v2, no download)")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


@functools.lru_cache(maxsize=None)
def _probe_hub(endpoint: str) -> str | None:
    """None when ``endpoint`` answers an HTTP request (any status) within HUB_PROBE_TIMEOUT_S, else why not.
    Through huggingface_hub's own client, so its proxy settings apply. Asked once per process and endpoint."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S, follow_redirects=False)
    except Exception as err:  # the client raises its own connect/timeout/DNS error types
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"the hub at {endpoint} cannot be reached ({reason}; waited up to {HUB_PROBE_TIMEOUT_S:g} s)"
    return None


def hub_unreachable() -> str | None:
    """None when the Hugging Face hub can be asked; else why not (offline mode is set, or it did not answer)."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_true(var):
            return f"{var}={os.environ[var].strip()} is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return _probe_hub(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)


def _hub_cached(name: str) -> bool:
    """True when the local Hugging Face cache holds this hub model's config.json."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a name that is no valid repo id: not cached
        return False


def _hub_access(name: str) -> dict:
    """Loader keyword arguments for a hub name: none when the hub answers, ``local_files_only`` when it does
    not but the model is cached (no retries against a dead network); a TeacherLoadError, at once, otherwise."""
    why = hub_unreachable()
    if why is None:
        return {}
    if _hub_cached(name):
        return {"local_files_only": True}
    raise TeacherLoadError(f"could not load teacher {name!r}: {why}, and the local Hugging Face cache does not "
                           f"hold it; {_NO_NETWORK_HINT}")


def _load(loader, name: str, **kwargs):
    path = resolve_teacher_path(name)
    if path == name and not Path(name).exists():  # a hub name
        kwargs = {**kwargs, **_hub_access(name)}
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


def load_classifier(name: str, label_names: list[str] | None, kind) -> PreTrainedModel:
    """The teacher with a fresh head of the task kind (``kind.auto_class`` and ``kind.head_config``: a
    regression head when ``label_names`` is None)."""
    model = _load(kind.auto_class.from_pretrained, name, **kind.head_config(label_names))
    return use_eager_attention(model)


def load_backbone(name: str, with_mlm_head: bool = False) -> PreTrainedModel:
    """The pretrained encoder (for general distillation), with its MLM head when asked and present."""
    loader = AutoModelForMaskedLM.from_pretrained if with_mlm_head else AutoModel.from_pretrained
    return use_eager_attention(_load(loader, name))


def finetuned_architectures(name: str | Path) -> list[str]:
    """Model class names recorded in a fine-tuned teacher's config (local folder or hub name)."""
    return list(load_config(str(name)).architectures or [])


def finetuned_labels(name: str | Path) -> list[str] | None:
    """Label names in a fine-tuned teacher's config, local folder or hub name (None for regression)."""
    config = load_config(str(name))
    if config.problem_type == "regression" or config.num_labels == 1:
        return None
    return [config.id2label[i] for i in range(config.num_labels)]


def local_model_folder(name: str) -> Path:
    """A folder with the model's files: a local or embedded folder as it is, a hub name from the cache
    (downloaded first when online), so later steps can read and copy its files."""
    path = Path(resolve_teacher_path(name))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    access = _hub_access(name)
    try:
        return Path(snapshot_download(name, **access,
                                      ignore_patterns=["*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "tf_*", "flax_*",
                                                       "*.tflite", "coreml/*", "openvino/*"]))
    except Exception as err:  # huggingface_hub raises several types for a missing or unreachable repo
        raise TeacherLoadError(f"could not fetch teacher {name!r} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                               "without network access use a local folder or teacher.name=minilm-l6") from None
