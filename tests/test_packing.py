"""general.packing: concat | intra_doc | per_doc; block-diagonal masks, restarting positions, losses per document."""
import pytest
import torch
from transformers import AttentionInterface, AutoModel, BertForMaskedLM, BertModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from distill.base import assets
from distill.engine.batching import make_loader, to_model_inputs
from distill.data.corpus import pack_sequences
from distill.engine.layer_map import build_layer_map
from distill.engine.losses import attention_scores_mse, token_mse
from distill.engine.objectives import DistillObjective
from distill.data.packing import (BlockMaskError, DocumentCollator, check_block_mask, document_attention_mask,
                             document_positions)
from tests.conftest import tiny_config

DOCS = ["the cat sat on the mat and looked at the rain outside all afternoon",
        "stock markets fell sharply on monday after the central bank raised rates",
        "a short one here with nine word pieces ok",
        "photosynthesis converts light energy into chemical energy stored in glucose molecules"]


def test_document_positions_and_mask_hand_worked():
    doc_ids = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    assert document_positions(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    mask = document_attention_mask(doc_ids)
    assert mask[0].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]]
    assert mask[1].all()


def test_pack_modes(tokenizer):
    pieces = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in DOCS]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    max_len = 2 + pieces[0] + 2 + pieces[1]  # the first two documents fill one sequence exactly
    intra = pack_sequences(DOCS, tokenizer, max_len, packing="intra_doc", min_doc_tokens=1)
    assert intra["length"][0] == max_len
    for ids, docs in zip(intra["input_ids"], intra["doc_ids"]):
        assert len(ids) <= max_len and len(ids) == len(docs)
        starts = [i for i in range(len(ids)) if i == 0 or docs[i] != docs[i - 1]]
        assert all(ids[i] == cls and ids[i - 1 if i else -1] == sep for i in starts)  # whole [CLS] doc [SEP] segments
    # every document appears whole, in corpus order
    segments = [ids[i] for ids, docs in zip(intra["input_ids"], intra["doc_ids"]) for i in range(len(ids))]
    assert segments == [t for d in DOCS for t in [cls] + tokenizer(d, add_special_tokens=False)["input_ids"] + [sep]]
    per_doc = pack_sequences(DOCS, tokenizer, 64, packing="per_doc", min_doc_tokens=1)
    assert per_doc["length"] == [p + 2 for p in pieces] and "doc_ids" not in per_doc.column_names
    # a minimum drops short documents; a document over max_len - 2 pieces is cut, its short tail dropped
    assert len(pack_sequences(DOCS, tokenizer, 64, packing="per_doc", min_doc_tokens=pieces[2] + 1)) == 3
    cut = pack_sequences(DOCS[:1], tokenizer, 2 + 5, packing="per_doc", min_doc_tokens=pieces[0] % 5 + 1)
    assert cut["length"] == [7] * (pieces[0] // 5)
    concat = pack_sequences(DOCS, tokenizer, 16, min_doc_tokens=1)
    joined = [t for d in DOCS for t in tokenizer(d, add_special_tokens=False)["input_ids"] + [sep]]
    assert [ids[1:-1] for ids in concat["input_ids"]][:3] == [joined[i:i + 14] for i in (0, 14, 28)]


def test_bad_corpora_fail_before_training(tokenizer):
    with pytest.raises(ValueError, match="holds no text"):
        pack_sequences([], tokenizer, 32, packing="intra_doc")
    with pytest.raises(ValueError, match="shorter than general.min_doc_tokens=20"):
        pack_sequences(["too short", "also short"], tokenizer, 32, packing="per_doc", min_doc_tokens=20)


def _packed_and_alone(tokenizer, docs, max_len=128):
    data = pack_sequences(docs, tokenizer, max_len, packing="intra_doc", min_doc_tokens=1)
    assert len(data) == 1
    collator = DocumentCollator(lambda feats: tokenizer.pad(feats, return_tensors="pt"))
    packed = next(iter(make_loader(data, tokenizer, 4, shuffle=False, collator=collator)))
    alone = tokenizer(docs, padding=True, return_tensors="pt")
    return packed, alone


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_documents_get_their_own_hidden_states_on_the_real_teacher(tokenizer, impl):
    """A sequence packed under intra_doc gives each document the hidden states it has alone, every layer."""
    teacher = AutoModel.from_pretrained(assets.minilm_dir()).eval()
    teacher.set_attn_implementation(impl)
    docs = DOCS[:3]
    packed, alone = _packed_and_alone(tokenizer, docs)
    with torch.no_grad():
        out = teacher(**to_model_inputs(packed), output_hidden_states=True)
        ref = teacher(**dict(alone), output_hidden_states=True)
    doc_ids = packed["doc_ids"][0] if "doc_ids" in packed else None
    assert doc_ids is None  # the collator turns doc_ids into the mask and positions
    offset = 0
    for i in range(len(docs)):
        n = int(alone["attention_mask"][i].sum())
        for layer, (h, r) in enumerate(zip(out.hidden_states, ref.hidden_states)):
            torch.testing.assert_close(h[0, offset:offset + n], r[i, :n], atol=1e-5, rtol=0,
                                       msg=lambda m: f"document {i}, layer {layer}: {m}")
        offset += n
    # without the mask (plain concat) the documents do change each other
    with torch.no_grad():
        mixed = teacher(input_ids=packed["input_ids"], output_hidden_states=True).hidden_states[-1]
    n0 = int(alone["attention_mask"][0].sum())
    assert (mixed[0, :n0] - ref.hidden_states[-1][0, :n0]).abs().max() > 1e-2


def test_every_loss_stays_inside_its_document(tokenizer, tiny_mlm_teacher_dir):
    """The distillation terms on a packed batch equal those on the same documents padded one per row:
    pair losses see only same-document (query, key) pairs, token losses only real tokens."""
    teacher = BertForMaskedLM.from_pretrained(tiny_mlm_teacher_dir).eval()
    teacher.set_attn_implementation("eager")
    torch.manual_seed(3)
    student = BertForMaskedLM(tiny_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                          intermediate_size=32)).eval()
    student.set_attn_implementation("eager")
    losses = {"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_scores_mse": 1.0, "attention_kl": 1.0,
              "value_relation_kl": 1.0,
              "mlm_soft_ce": 1.0}
    objective = DistillObjective(student, teacher, build_layer_map(losses, "uniform", 2, 4), temperature=2.0)
    objective.trainable.eval()
    packed, alone = _packed_and_alone(tokenizer, DOCS[:3])
    # pair and token sums scale with the number of pairs/tokens: compare per document, one row each
    _, alone_terms = objective(dict(alone))
    _, packed_terms = objective(packed)
    for name in ("embedding_mse", "hidden_mse", "mlm_soft_ce"):  # token means: same tokens, same mean
        assert abs(packed_terms[name] - alone_terms[name]) < 1e-5, name
    for name in ("attention_scores_mse", "attention_kl", "value_relation_kl"):  # same pairs, same queries
        assert abs(packed_terms[name] - alone_terms[name]) < 1e-5, name


def test_attention_scores_mse_counts_only_same_document_pairs():
    torch.manual_seed(0)
    s, t = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    doc_ids = torch.tensor([[1, 1, 2, 0]])
    mask = document_attention_mask(doc_ids)
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]
    expected = sum(float(((s[0, h, q, k] - t[0, h, q, k]) ** 2)) for h in range(2) for q, k in pairs) / (2 * 5)
    assert abs(float(attention_scores_mse(s, t, mask)) - expected) < 1e-6
    hidden_s, hidden_t = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    assert abs(float(token_mse(hidden_s, hidden_t, mask)) - float(((hidden_s - hidden_t)[0, :3] ** 2).mean())) < 1e-6


def _ignore_mask(module, query, key, value, attention_mask, **kwargs):
    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


def test_block_mask_check_refuses_an_attention_that_ignores_the_mask():
    AttentionInterface.register("test_ignore_mask", _ignore_mask)
    model = BertModel(tiny_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32))
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        check_block_mask(model, "student")
    model.set_attn_implementation("test_ignore_mask")
    with pytest.raises(BlockMaskError, match="student's attention implementation 'test_ignore_mask' lets documents"):
        check_block_mask(model, "student")


@pytest.mark.parametrize("packing,masking", [("intra_doc", "mac"), ("per_doc", "whole_word")])
def test_general_stage_trains_with_packing_and_masking(tmp_path, tiny_mlm_teacher_dir, task_folder, monkeypatch,
                                                       packing, masking):
    from distill.config import load_config
    from distill.runner.plan import build, stage_run
    from distill.stages.context import RunContext

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the film number {i} was shown in the old cinema on a rainy evening." * (1 + i % 3)
                                for i in range(40)))
    overrides = [f"output_dir={tmp_path / 'runs'}", f"teacher.name={tiny_mlm_teacher_dir}", f"task.name={task_folder}",
                 "student.preset=custom", "student.layers=2", "student.hidden=32", "student.heads=4",
                 "student.ffn=32", f"general.corpus={corpus}", "general.max_len=48", f"general.packing={packing}",
                 f"general.masking={masking}",
                 "general.losses={attention_scores_mse: 1.0, hidden_mse: 1.0, mlm_soft_ce_t2: 1.0}",
                 "general.train.max_steps=2", "general.train.batch_size=4", "general.train.save_every=0"]
    ctx = RunContext(load_config(None, overrides))
    seen = []
    real_call = DistillObjective.__call__

    def recording(self, batch):
        seen.append({k: tuple(v.shape) for k, v in batch.items()})
        return real_call(self, batch)

    monkeypatch.setattr(DistillObjective, "__call__", recording)
    folder = build(ctx, "general")
    assert (folder / "model.safetensors").is_file()
    result = stage_run(ctx, "general").result()
    assert result["steps"] == 2 and all(v == v for v in result["final"].values())
    b, s = seen[0]["input_ids"]
    assert seen[0]["attention_mask"] == ((b, s, s) if packing == "intra_doc" else (b, s))
    assert ("position_ids" in seen[0]) == (packing == "intra_doc") and "mlm_labels" in seen[0]
    assert "packing" in stage_run(ctx, "general").settings["general"]


def test_general_fingerprint_keeps_runs_made_before_packing_existed():
    from distill.config import load_config
    from distill.stages.general import general_settings as _general_settings

    default = _general_settings(load_config(None, []).general)
    assert not {"packing", "masking", "mac_neighbours", "min_doc_tokens"} & set(default)
    assert _general_settings(load_config(None, ["general.packing=intra_doc"]).general)["packing"] == "intra_doc"


def test_bm25_groups_related_documents_and_keeps_every_one(tokenizer):
    """Corpus order alternates two topics; bm25 order puts each topic's documents in the same sequences."""
    cats = [f"the cat {w} purred and the kitten chased the cat toy" for w in ("softly", "loudly", "again")]
    ships = [f"the ship {w} sailed and the harbour crew loaded the ship cargo" for w in ("slowly", "early", "north")]
    docs = [d for pair in zip(cats, ships) for d in pair]
    pieces = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 2 for d in docs]
    max_len = sum(pieces[0::2])  # the three cat documents fill one sequence exactly
    by_corpus = pack_sequences(docs, tokenizer, max_len, packing="intra_doc", min_doc_tokens=1)
    by_bm25 = pack_sequences(docs, tokenizer, max_len, packing="intra_doc", min_doc_tokens=1, pack_order="bm25")
    topic = {tokenizer.convert_tokens_to_ids("cat"): "cat", tokenizer.convert_tokens_to_ids("ship"): "ship"}

    def topics(data):
        return [sorted({topic[t] for t in ids if t in topic}) for ids in data["input_ids"]]
    assert topics(by_corpus)[0] == ["cat", "ship"]  # corpus order mixes them
    assert topics(by_bm25) == [["cat"], ["ship"]]
    assert sum(by_bm25["length"]) == sum(pieces)  # every document kept, once
    concat = pack_sequences(docs, tokenizer, 64, min_doc_tokens=1, pack_order="bm25")
    assert topic[[t for t in concat["input_ids"][0] if t in topic][0]] == "cat"
    with pytest.raises(ValueError, match="pack_order 'bm25' with packing 'per_doc'"):
        pack_sequences(docs, tokenizer, 64, packing="per_doc", pack_order="bm25")
    from distill.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="general.pack_order.*packing=per_doc"):
        load_config(None, ["general.packing=per_doc", "general.pack_order=bm25"])


def test_the_first_sequence_reads_a_few_documents_not_a_thousand(tokenizer):
    """The preflight packs one sequence to prove the corpus readable; documents of a lazily parsed wiki dump
    cost ~1 s per article, so tokenizing them 1,000 at a time made that check take 17 s."""
    from distill.data.corpus import iter_sequences

    pulled = []

    def documents():
        for i in range(5000):
            pulled.append(i)
            yield f"document number {i} says a few words about films and the people who make them."

    first = next(iter_sequences(documents(), tokenizer, 64))
    assert len(first["input_ids"]) == 64 and len(pulled) <= 16
    rows = list(iter_sequences((f"doc {i} has some words in it." for i in range(3000)), tokenizer, 64))
    assert sum(r["length"] for r in rows) > 3000 * 8 * 0.9  # every document still packed, in order
