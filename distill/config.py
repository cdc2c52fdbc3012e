"""Typed configuration: every knob, its default and why, in one place.

An experiment is a YAML file whose keys mirror these dataclasses; command-line overrides use
``key.sub=value``. Unknown keys, wrong types and impossible values raise ``ConfigError`` naming the
key, before any weight is loaded.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distill.base.errors import UserError


class ConfigError(UserError, ValueError):
    """A config key is unknown, has the wrong type or an impossible value."""


@dataclass
class TrainConfig:
    """One optimisation run; every stage (teacher fine-tuning, distillation, recovery) uses it."""

    epochs: float = 1.0  # passes over the training data (fractions allowed); max_steps wins if > 0
    max_steps: int = 0  # stop after this many optimizer steps; 0 = use epochs
    batch_size: int = 32  # examples per forward pass (per device)
    grad_accum: int = 1  # forward passes per optimizer step: effective batch = batch_size * grad_accum
    lr: float = 5e-5  # peak AdamW learning rate, reached after warmup
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to biases and LayerNorm)
    warmup_ratio: float = 0.1  # fraction of steps with linear warmup, then linear decay to 0
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    eval_every: int = 0  # evaluate every N optimizer steps; 0 = only at the end
    save_every: int = 100  # write a resumable checkpoint every N optimizer steps
    log_every: int = 10  # append metrics.jsonl / wandb every N optimizer steps
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on GPU, fp32 on CPU
    # attention kernel of the model this run trains (the teacher inside distillation always runs sdpa: the
    # losses read queries and keys through hooks, never the maps). auto: sdpa on CUDA, eager elsewhere, so the
    # CPU reference figures stay bit-identical; eager is kept where maps or a trace are needed (ONNX export,
    # torch-pruning), whatever this says.
    attention: Literal["auto", "sdpa", "eager"] = "auto"

    def validate(self, prefix: str) -> None:
        _check(self.epochs > 0 or self.max_steps > 0, f"{prefix}.epochs", "must be > 0 (or set max_steps)")
        _check(self.max_steps >= 0, f"{prefix}.max_steps", "must be >= 0")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, f"{prefix}.grad_accum", "must be >= 1")
        _check(0 < self.lr < 1, f"{prefix}.lr", "must be in (0, 1)")
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_ratio < 1, f"{prefix}.warmup_ratio", "must be in [0, 1)")
        _check(self.max_grad_norm >= 0, f"{prefix}.max_grad_norm", "must be >= 0")
        for name in ("eval_every", "save_every", "log_every"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        _check(self.attention in ("auto", "sdpa", "eager"), f"{prefix}.attention", "must be auto, sdpa or eager")


@dataclass
class TaskConfig:
    """The labelled task: embedded, a GLUE name, or a local folder/file."""

    # rotten_tomatoes | conll2003 | squad (embedded) | glue/<task> | file or folder | hub NER name | hub:<QA dataset>
    name: str = "rotten_tomatoes"
    max_len: int = 128  # tokens per example after truncation
    max_train_examples: int = 0  # cap the training split (quick runs); 0 = all
    max_eval_examples: int = 0  # cap dev and test splits; 0 = all
    data_dir: str = ""  # glue/<task> only: a local folder with the hub's train.*/validation.* files
    # auto: fractional numbers are a regression score, anything else (text, integers) names classes;
    # the decision is printed when the data loads. Set it when integer labels are really a score.
    type: Literal["auto", "classification", "regression"] = "auto"
    # auto: from the data (conll2003, CoNLL files, tokens/tags columns = token); explicit: refused if the data disagrees
    kind: Literal["auto", "sequence_classification", "token_classification", "question_answering"] = "auto"
    tag_column: int = -1  # token classification, CoNLL files: the column holding the tag (0 is the token)
    doc_stride: int = 128  # question answering: tokens shared by consecutive windows of a long context
    max_question_len: int = 64  # question answering: longer questions are cut to this many tokens
    n_best: int = 20  # question answering: start and end candidates per window when picking the answer span
    max_answer_len: int = 30  # question answering: longest predicted answer, in tokens

    def validate(self, prefix: str) -> None:
        _check(bool(self.name), f"{prefix}.name", "must not be empty")
        _check(8 <= self.max_len <= 512, f"{prefix}.max_len", "must be in [8, 512] (BERT positions)")
        _check(self.max_train_examples >= 0, f"{prefix}.max_train_examples", "must be >= 0")
        _check(self.max_eval_examples >= 0, f"{prefix}.max_eval_examples", "must be >= 0")
        _check(self.tag_column != 0, f"{prefix}.tag_column", "column 0 is the token; use 1, 2, ... or -1 (last)")
        _check(self.doc_stride >= 1, f"{prefix}.doc_stride", "must be >= 1")  # vs max_len: the QA kind checks
        _check(self.max_question_len >= 1, f"{prefix}.max_question_len", "must be >= 1")
        _check(self.n_best >= 1, f"{prefix}.n_best", "must be >= 1")
        _check(self.max_answer_len >= 1, f"{prefix}.max_answer_len", "must be >= 1")


@dataclass
class TeacherConfig:
    """The large model that is distilled; fine-tuned on the task first unless it already is."""

    name: str = "bert-large-uncased"  # hub name | local folder | minilm-l6 (embedded all-MiniLM-L6-v2)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, lr=2e-5))
    already_finetuned: bool = False  # the folder is already fine-tuned on this task: skip fine-tuning
    gate: Literal["stop", "warn"] = "stop"  # teacher not above the trivial baseline on dev: stop before distilling, or warn and go on
    gate_margin: float = 0.02  # the teacher's dev score must beat the trivial baseline by this much (absolute)

    def validate(self, prefix: str) -> None:
        _check(bool(self.name), f"{prefix}.name", "must not be empty")
        _check(0 <= self.gate_margin < 1, f"{prefix}.gate_margin", "must be in [0, 1)")
        self.finetune.validate(f"{prefix}.finetune")


@dataclass
class StudentConfig:
    """The small model: a preset or a custom shape, and how its weights start."""

    preset: str = "tinybert-4l-312"  # tinybert-4l-312 | tinybert-6l-768 | distilbert-6l-768 | custom
    layers: int = 0  # overrides the preset when > 0
    hidden: int = 0  # overrides the preset when > 0
    heads: int = 0  # overrides the preset when > 0
    ffn: int = 0  # overrides the preset when > 0
    init: str = "random"  # random | teacher (copy teacher layers; same hidden width) | path to a student folder
    init_layers: str = "uniform"  # teacher layers to copy for init=teacher: uniform | first | last | explicit
    init_layer_list: list[int] = field(default_factory=list)  # 0-based teacher layers for init_layers=explicit

    def validate(self, prefix: str) -> None:
        from students.presets import PRESETS  # local: students imports config

        _check(self.preset in PRESETS or self.preset == "custom", f"{prefix}.preset",
               f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS) + ['custom']}")
        if self.preset == "custom":
            for name in ("layers", "hidden", "heads", "ffn"):
                _check(getattr(self, name) > 0, f"{prefix}.{name}", "must be > 0 for preset=custom")
        for name in ("layers", "hidden", "heads", "ffn"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        _check(self.init_layers in ("uniform", "first", "last", "explicit"), f"{prefix}.init_layers",
               "must be uniform, first, last or explicit")
        if self.init_layers == "explicit":
            _check(bool(self.init_layer_list), f"{prefix}.init_layer_list", "must list teacher layers for init_layers=explicit")
        if self.init not in ("random", "teacher") and not (Path(self.init).expanduser() / "config.json").is_file():
            close = difflib.get_close_matches(self.init, ["random", "teacher"], n=1)
            hint = f"did you mean {close[0]!r}?" if close else "give random, teacher or a student model folder"
            _check(False, f"{prefix}.init", f"{self.init!r} is neither random, teacher nor a model folder with a "
                   f"config.json; {hint}")


@dataclass
class GeneralStageConfig:
    """Stage 1: general distillation on unlabeled text (TinyBERT) or the DistilBERT triple loss."""

    enabled: bool = True  # false: the student goes straight to task distillation
    # wiki (embedded gensim excerpt) | wiki_bigbench (~1,000 English Wikipedia articles of BIG-bench,
    # fetched once from PyPI on first use) | text file or folder | datasets name
    corpus: str = "wiki"
    max_len: int = 128  # tokens per sequence cut from the corpus
    max_sequences: int = 0  # cap the number of sequences; 0 = all
    # concat: documents joined and cut at max_len, attention across documents (BERT, TinyBERT);
    # intra_doc: whole documents packed, each attends only to itself, positions restart (Zhao et al. 2024);
    # per_doc: one document per sequence, length-grouped batches, no packing
    packing: Literal["concat", "intra_doc", "per_doc"] = "concat"
    min_doc_tokens: int = 8  # documents with fewer word pieces are dropped (captions, headings, stray lines)
    # corpus: documents in the order read; bm25: each sequence filled with the documents most similar to
    # its first one (BM25Chunk, Zhao et al. 2024), for concat and intra_doc
    pack_order: Literal["corpus", "bm25"] = "corpus"
    bm25_window: int = 4096  # pack_order=bm25: documents ranked together (BM25Chunk's buffer); memory grows with it
    # read, tokenize and pack the corpus while training (flat memory, any size); needs train.max_steps,
    # since the number of sequences is unknown before the end
    streaming: bool = False
    text_column: str = "text"  # the column holding the text, for a datasets corpus
    teacher: str = ""  # "" = the pretrained teacher (TinyBERT); task = this run's fine-tuned teacher; or a name/folder
    losses: dict[str, float] = field(
        default_factory=lambda: {"embedding_mse": 1.0, "attention_scores_mse": 1.0, "hidden_mse": 1.0})
    layer_map: str = "uniform"  # uniform | last | explicit: which teacher layer each student layer learns from
    layer_map_list: list[int] = field(default_factory=list)  # 1-based teacher layer per student layer (explicit)
    mlm_probability: float = 0.15  # masking rate for the MLM terms (only with an MLM teacher head)
    # which tokens the MLM terms corrupt: token (BERT, each piece alone); whole_word (every piece of a
    # chosen word, BERT WWM); mac (MacBERT: chosen words replaced by similar words, not [MASK])
    masking: Literal["token", "whole_word", "mac"] = "token"
    mac_neighbours: int = 5  # masking=mac: similar words (teacher input-embedding neighbours) drawn from
    temperature: float = 2.0  # softmax temperature of the soft cross-entropy on MLM logits
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, lr=1e-4, batch_size=32))

    def validate(self, prefix: str) -> None:
        _check(8 <= self.max_len <= 512, f"{prefix}.max_len", "must be in [8, 512]")
        _check(self.max_sequences >= 0, f"{prefix}.max_sequences", "must be >= 0")
        _check(1 <= self.min_doc_tokens <= self.max_len - 2, f"{prefix}.min_doc_tokens",
               f"must be in [1, max_len - 2 = {self.max_len - 2}]")
        if self.enabled:
            _check_corpus(self.corpus, f"{prefix}.corpus")
        _check(0 < self.mlm_probability < 1, f"{prefix}.mlm_probability", "must be in (0, 1)")
        _check(self.mac_neighbours >= 1, f"{prefix}.mac_neighbours", "must be >= 1")
        _check(bool(self.text_column), f"{prefix}.text_column", "must name a column")
        _check(self.bm25_window >= 2, f"{prefix}.bm25_window", "must be >= 2")
        _check(not (self.pack_order == "bm25" and self.packing == "per_doc"), f"{prefix}.pack_order",
               "bm25 fills a sequence with related documents, but packing=per_doc puts one document per sequence; "
               "use packing=intra_doc or concat, or pack_order=corpus")
        if self.enabled and self.streaming:
            _check(self.train.max_steps > 0, f"{prefix}.train.max_steps",
                   "must be > 0 with general.streaming=true (a stream's length is unknown until its end)")
        _check(self.temperature > 0, f"{prefix}.temperature", "must be > 0")
        _check_layer_map(self.layer_map, self.layer_map_list, prefix)
        if self.enabled:
            _check_losses(self.losses, f"{prefix}.losses", trains=True)
            if self.masking != "token":
                from distill.engine.losses import LOSSES  # local: losses imports torch

                mlm_terms = sorted(n for n in LOSSES if LOSSES[n].feature.startswith("mlm"))
                _check(any(n in mlm_terms for n in self.losses), f"{prefix}.masking",
                       f"{self.masking} changes only the MLM terms {mlm_terms}, and general.losses has none; "
                       "add one (the teacher needs an MLM head) or leave masking=token")
        self.train.validate(f"{prefix}.train")


@dataclass
class AugmentConfig:
    """TinyBERT data augmentation: words replaced by candidates, N copies per example, cached on disk."""

    enabled: bool = False  # augment the training split of stages 2a and 2b (else auto_below decides)
    # augment anyway when the training split has fewer rows than this (examples; NER: sentences; QA: questions):
    # a small task gives the student too few inputs to learn the teacher's features from, which is why TinyBERT
    # augmented its small tasks. 0 = never. A split cut by task.max_train_examples is a quick run's slice of a
    # larger set and is left as it is (augmenting would multiply the work the cap saves).
    auto_below: int = 5000
    method: Literal["embedding", "mlm"] = "embedding"  # embedding: nearest whole words in the teacher's input embeddings
    mlm_model: str = ""  # MLM model for method=mlm; "" = the teacher's own MLM head
    copies: int = 4  # augmented copies per training example (TinyBERT used 20)
    replace_prob: float = 0.4  # probability of replacing each word (TinyBERT p_t)
    top_k: int = 15  # candidates per word (TinyBERT K)
    batch_size: int = 64  # sentences per MLM forward pass

    def validate(self, prefix: str) -> None:
        _check(self.copies >= 1, f"{prefix}.copies", "must be >= 1")
        _check(self.auto_below >= 0, f"{prefix}.auto_below", "must be >= 0 (0 = never switch augmentation on)")
        _check(0 < self.replace_prob <= 1, f"{prefix}.replace_prob", "must be in (0, 1]")
        _check(self.top_k >= 1, f"{prefix}.top_k", "must be >= 1")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")


@dataclass
class TaskStageConfig:
    """Stage 2: task distillation; 2a intermediate layers, then 2b the prediction layer."""

    enabled: bool = True
    layer_map: str = "uniform"  # uniform | last | explicit
    layer_map_list: list[int] = field(default_factory=list)  # 1-based teacher layer per student layer (explicit)
    intermediate_losses: dict[str, float] = field(
        default_factory=lambda: {"embedding_mse": 1.0, "attention_scores_mse": 1.0, "hidden_mse": 1.0})
    intermediate: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10.0, lr=5e-5))
    prediction_losses: dict[str, float] = field(default_factory=lambda: {"soft_ce": 1.0, "hard_ce": 0.0})
    prediction: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3.0, lr=3e-5))
    # floors in optimizer steps for 2a and 2b when they are given in epochs (a stage with max_steps > 0 has none:
    # the user chose). A recipe's epochs, tuned on a large set, give a small one a few dozen steps, too few to
    # learn anything; a floored stage trains this many steps instead and says so. The defaults sit below the
    # embedded recipes' own schedules (2a: SQuAD 53 steps, CoNLL-2003 220, Rotten Tomatoes 319; 2b: Rotten
    # Tomatoes 479, SQuAD 848, CoNLL-2003 2,195), so those run unchanged. 0 = no floor.
    min_steps_2a: int = 50
    min_steps_2b: int = 450
    temperature: float = 1.0  # softmax temperature of the soft cross-entropy (TinyBERT used 1)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # 2a: the teacher's features are computed once into the run folder (float16, memory-mapped) and read
    # every epoch instead of running the teacher; used only when 2a makes >= 2 passes and the cache fits
    feature_cache: bool = True
    feature_cache_max_gb: float = 20.0  # skip the cache (the teacher runs every step) above this estimated size

    def validate(self, prefix: str) -> None:
        _check(self.temperature > 0, f"{prefix}.temperature", "must be > 0")
        for name in ("min_steps_2a", "min_steps_2b"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0 (0 = no floor)")
        _check(self.feature_cache_max_gb > 0, f"{prefix}.feature_cache_max_gb",
               "must be > 0 (set feature_cache=false to turn the cache off)")
        _check_layer_map(self.layer_map, self.layer_map_list, prefix)
        # {} skips stage 2a (the student enters 2b as it is); a dict of zero weights is a mistake
        _check_losses(self.intermediate_losses, f"{prefix}.intermediate_losses", trains=bool(self.intermediate_losses),
                      skip_hint="or use {} to skip stage 2a")
        _check_losses(self.prediction_losses, f"{prefix}.prediction_losses", trains=True)
        self.intermediate.validate(f"{prefix}.intermediate")
        self.prediction.validate(f"{prefix}.prediction")
        self.augment.validate(f"{prefix}.augment")


@dataclass
class PruneConfig:
    """Structured pruning of heads and FFN neurons (hidden width kept), then recovery distillation."""

    enabled: bool = True
    ratio: float = 0.5  # fraction of attention heads and of FFN neurons removed in every layer
    target_flops: float = 0.0  # > 0: keep this fraction of the student's encoder FLOPs instead of using ratio
    layer_ratios: list[float] = field(default_factory=list)  # one ratio per layer (overrides ratio)
    importance: Literal["taylor", "magnitude"] = "taylor"  # taylor: |w * dL/dw| on task batches
    taylor_batches: int = 16  # task batches whose gradients score the weights
    recovery_losses: dict[str, float] = field(default_factory=lambda: {"hidden_mse": 1.0, "soft_ce": 1.0})
    recovery: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, lr=5e-5))

    def validate(self, prefix: str) -> None:
        _check(0 < self.ratio < 1, f"{prefix}.ratio", "must be in (0, 1)")
        _check(0 <= self.target_flops < 1, f"{prefix}.target_flops", "must be in [0, 1); 0 = use ratio")
        for i, r in enumerate(self.layer_ratios):
            _check(0 <= r < 1, f"{prefix}.layer_ratios[{i}]", "must be in [0, 1)")
        _check(self.taylor_batches >= 1, f"{prefix}.taylor_batches", "must be >= 1")
        _check_losses(self.recovery_losses, f"{prefix}.recovery_losses", trains=self.enabled)
        self.recovery.validate(f"{prefix}.recovery")


@dataclass
class QATConfig:
    """Quantization-aware distillation (opt-in): fake-quantized linear layers (per-channel int8 weights,
    per-tensor int8 activations, calibrated first) trained with the prediction-layer losses, exported as QDQ."""

    enabled: bool = False
    models: list[str] = field(default_factory=lambda: ["student-task"])  # student-task and/or student-pruned
    losses: dict[str, float] = field(default_factory=dict)  # {} = task_distill.prediction_losses
    calibration_batches: int = 16  # train batches (of 32) that set the activation ranges before training
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1.0, lr=1e-5, mixed_precision="no"))

    def validate(self, prefix: str) -> None:
        for m in self.models:
            _check(m in ("student-task", "student-pruned"), f"{prefix}.models",
                   f"unknown model {m!r}; choose from ['student-task', 'student-pruned']")
        _check(bool(self.models) or not self.enabled, f"{prefix}.models", "must name at least one model")
        _check(self.calibration_batches >= 1, f"{prefix}.calibration_batches", "must be >= 1")
        if self.losses:
            _check_losses(self.losses, f"{prefix}.losses", trains=self.enabled)
        self.train.validate(f"{prefix}.train")


@dataclass
class VocabConfig:
    """Vocabulary pruning (opt-in): keep the word embeddings of the tokens the task's texts use, plus the
    special tokens. A section of its own, not keys under prune: the prune stage's fingerprint covers
    ``prune``, so new keys there would retrain finished pruned students."""

    enabled: bool = False
    models: list[str] = field(default_factory=lambda: ["student-task"])  # student-task and/or student-pruned
    # splits whose texts decide the kept tokens; train only by default: a token seen only in dev/test is
    # knowledge of the evaluation data, so the test OOV rate and score stay honest
    splits: list[str] = field(default_factory=lambda: ["train"])
    # also keep the K most frequent tokens of general.corpus (its first extra_documents documents), for
    # texts the task's splits do not cover; 0 = none
    extra_tokens: int = 0
    extra_documents: int = 20000

    def validate(self, prefix: str) -> None:
        _check(self.extra_tokens >= 0, f"{prefix}.extra_tokens", "must be >= 0")
        _check(self.extra_documents >= 1, f"{prefix}.extra_documents", "must be >= 1")
        for m in self.models:
            _check(m in ("student-task", "student-pruned"), f"{prefix}.models",
                   f"unknown model {m!r}; choose from ['student-task', 'student-pruned']")
        _check(bool(self.models) or not self.enabled, f"{prefix}.models", "must name at least one model")
        for s in self.splits:
            _check(s in ("train", "dev", "test"), f"{prefix}.splits", f"unknown split {s!r}; choose from train, dev, test")
        _check(bool(self.splits), f"{prefix}.splits", "must name at least one split")


EXPORT_FORMATS = ("fp32", "fp32-fused", "fp16", "int8-dynamic", "int8-qdq")


@dataclass
class ExportConfig:
    """ONNX artifacts for ONNX Runtime (CPU) and TensorRT (edge GPU), each checked against PyTorch."""

    enabled: bool = True
    formats: list[str] = field(default_factory=lambda: list(EXPORT_FORMATS))  # any of EXPORT_FORMATS
    models: list[str] = field(default_factory=lambda: ["student-task", "student-pruned"])  # stages to export
    # the teacher in ONNX Runtime too, as bench rows: the speed-up of changing runtime apart from that of
    # distilling ([] = none; formats of the teacher listed in `models` come from `formats` instead)
    teacher_formats: list[str] = field(default_factory=lambda: ["fp32-fused", "int8-dynamic"])
    calibration_batches: int = 16  # task batches (of 32) that calibrate static INT8 (QDQ)
    check_examples: int = 0  # dev examples compared against PyTorch; 0 = the whole dev split
    max_metric_drop: float = 0.01  # largest dev-metric drop a format may show against PyTorch (0.01 = 1 point)
    tensorrt: bool = True  # build engines where `tensorrt` imports; else print the trtexec command

    def validate(self, prefix: str) -> None:
        for f in self.formats:
            _check(f in EXPORT_FORMATS, f"{prefix}.formats", f"unknown format {f!r}; choose from {list(EXPORT_FORMATS)}")
        for f in self.teacher_formats:
            _check(f in EXPORT_FORMATS, f"{prefix}.teacher_formats",
                   f"unknown format {f!r}; choose from {list(EXPORT_FORMATS)}")
        for m in self.models:
            _check(m in ("teacher", "student-task", "student-pruned"), f"{prefix}.models",
                   f"unknown model {m!r}; choose from teacher, student-task, student-pruned")
        _check(self.calibration_batches >= 1, f"{prefix}.calibration_batches", "must be >= 1")
        _check(self.check_examples >= 0, f"{prefix}.check_examples", "must be >= 0")
        _check(0.0 <= self.max_metric_drop <= 1.0, f"{prefix}.max_metric_drop",
               "must be in [0, 1] (score units: 0.01 = 1 point)")


@dataclass
class BenchConfig:
    """Side-by-side benchmark of the teacher and every artifact."""

    threads: int = 0  # CPU threads for torch and ONNX Runtime; 0 = all cores
    repeats: int = 50  # timed batch-1 runs per artifact (after 5 warm-up runs)
    test_examples: int = 0  # cap the test split for the metric; 0 = all
    skip_formats: list[str] = field(default_factory=list)  # export formats not to time (e.g. fp16 is slow on CPU)

    def validate(self, prefix: str) -> None:
        _check(self.threads >= 0, f"{prefix}.threads", "must be >= 0")
        _check(self.repeats >= 5, f"{prefix}.repeats", "must be >= 5")
        _check(self.test_examples >= 0, f"{prefix}.test_examples", "must be >= 0")
        for f in self.skip_formats:
            _check(f in EXPORT_FORMATS, f"{prefix}.skip_formats", f"unknown format {f!r}; choose from {list(EXPORT_FORMATS)}")


@dataclass
class ExperimentConfig:
    """A whole experiment: what to distil into what, and where the run lands."""

    name: str = "default"  # runs land in <output_dir>/<name>/<run_id>/
    run_id: str = "default"  # same run_id: finished stages are reused and killed ones resume
    output_dir: str = "runs"
    seed: int = 42
    wandb_project: str = "bert-distill"  # offline unless you are logged in (wandb login)
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online only if logged in
    num_workers: int = 0  # DataLoader worker processes
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    general: GeneralStageConfig = field(default_factory=GeneralStageConfig)
    task_distill: TaskStageConfig = field(default_factory=TaskStageConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def validate(self) -> None:
        for name in ("name", "run_id"):
            value = getattr(self, name)
            _check(bool(value) and "/" not in value and value not in (".", ".."), name,
                   "must be a non-empty folder name without '/'")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")
        self.teacher.validate("teacher")
        self.task.validate("task")
        self.student.validate("student")
        self.general.validate("general")
        self.task_distill.validate("task_distill")
        self.prune.validate("prune")
        self.qat.validate("qat")
        if self.qat.enabled and "student-pruned" in self.qat.models and not self.prune.enabled:
            raise ConfigError("config key 'qat.models': lists student-pruned but prune.enabled is false; "
                              "set qat.models=[student-task]")
        self.vocab.validate("vocab")
        if self.vocab.enabled and "student-pruned" in self.vocab.models and not self.prune.enabled:
            raise ConfigError("config key 'vocab.models': lists student-pruned but prune.enabled is false; "
                              "set vocab.models=[student-task]")
        self.export.validate("export")
        self.bench.validate("bench")
        if self.export.enabled and "student-pruned" in self.export.models and not self.prune.enabled:
            raise ConfigError("config key 'export.models': lists student-pruned but prune.enabled is false; "
                              "set export.models=[student-task]")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name / self.run_id


# ---------------------------------------------------------------------------------------------
# checks shared by several sections


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _check_layer_map(strategy: str, explicit: list[int], prefix: str) -> None:
    _check(strategy in ("uniform", "last", "explicit"), f"{prefix}.layer_map", "must be uniform, last or explicit")
    if strategy == "explicit":
        _check(bool(explicit), f"{prefix}.layer_map_list", "must give one teacher layer per student layer")


def _check_losses(losses: dict[str, float], key: str, trains: bool, skip_hint: str = "") -> None:
    """Known names and weights >= 0; ``trains``: the stage runs on these, so one weight must be > 0."""
    from distill.engine.losses import LOSSES  # local: losses imports torch

    for name, weight in losses.items():
        _check(name in LOSSES, f"{key}.{name}", f"unknown loss; choose from {sorted(LOSSES)}")
        _check(weight >= 0, f"{key}.{name}", "weight must be >= 0")
    if trains:
        _check(bool(losses), key, "is empty, so the stage would train on nothing; give at least one loss with a "
               "weight > 0")
        _check(any(w > 0 for w in losses.values()), key,
               f"every weight is 0, so the stage would train on nothing; set one > 0{' ' + skip_hint if skip_hint else ''}")


# a datasets name as load_paragraphs takes it: [owner/]name[:config], e.g. Salesforce/wikitext:wikitext-103-raw-v1
_DATASET_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")
_TEXT_SUFFIXES = (".txt", ".text", ".bz2", ".gz", ".xml", ".json", ".jsonl", ".csv", ".tsv", ".parquet")


def _check_corpus(corpus: str, key: str) -> None:
    """wiki, an existing file/folder, or something that can be a datasets name (checked when loaded)."""
    if corpus in ("wiki", "wiki_bigbench") or Path(corpus).expanduser().exists():
        return
    name = corpus.partition(":")[0]
    if corpus.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in corpus or \
            Path(name).suffix.lower() in _TEXT_SUFFIXES:
        _check(False, key, f"{corpus!r} looks like a path but does not exist; give an existing text file or folder")
    if difflib.get_close_matches(corpus.lower(), ["wiki"], n=1, cutoff=0.75):
        _check(False, key, f"{corpus!r} is not a corpus; did you mean 'wiki' (the embedded Wikipedia excerpt)?")
    _check(bool(_DATASET_NAME.fullmatch(corpus)), key,
           f"{corpus!r} is not 'wiki', an existing text file or folder, or a datasets name such as "
           "Salesforce/wikitext:wikitext-103-raw-v1")


# ---------------------------------------------------------------------------------------------
# building dataclasses from YAML dicts and overrides, with type checks


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of sub-keys, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")
        return value
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"config key '{key}': union types are not supported")  # not used by any field
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, key): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 5e-5 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {names}"
            raise ConfigError(f"config key '{full}': unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    # nested dataclasses given partially keep their own defaults for the rest
    obj = cls()
    for key, value in kwargs.items():
        if dataclasses.is_dataclass(value):
            value = _merge(getattr(obj, key), value, data[key])
        setattr(obj, key, value)
    return obj


def _merge(default: Any, given: Any, raw: dict) -> Any:
    """Overlay the keys present in ``raw`` onto ``default`` (which may carry non-standard defaults)."""
    for key in raw:
        value = getattr(given, key)
        if dataclasses.is_dataclass(value):
            value = _merge(getattr(default, key), value, raw[key])
        setattr(default, key, value)
    return default


def _parse_override(text: str, cls: type) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. teacher.finetune.lr=3e-5")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    tp: Any = cls
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            if typing.get_origin(tp) is dict:  # e.g. task_distill.prediction_losses.hard_ce=0.5
                tp = typing.get_args(tp)[1]
                continue
            raise ConfigError(f"config key '{'.'.join(path[:i + 1])}': '{'.'.join(path[:i])}' has no sub-keys")
        hints = _field_types(tp)
        if part not in hints:
            close = difflib.get_close_matches(part, list(hints), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {list(hints)}"
            raise ConfigError(f"config key '{'.'.join(path[:i + 1])}': unknown key{hint}")
        tp = hints[part]
    if tp is str:
        return path, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"config key '{key}': cannot parse value {raw!r}: {err}") from None
    return path, value


def _is_mapping_field(keys: list[str], part: str) -> bool:
    tp: Any = ExperimentConfig
    for key in keys:
        if not dataclasses.is_dataclass(tp):
            return False
        tp = _field_types(tp)[key]
        if key == part:
            return typing.get_origin(tp) is dict
    return False


def join_split_overrides(overrides) -> list[str]:
    """Overrides as the user meant them when a shell split a value at its spaces: ``general.losses={a: 1,``
    ``b: 2}`` (unquoted, or through make's ARGS) is joined back into one ``key={a: 1, b: 2}``; a piece
    without ``=`` joins the override before it while that one's brackets are still open."""
    joined: list[str] = []
    for text in overrides:
        if joined and "=" not in text.split(":")[0] and _open_brackets(joined[-1]) > 0:
            joined[-1] += " " + text
        else:
            joined.append(text)
    return joined


def _open_brackets(text: str) -> int:
    value = text.partition("=")[2]
    return value.count("{") + value.count("[") - value.count("}") - value.count("]")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read an experiment YAML (or the defaults), apply ``key.sub=value`` overrides, validate."""
    data: dict = {}
    if path is not None:
        data = _read_experiment(Path(path))
    defaults = to_dict(ExperimentConfig())
    for text in join_split_overrides(overrides):
        keys, value = _parse_override(text, ExperimentConfig)
        node, default = data, defaults
        for part in keys[:-1]:
            default = default.get(part, {}) if isinstance(default, dict) else {}
            # a single entry of a mapping field (e.g. losses.hard_ce=0.5) is merged into its default
            node = node.setdefault(part, copy.deepcopy(default) if _is_mapping_field(keys, part) else {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{text.split('=')[0]}': parent is not a mapping")
        node[keys[-1]] = value
    cfg = _build(ExperimentConfig, data)
    cfg.validate()
    return cfg


def _read_experiment(path: Path) -> dict:
    """The mapping in an experiment YAML. A folder, a missing file or a YAML syntax error is a one-line
    ConfigError naming the file (and line), or listing the experiments there are."""
    if path.is_dir():
        raise ConfigError(f"experiment file {str(path)!r} is a folder, not a YAML file; {_known_experiments(path)}")
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist; {_known_experiments()}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"experiment file {str(path)!r} is not a text file; {_known_experiments()}") from None
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"experiment file {str(path)!r}: top level must be a mapping of keys")
    return loaded or {}


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """One line: file, line and column (1-based) and what the YAML parser expected there."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return f"experiment file {str(path)!r}: invalid YAML: {str(err).splitlines()[0]}"
    where = f"experiment file {str(path)!r}, line {mark.line + 1}, column {mark.column + 1}"
    context = getattr(err, "context", None) or ""
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        context += f" that starts on line {context_mark.line + 1}"
    hint = "; indent with spaces, not tabs" if "'\\t'" in (err.problem or "") else ""
    return f"{where}: invalid YAML: {err.problem}" + (f" ({context})" if context else "") + hint


EXPERIMENTS_SHOWN = 20  # experiment files listed after a wrong --config path


def _known_experiments(folder: Path | None = None) -> str:
    """'experiments: a.yaml, b.yaml' for the YAML files in ``folder`` (when given), ./experiments and the
    repository's experiments/ (with sub-folders), shown relative to the working directory where they lie under it."""
    roots = [Path("experiments"), Path(__file__).resolve().parents[1] / "experiments"]
    if folder is not None:
        roots.insert(0, folder)
    cwd = Path.cwd().resolve()
    found: dict[Path, str] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for file in sorted(root.glob("**/*.yaml")) + sorted(root.glob("**/*.yml")):
            resolved = file.resolve()
            shown = resolved.relative_to(cwd) if resolved.is_relative_to(cwd) else resolved
            found.setdefault(resolved, str(shown))
    if not found:
        return "no experiments/*.yaml found in the working directory or the repository"
    names = list(found.values())
    more = f" and {len(names) - EXPERIMENTS_SHOWN} more" if len(names) > EXPERIMENTS_SHOWN else ""
    return "experiments: " + ", ".join(names[:EXPERIMENTS_SHOWN]) + more


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
