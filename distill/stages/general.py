"""Stage 1, general distillation: unlabeled text (a corpus, packed into sequences, or a stream), the
teacher's embeddings, attention and hidden states (+ MLM terms when the teacher has an MLM head)."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from distill.base.ranks import process_count
from distill.data.corpus import MIN_WIKI_WORDS, iter_documents, pack_sequences
from distill.data.masking import MLMCollator
from distill.data.packing import DocumentCollator, check_block_mask
from distill.data.stream import open_stream
from distill.engine.layer_map import build_layer_map, describe
from distill.engine.objectives import DistillObjective
from distill.engine.trainer import train
from distill.fingerprint import input_digests, stage_value
from distill.stages.common import MLM_LOSSES, distill_saver, student_shape
from distill.stages.context import RunContext
from distill.stages.spec import Output, Stage
from students.build import build_student, count_parameters
from teachers.load import has_mlm_head, load_backbone
from distill.base.errors import InputError


def settings(ctx: RunContext, upstream: dict[str, str]) -> dict:
    cfg = ctx.cfg
    teacher = upstream["teacher"] if cfg.general.teacher == "task" else cfg.general.teacher or cfg.teacher.name
    return {"teacher": teacher, "student": cfg.student, "general": general_settings(cfg.general), "seed": cfg.seed,
            "inputs": input_digests(cfg, "teacher.name", "general.teacher", "student.init", "general.corpus")}


def general_settings(g) -> dict:
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


def work(ctx: RunContext, stage, inputs: dict[str, Output]) -> dict:
    """Stage 1: the student learns the (pretrained or fine-tuned) teacher's features on unlabeled text."""
    cfg, g = ctx.cfg, ctx.cfg.general
    teacher_name = str(inputs["teacher"].model_dir) if g.teacher == "task" else g.teacher or cfg.teacher.name
    wants_mlm = any(name in MLM_LOSSES for name in g.losses)
    if wants_mlm and not has_mlm_head(teacher_name):
        raise InputError(f"general.losses asks for {[n for n in g.losses if n in MLM_LOSSES]} but the teacher "
                         f"{teacher_name!r} has no MLM head; drop those losses or set general.teacher to a "
                         "checkpoint with one (e.g. bert-large-uncased)")
    cache = Path(cfg.output_dir) / ".cache"
    if g.streaming and process_count() > 1:
        raise InputError("general.streaming=true runs in one process for now (several processes would each read "
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
    stage.start()  # the corpus is readable: record the attempt now, not before (a bad corpus leaves no folder)
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
    result = train(objective, loader, g.train, stage.dir, save_model=distill_saver(ctx), tracker=tracker,
                   seed=cfg.seed, desc="general")
    final = result.history[-1] if result.history else {}
    tracker.summary(final)
    tracker.finish()
    return {"steps": result.step, "sequences": len(sequences), "streaming": g.streaming, "final": final}


STAGE = Stage("general", "student-general", "stage 1: the student learns a teacher on unlabeled text", settings, work,
              reads=lambda cfg: ("teacher",) if cfg.general.teacher == "task" else (),
              enabled=lambda cfg: cfg.general.enabled)
