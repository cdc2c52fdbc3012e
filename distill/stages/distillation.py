"""The distillation stages: 1 general (unlabeled text), 2a task intermediate layers, 2b task prediction
layer; and the no-teacher baseline. Each is a StageRun whose artifact is a Hugging Face folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from distill.data.augment import augmented_train_set
from distill.config import ExperimentConfig, PruneConfig, TaskStageConfig
from distill.stages.context import RunContext
from distill.data.corpus import MIN_WIKI_WORDS, iter_documents, pack_sequences
from distill.engine import feature_cache
from distill.engine.evaluation import evaluate
from distill.fingerprint import input_digests, stage_value
from distill.engine.layer_map import build_layer_map, describe
from distill.engine.losses import LOSSES
from distill.data.masking import MLMCollator
from distill.engine.objectives import DistillObjective, FineTuneObjective, save_projections, with_teacher_logits
from distill.data.packing import DocumentCollator, check_block_mask
from distill.engine.placement import placement
from distill.base.ranks import process_count
from distill.stages.records import StageRun, announce_once
from distill.data.stream import open_stream
from distill.engine.trainer import train
from students.build import build_student, count_parameters
from students.presets import resolve_shape
from distill.stages.teacher import finetune_teacher, load_finetuned, teacher_stage
from teachers.load import has_mlm_head, load_backbone

MLM_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.feature.startswith("mlm"))
PROJECTIONS = "projections.safetensors"  # next to a stage's model folder: the student folder stays plain HF
# the default output losses are classification losses; on a regression task they stand for these
REGRESSION_COUNTERPARTS = {"soft_ce": "logits_mse", "soft_ce_t2": "logits_mse", "hard_ce": "hard_mse"}


def student_shape(ctx: RunContext):
    s = ctx.cfg.student
    return resolve_shape(s.preset, s.layers, s.hidden, s.heads, s.ffn)


def losses_for_task(losses: dict[str, float], is_regression: bool) -> dict[str, float]:
    """The output losses a task stage trains with. Unchanged for classification; on a regression task
    the default losses (soft_ce/hard_ce, which need classes) become logits_mse/hard_mse. Losses the
    user set are never rewritten: check_task_losses refuses the wrong ones before any training."""
    defaults = (TaskStageConfig().prediction_losses, PruneConfig().recovery_losses)
    if is_regression and losses in defaults:
        return {REGRESSION_COUNTERPARTS.get(name, name): weight for name, weight in losses.items()}
    return losses


def check_task_losses(cfg: ExperimentConfig, is_regression: bool) -> None:
    """Preflight: every configured task-stage loss is defined for the task type (classes or scores)."""
    task_type = "regression" if is_regression else "classification"
    sections = {"task_distill.intermediate_losses": cfg.task_distill.intermediate_losses,
                "task_distill.prediction_losses": cfg.task_distill.prediction_losses,
                "prune.recovery_losses": cfg.prune.recovery_losses if cfg.prune.enabled else {}}
    for key, losses in sections.items():
        for name, weight in losses_for_task(losses, is_regression).items():
            wanted = LOSSES[name].task
            if weight == 0:  # logged when computable, skipped otherwise (DistillObjective): never trained on
                continue
            if wanted not in ("any", task_type):
                fix = ("logits_mse (teacher scores) or hard_mse (gold scores)" if is_regression
                       else "soft_ce/soft_ce_t2 (teacher) or hard_ce (gold labels)")
                raise ValueError(f"config key '{key}.{name}': {name} is a {wanted} loss but {cfg.task.name} is a "
                                 f"{task_type} task; use {fix}")


def _distill_saver(ctx: RunContext):
    """save_model for distillation: the student's HF folder, and its projections next to that folder."""
    save_student = ctx.saver()

    def save(trainable, folder: Path) -> None:
        save_student(trainable, folder)
        projections = getattr(trainable, "projections", None)
        if projections is not None and len(projections):
            save_projections(projections, Path(folder).parent / PROJECTIONS)
    return save


def task_stage_dirs(ctx: RunContext) -> list[Path]:
    """Folders of the stages before recovery whose trained projections it can start from, oldest first."""
    dirs = [general_stage(ctx).dir] if ctx.cfg.general.enabled else []
    return dirs + [intermediate_stage(ctx).dir, prediction_stage(ctx).dir]


# ---------------------------------------------------------------------------------------------------
# stage 1


def general_stage(ctx: RunContext) -> StageRun:
    cfg = ctx.cfg
    teacher = teacher_stage(ctx).fingerprint if cfg.general.teacher == "task" else cfg.general.teacher or cfg.teacher.name
    return StageRun(ctx.run_dir, "student-general", {
        "teacher": teacher, "student": cfg.student, "general": _general_settings(cfg.general), "seed": cfg.seed,
        "inputs": input_digests(cfg, "teacher.name", "general.teacher", "student.init", "general.corpus")})


def _general_settings(g) -> dict:
    """general.* for the stage fingerprint. Keys added after runs were made are left out where their
    value builds what those runs built (concat packing, token masking, and a minimum the wiki
    paragraphs of >= 12 words always pass), so finished stage-1 folders stay reusable."""
    settings = stage_value(g)
    for key, same in (("packing", "concat"), ("masking", "token"), ("streaming", False), ("text_column", "text"),
                      ("pack_order", "corpus")):
        if settings.get(key) == same:
            settings.pop(key)
    if g.masking != "mac":  # read only by masking=mac
        settings.pop("mac_neighbours")
    if g.pack_order != "bm25":  # read only by pack_order=bm25
        settings.pop("bm25_window")
    if g.corpus == "wiki" and g.min_doc_tokens <= MIN_WIKI_WORDS:  # a word is >= 1 word piece
        settings.pop("min_doc_tokens")
    return settings


def general_teacher_name(ctx: RunContext) -> str:
    """general.teacher: "" = the pretrained teacher, "task" = this run's fine-tuned teacher, else a name/folder."""
    g = ctx.cfg.general
    if g.teacher == "task":
        return str(finetune_teacher(ctx))
    return g.teacher or ctx.cfg.teacher.name


def run_general(ctx: RunContext) -> Path:
    cfg, g = ctx.cfg, ctx.cfg.general
    stage = general_stage(ctx)
    if stage.is_done():
        announce_once(str(stage.dir), f"[general] reusing {stage.model_dir}")
        return stage.model_dir
    teacher_name = general_teacher_name(ctx)
    wants_mlm = any(name in MLM_LOSSES for name in g.losses)
    if wants_mlm and not has_mlm_head(teacher_name):
        raise ValueError(f"general.losses asks for {[n for n in g.losses if n in MLM_LOSSES]} but the teacher "
                         f"{teacher_name!r} has no MLM head; drop those losses or set general.teacher to a "
                         "checkpoint with one (e.g. bert-large-uncased)")
    cache = Path(cfg.output_dir) / ".cache"
    if g.streaming and process_count() > 1:
        raise ValueError("general.streaming=true runs in one process for now (several processes would each read "
                         "the whole stream); launch without --num_processes or set general.streaming=false")
    if g.streaming:  # read and packed while training runs; open_stream fails now on a bad corpus
        sequences = open_stream(g, ctx.tokenizer, cache, cfg.seed)
        about = (f"a stream of {len(sequences)} sequences of <= {g.max_len} tokens ({g.packing}, {g.pack_order} "
                 "order)")
    else:
        # the first max_sequences in corpus order need only the start of the corpus: read just that much
        start_only = g.max_sequences > 0 and g.pack_order == "corpus"
        documents = iter_documents(g.corpus, cache, g.text_column, build_cache=not start_only)
        sequences = pack_sequences(documents, ctx.tokenizer, g.max_len, g.max_sequences, g.packing,
                                   g.min_doc_tokens, g.pack_order, g.bm25_window)
        fill = sum(sequences["length"]) / (len(sequences) * g.max_len)
        about = (f"{len(sequences)} sequences of <= {g.max_len} tokens ({g.packing}, {g.pack_order} order, "
                 f"{fill:.0%} filled)")
    stage.start()
    teacher = load_backbone(teacher_name, with_mlm_head=wants_mlm)
    student = build_student(student_shape(ctx), teacher, kind="mlm" if wants_mlm else "base",
                            init=cfg.student.init, init_layers=cfg.student.init_layers,
                            init_layer_list=cfg.student.init_layer_list, seed=cfg.seed)
    matches = build_layer_map(g.losses, g.layer_map, student.config.num_hidden_layers,
                              teacher.config.num_hidden_layers, g.layer_map_list)
    if g.packing == "intra_doc":  # before any step: the kernels must really apply the (batch, seq, seq) mask
        check_block_mask(teacher, "teacher", ctx.tokenizer.cls_token_id, ctx.tokenizer.sep_token_id)
        check_block_mask(student, "student", ctx.tokenizer.cls_token_id, ctx.tokenizer.sep_token_id)
    objective = DistillObjective(student, teacher, matches, temperature=g.temperature)
    print(f"[general] {about} from {g.corpus}; student {count_parameters(student) / 1e6:.1f}M params; layer map:\n"
          f"{describe(matches)}")
    collator = None
    if wants_mlm:
        embeddings = teacher.get_input_embeddings().weight if g.masking == "mac" else None
        collator = MLMCollator(ctx.tokenizer, g.mlm_probability, cfg.seed, g.masking, embeddings, g.mac_neighbours)
    if g.packing == "intra_doc":
        collator = DocumentCollator(collator or DataCollatorWithPadding(ctx.tokenizer))
    if g.streaming:
        loader = DataLoader(sequences, batch_size=g.train.batch_size,
                            collate_fn=collator or DataCollatorWithPadding(ctx.tokenizer))
    else:
        loader = ctx.loader("train", g.train.batch_size, shuffle=True, dataset=sequences, collator=collator)
    tracker = ctx.tracker(stage.dir, "general")
    result = train(objective, loader, g.train, stage.dir, save_model=_distill_saver(ctx), tracker=tracker,
                   seed=cfg.seed, desc="general")
    final = result.history[-1] if result.history else {}
    tracker.summary(final)
    tracker.finish()
    stage.finish({"steps": result.step, "sequences": len(sequences), "streaming": g.streaming, "final": final})
    return stage.model_dir


# ---------------------------------------------------------------------------------------------------
# stage 2


def _student_start(ctx: RunContext, teacher) -> tuple[object, str]:
    """The student that enters task distillation: general-distilled, or built from config."""
    cfg = ctx.cfg
    if cfg.general.enabled:
        init = str(run_general(ctx))
    else:
        init = cfg.student.init
    student = build_student(student_shape(ctx), teacher, kind=ctx.data.kind.student_kind,
                            label_names=ctx.data.label_names,
                            init=init, init_layers=cfg.student.init_layers,
                            init_layer_list=cfg.student.init_layer_list, seed=cfg.seed)
    return student, init


def intermediate_stage(ctx: RunContext) -> StageRun:
    cfg = ctx.cfg
    upstream = [teacher_stage(ctx).fingerprint, general_stage(ctx).fingerprint if cfg.general.enabled else None]
    return StageRun(ctx.run_dir, "student-intermediate", {
        "upstream": upstream, "student": cfg.student, "task": cfg.task, "seed": cfg.seed,
        "losses": cfg.task_distill.intermediate_losses, "layer_map": cfg.task_distill.layer_map,
        "layer_map_list": cfg.task_distill.layer_map_list, "train": cfg.task_distill.intermediate,
        "augment": cfg.task_distill.augment,
        "inputs": input_digests(cfg, "student.init", "task.name", "task.data_dir", "task_distill.augment.mlm_model")})


def prediction_stage(ctx: RunContext) -> StageRun:
    cfg = ctx.cfg
    return StageRun(ctx.run_dir, "student-task", {
        "upstream": intermediate_stage(ctx).fingerprint, "losses": cfg.task_distill.prediction_losses,
        "temperature": cfg.task_distill.temperature, "train": cfg.task_distill.prediction,
        "augment": cfg.task_distill.augment.enabled})


def task_objective(ctx: RunContext, losses: dict[str, float], student, teacher,
                   carry_from: list[Path] | tuple[Path, ...] = ()) -> DistillObjective:
    """Task-stage distillation (2a, 2b, recovery): the configured layer map and temperature, the output
    losses of the task type, and the trained projections of the stages in ``carry_from`` (oldest
    first, a later stage's projection replacing an earlier one) where their shapes fit."""
    t = ctx.cfg.task_distill
    chosen = losses_for_task(losses, ctx.data.is_regression)
    if chosen != losses:
        print(f"[task] {ctx.data.name} is a regression task: losses {chosen} instead of the default {losses}")
    matches = build_layer_map(chosen, t.layer_map, student.config.num_hidden_layers,
                              teacher.config.num_hidden_layers, t.layer_map_list)
    objective = DistillObjective(student, teacher, matches, temperature=t.temperature,
                                 kind=ctx.data.kind)  # validates before training
    for folder in carry_from:
        loaded = objective.load_projections(Path(folder) / PROJECTIONS)
        if loaded:
            print(f"[task] projections {loaded} start from the ones trained in {folder}")
    return objective


def _train_set(ctx: RunContext, teacher_dir: Path):
    aug = ctx.cfg.task_distill.augment
    if not aug.enabled:
        return ctx.tokenized["train"]
    return augmented_train_set(ctx, teacher_dir)


def run_intermediate(ctx: RunContext) -> Path:
    """2a: the student's embeddings, attention and hidden states learn from the fine-tuned teacher."""
    cfg, t = ctx.cfg, ctx.cfg.task_distill
    teacher_dir = finetune_teacher(ctx)
    stage = intermediate_stage(ctx)
    if stage.is_done():
        announce_once(str(stage.dir), f"[intermediate] reusing {stage.model_dir}")
        return stage.model_dir
    teacher = load_finetuned(teacher_dir)
    student, init = _student_start(ctx, teacher)
    if not t.intermediate_losses:
        stage.start()
        ctx.saver()(student, stage.model_dir)
        stage.finish({"skipped": "no intermediate_losses", "init": init})
        return stage.model_dir
    carry = [general_stage(ctx).dir] if cfg.general.enabled else []
    objective = task_objective(ctx, t.intermediate_losses, student, teacher, carry_from=carry)
    train_set = _train_set(ctx, teacher_dir)
    stage.start()
    print(f"[intermediate] student from {init}; {len(train_set)} training examples; layer map:\n"
          f"{describe(objective.matches)}")
    train_set = _logit_sink_for_later_stages(ctx, objective, teacher, train_set)
    train_set = feature_cache.prepare(ctx, objective, teacher_dir, train_set)  # when >= 2 epochs and it fits
    tracker = ctx.tracker(stage.dir, "intermediate")
    result = train(objective, ctx.loader("train", t.intermediate.batch_size, True, train_set), t.intermediate,
                   stage.dir, save_model=_distill_saver(ctx), tracker=tracker, seed=cfg.seed, desc="2a intermediate")
    final = result.history[-1] if result.history else {}
    tracker.summary(final)
    tracker.finish()
    stage.finish({"steps": result.step, "init": init, "train_examples": len(train_set), "final": final})
    objective.logit_sink = None  # (stored when it completed; an incomplete one leaves 2b its own pass)
    return stage.model_dir


def run_prediction(ctx: RunContext) -> Path:
    """2b: the prediction layer learns the teacher's soft labels (and optionally the gold labels)."""
    cfg, t = ctx.cfg, ctx.cfg.task_distill
    start = run_intermediate(ctx)
    stage = prediction_stage(ctx)
    if stage.is_done():
        announce_once(str(stage.dir), f"[student] reusing {stage.model_dir} (test {stage.result()['test']['score']:.4f})")
        return stage.model_dir
    teacher_dir = finetune_teacher(ctx)
    teacher = load_finetuned(teacher_dir)
    student = load_finetuned(start)
    objective = task_objective(ctx, t.prediction_losses, student, teacher, carry_from=task_stage_dirs(ctx)[:-1])
    train_set = _train_set(ctx, teacher_dir)
    stage.start()
    train_set = cache_teacher_logits(ctx, objective, teacher, train_set, t.prediction.mixed_precision)
    data = ctx.data
    dev = ctx.loader("dev", 128)
    tracker = ctx.tracker(stage.dir, "prediction")
    result = train(objective, ctx.loader("train", t.prediction.batch_size, True, train_set), t.prediction,
                   stage.dir, save_model=_distill_saver(ctx), evaluate=lambda m: evaluate(m.student, dev, data),
                   tracker=tracker, seed=cfg.seed, desc="2b prediction")
    scores = _final_scores(ctx, stage.model_dir, result.step)
    tracker.summary(scores)
    tracker.finish()
    stage.finish(scores)
    _print_scores("student", scores, ctx)
    return stage.model_dir


def cache_teacher_logits(ctx: RunContext, objective: DistillObjective, teacher, train_set,
                         mixed_precision: str = "auto"):
    """When only output losses are trained, the teacher runs once over the data instead of every epoch,
    on the accelerator and in the ``mixed_precision`` of the training that uses the logits."""
    if not objective.output_only:
        return train_set
    from distill.engine import logit_cache

    place = placement(mixed_precision)
    key = _logit_key(teacher, train_set, mixed_precision, objective.kind)

    def compute(dataset):
        print(f"[teacher] logits for {len(dataset)} training examples, computed once and reused every epoch")
        return with_teacher_logits(teacher, dataset, lambda d: ctx.loader("train", 128, dataset=d), place,
                                   kind=objective.kind)

    return logit_cache.reuse_or_compute(getattr(ctx, "run_dir", None), key, train_set, compute)  # across stages too


def _logit_key(teacher, train_set, mixed_precision: str, kind) -> str | None:
    from distill.engine import logit_cache

    place = placement(mixed_precision)
    return logit_cache.cache_key(teacher.name_or_path, train_set, place.device.type, place.dtype,
                                 type(kind).__name__ + str(getattr(kind, "name", "")))


def _logit_sink_for_later_stages(ctx: RunContext, objective: DistillObjective, teacher, train_set):
    """Stage 2a runs the teacher over the very examples 2b then distils the logits of: keep those logits
    (a LogitSink on the objective, example ids on the training set) so 2b and pruning recovery need no
    teacher pass of their own. Only when 2b trains output losses alone on the same data in the same
    precision, in one process (a rank sees a shard), and its cache entry is not there yet. The entry is
    written the moment the sink holds every example (after the feature-cache build, or during 2a's first
    pass). Returns the training set, with an example id column when the sink is on."""
    from distill.engine import logit_cache
    from distill.engine.feature_cache import ID_COLUMN

    t = ctx.cfg.task_distill
    later = losses_for_task(t.prediction_losses, ctx.data.is_regression)
    if not later or any(LOSSES[name].feature not in ("logits", "labels") for name in later) or process_count() > 1:
        return train_set
    if placement(t.intermediate.mixed_precision) != placement(t.prediction.mixed_precision):
        return train_set
    if feature_cache.planned_passes(t.intermediate, len(train_set), 1) < 1:  # it would never see every example
        return train_set
    key = _logit_key(teacher, train_set, t.prediction.mixed_precision, ctx.data.kind)
    if key is None or logit_cache.entry_folder(ctx.run_dir, key).is_dir():
        return train_set
    objective.logit_sink = logit_cache.LogitSink(
        len(train_set), ctx.data.kind, on_complete=lambda: _keep_teacher_logits(ctx, objective, train_set, key))
    return train_set.add_column(ID_COLUMN, np.arange(len(train_set), dtype=np.int64))


def _keep_teacher_logits(ctx: RunContext, objective: DistillObjective, train_set, key: str | None) -> None:
    """The logits 2a's teacher passes produced, stored as 2b's cache entry once every example has them
    (a 2a resumed in its last epoch sees only part of its data: 2b then runs the teacher as usual). Any
    failure here (full disk, memory, Arrow) costs 2b its own teacher pass, never 2a's training."""
    from distill.engine import logit_cache

    sink, objective.logit_sink = objective.logit_sink, None
    if key is None or sink is None or not sink.complete:
        return

    def from_2a(dataset):
        print(f"[teacher] logits for {len(dataset)} training examples kept from 2a's teacher passes (2b reads "
              "them instead of running the teacher again)")
        import pyarrow as pa
        from datasets import Dataset
        from datasets.table import InMemoryTable

        return Dataset(InMemoryTable(pa.table({"teacher_logits": logit_cache.arrow_rows(sink.rows)})))

    try:
        logit_cache.reuse_or_compute(ctx.run_dir, key, train_set, from_2a)
    except Exception as error:  # noqa: BLE001  (memory, Arrow, disk: 2b falls back to its own teacher pass)
        reason = getattr(error, "strerror", None) or error
        print(f"[teacher] keeping 2a's teacher logits failed ({type(error).__name__}: {reason}); 2b will run the "
              "teacher")


def _final_scores(ctx: RunContext, folder: Path, steps: int) -> dict:
    """Dev and test scores of a stage's model, on the accelerator, in full precision (the reported number)."""
    model = load_finetuned(folder).to(placement("no").device)
    return {"dev": evaluate(model, ctx.loader("dev", 128), ctx.data),
            "test": evaluate(model, ctx.loader("test", 128), ctx.data),
            "params": count_parameters(model), "steps": steps}


def _print_scores(name: str, scores: dict, ctx: RunContext) -> None:
    from distill.report.summary import score_report

    if "test" in scores:
        print(f"[{name}] {score_report(ctx, scores)}")


# ---------------------------------------------------------------------------------------------------
# baseline


def run_baseline(ctx: RunContext) -> Path:
    """The same student (shape and init) fine-tuned on the gold labels alone, with no teacher signal."""
    cfg = ctx.cfg
    t = cfg.task_distill
    stage = StageRun(ctx.run_dir, "student-baseline", {
        "student": cfg.student, "task": cfg.task, "seed": cfg.seed, "train": t.prediction,
        "teacher": cfg.teacher.name,
        "inputs": input_digests(cfg, "teacher.name", "student.init", "task.name", "task.data_dir")})
    if stage.is_done():
        _print_scores("baseline", stage.result(), ctx)
        return stage.model_dir
    # no distillation anywhere: with init=teacher the layers come from the *pretrained* teacher (as when
    # fine-tuning a truncated model), never from the fine-tuned one or a distilled general student
    teacher = load_backbone(cfg.teacher.name)
    student = build_student(student_shape(ctx), teacher, kind=ctx.data.kind.student_kind,
                            label_names=ctx.data.label_names,
                            init=cfg.student.init, init_layers=cfg.student.init_layers,
                            init_layer_list=cfg.student.init_layer_list, seed=cfg.seed)
    del teacher
    stage.start()
    dev = ctx.loader("dev", 128)
    tracker = ctx.tracker(stage.dir, "baseline")
    result = train(FineTuneObjective(student, ctx.data.kind), ctx.loader("train", t.prediction.batch_size, True), t.prediction,
                   stage.dir, save_model=ctx.saver(), evaluate=lambda m: evaluate(m, dev, ctx.data),
                   tracker=tracker, seed=cfg.seed, desc="baseline")
    scores = _final_scores(ctx, stage.model_dir, result.step)
    tracker.summary(scores)
    tracker.finish()
    stage.finish(scores)
    _print_scores("baseline", scores, ctx)
    return stage.model_dir
