"""BERT with per-layer head counts and FFN widths, for pruned students.

Stock BertConfig has one head count and one FFN width for all layers, and transformers 5 dropped
``pruned_heads``, so a head-pruned BERT cannot be reloaded with ``from_pretrained``. ``PrunedBertConfig``
records ``layer_heads`` and ``layer_ffn`` (with a fixed ``head_size``); the model classes rebuild
exactly that shape. Importing ``students`` registers them with the Auto classes, so
``AutoModelForSequenceClassification.from_pretrained(folder)`` (or ``AutoModelForTokenClassification`` for a
NER student, ``AutoModelForQuestionAnswering`` for a QA student, also inside ``transformers.pipeline``) works
on a pruned folder. Weights are
plain safetensors.
"""
from __future__ import annotations

from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig,
                          BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification, BertModel)


class PrunedBertConfig(BertConfig):
    model_type = "pruned-bert"

    def __init__(self, layer_heads: list[int] | None = None, layer_ffn: list[int] | None = None,
                 head_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        layers = self.num_hidden_layers
        self.head_size = head_size or self.hidden_size // self.num_attention_heads
        self.layer_heads = list(layer_heads) if layer_heads is not None else [self.num_attention_heads] * layers
        self.layer_ffn = list(layer_ffn) if layer_ffn is not None else [self.intermediate_size] * layers
        if len(self.layer_heads) != layers or len(self.layer_ffn) != layers:
            raise ValueError(f"layer_heads ({len(self.layer_heads)}) and layer_ffn ({len(self.layer_ffn)}) need one "
                             f"entry per layer ({layers})")
        if min(self.layer_heads, default=1) < 1 or min(self.layer_ffn, default=1) < 1:
            raise ValueError("every layer needs at least one head and one FFN neuron")


def reshape_layers(encoder: nn.Module, config: PrunedBertConfig) -> None:
    """Replace each layer's projections with the recorded sizes (weights are loaded afterwards)."""
    hidden, head = config.hidden_size, config.head_size
    for layer, heads, ffn in zip(encoder.layer, config.layer_heads, config.layer_ffn):
        attn = layer.attention.self
        width = heads * head
        attn.query, attn.key, attn.value = (nn.Linear(hidden, width) for _ in range(3))
        attn.num_attention_heads, attn.attention_head_size, attn.all_head_size = heads, head, width
        attn.scaling = head ** -0.5
        layer.attention.output.dense = nn.Linear(width, hidden)
        layer.intermediate.dense = nn.Linear(hidden, ffn)
        layer.output.dense = nn.Linear(ffn, hidden)


class PrunedBertModel(BertModel):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        reshape_layers(self.encoder, config)
        self.post_init()


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        reshape_layers(self.bert.encoder, config)
        self.post_init()


class PrunedBertForMaskedLM(BertForMaskedLM):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        reshape_layers(self.bert.encoder, config)
        self.post_init()


class PrunedBertForTokenClassification(BertForTokenClassification):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        reshape_layers(self.bert.encoder, config)
        self.post_init()


class PrunedBertForQuestionAnswering(BertForQuestionAnswering):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        reshape_layers(self.bert.encoder, config)
        self.post_init()


PRUNED_CLASSES = {BertForSequenceClassification: PrunedBertForSequenceClassification,
                  BertForTokenClassification: PrunedBertForTokenClassification,
                  BertForQuestionAnswering: PrunedBertForQuestionAnswering,
                  BertForMaskedLM: PrunedBertForMaskedLM, BertModel: PrunedBertModel}


def pruned_class_for(model: nn.Module) -> type:
    """The PrunedBert class with the same head as ``model`` (a Bert* or PrunedBert* model)."""
    for plain, pruned in PRUNED_CLASSES.items():
        if isinstance(model, (plain, pruned)):
            return pruned
    raise TypeError(f"no pruned counterpart for {type(model).__name__}; expected a BERT model with a "
                    "sequence, token, question answering or MLM head")


def register() -> None:
    AutoConfig.register("pruned-bert", PrunedBertConfig, exist_ok=True)
    AutoModel.register(PrunedBertConfig, PrunedBertModel, exist_ok=True)
    AutoModelForSequenceClassification.register(PrunedBertConfig, PrunedBertForSequenceClassification, exist_ok=True)
    AutoModelForMaskedLM.register(PrunedBertConfig, PrunedBertForMaskedLM, exist_ok=True)
    AutoModelForTokenClassification.register(PrunedBertConfig, PrunedBertForTokenClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(PrunedBertConfig, PrunedBertForQuestionAnswering, exist_ok=True)


def pruned_config_from(model: nn.Module) -> PrunedBertConfig:
    """A PrunedBertConfig describing ``model``'s current (possibly pruned) layer shapes."""
    base = model.base_model
    heads, ffn, sizes = [], [], set()
    for layer in base.encoder.layer:
        attn = layer.attention.self
        heads.append(attn.query.out_features // attn.attention_head_size)
        sizes.add(attn.attention_head_size)
        ffn.append(layer.intermediate.dense.out_features)
    if len(sizes) != 1:
        raise ValueError(f"layers have different head sizes {sorted(sizes)}; pruning keeps the head size")
    data = model.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "layer_heads", "layer_ffn", "head_size"):
        data.pop(key, None)
    config = PrunedBertConfig(layer_heads=heads, layer_ffn=ffn, head_size=sizes.pop(), **data)
    config.architectures = [type(model).__name__.replace("Bert", "PrunedBert", 1)
                            if not type(model).__name__.startswith("PrunedBert") else type(model).__name__]
    return config


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules (with query/key/value projections), in layer order."""
    blocks = [m for _, m in model.named_modules()
              if all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value"))]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no BERT-style self-attention (query/key/value) modules")
    return blocks
