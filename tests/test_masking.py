"""general.masking: token | whole_word | mac, on hand-worked sentences."""
import pytest
import torch

from distill.config import ConfigError, load_config
from distill.data.masking import MLMCollator
from distill.data.masking import WordMasking

# the MiniLM WordPiece vocabulary splits "unaffable" into una ##ffa ##ble and keeps the other words whole
SENTENCE = "the unaffable playwright sat down"


def _ids(tokenizer, text=SENTENCE):
    return torch.tensor([tokenizer(text)["input_ids"]])


def test_words_group_pieces_and_skip_special_tokens(tokenizer):
    ids = _ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "the", "una", "##ffa", "##ble", "playwright", "sat",
                                                       "down", "[SEP]"]
    masking = WordMasking(tokenizer, 0.5, "whole_word")
    assert masking.words(ids[0].tolist()) == [[1], [2, 3, 4], [5], [6], [7]]
    # a ## piece right after [SEP] (a packed document starting mid-word) is a word of its own, not glued across
    packed = ids[0].tolist() + tokenizer.convert_tokens_to_ids(["##ffa", "sat"])
    assert masking.words(packed)[-2:] == [[9], [10]]


def test_whole_word_masks_every_piece_of_a_chosen_word_together(tokenizer):
    """7 real pieces at p=0.45 -> a budget of 3 pieces: 'unaffable' alone, or three one-piece words."""
    ids = _ids(tokenizer)
    masking = WordMasking(tokenizer, 0.45, "whole_word")
    words = masking.words(ids[0].tolist())
    seen_unaffable, branches = 0, {"mask": 0, "random": 0, "kept": 0}
    for seed in range(400):
        corrupted, labels = masking(ids, torch.Generator().manual_seed(seed))
        chosen = (labels[0] != -100).nonzero().flatten().tolist()
        assert len(chosen) == 3 and torch.equal(labels[0, chosen], ids[0, chosen])  # labels: the original pieces
        for word in words:  # every word is chosen whole or not at all
            assert all(p in chosen for p in word) or not any(p in chosen for p in word)
        if 2 in chosen:
            seen_unaffable += 1
            got = corrupted[0, [2, 3, 4]]
            if (got == tokenizer.mask_token_id).all():
                branches["mask"] += 1
            elif torch.equal(got, ids[0, [2, 3, 4]]):
                branches["kept"] += 1
            else:
                branches["random"] += 1
                assert (got != tokenizer.mask_token_id).all()  # never partly [MASK]
        assert torch.equal(corrupted[0, [0, 8]], ids[0, [0, 8]])  # [CLS] and [SEP] untouched
    assert seen_unaffable > 40
    assert 0.65 < branches["mask"] / seen_unaffable < 0.95  # 80 / 10 / 10
    assert branches["random"] > 0 and branches["kept"] > 0


def test_mac_replaces_chosen_words_with_teacher_embedding_neighbours(tokenizer):
    """Hand-built embeddings: 'dog' is 'cat''s nearest whole word, '##ble''s nearest ## piece is '##ness'."""
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    emb = torch.randn(len(tokenizer), 64)
    for near, of in (("dog", "cat"), ("##ness", "##ble")):
        emb[vocab[near]] = emb[vocab[of]] + 0.01 * torch.randn(64)
    ids = _ids(tokenizer, "cat")
    masking = WordMasking(tokenizer, 0.15, "mac", emb, neighbours=1)
    outcomes = {}
    for seed in range(300):
        corrupted, labels = masking(ids, torch.Generator().manual_seed(seed))
        assert labels[0].tolist() == [-100, vocab["cat"], -100]  # the one word is always chosen (budget >= 1)
        word = tokenizer.convert_ids_to_tokens([int(corrupted[0, 1])])[0]
        outcomes[word] = outcomes.get(word, 0) + 1
    assert tokenizer.mask_token not in outcomes  # correction, not [MASK]
    assert 0.7 < outcomes["dog"] / 300 < 0.9 and 0.03 < outcomes["cat"] / 300 < 0.2
    others = [w for w in outcomes if w not in ("dog", "cat")]
    assert others and all(w.isalpha() for w in others)  # the 10% random branch: random whole words
    # a word of several pieces keeps its length: each piece replaced by a piece of its own kind
    ids = _ids(tokenizer, "unaffable")
    for seed in range(50):
        corrupted, labels = masking(ids, torch.Generator().manual_seed(seed))
        tokens = tokenizer.convert_ids_to_tokens(corrupted[0, 1:4].tolist())
        assert not tokens[0].startswith("##") and all(t.startswith("##") for t in tokens[1:])
        if tokens[2] == "##ness":
            assert tokens[1] != "##ffa"  # replaced together with its word


@pytest.mark.parametrize("masking", ["whole_word", "mac"])
def test_word_masks_are_deterministic_per_seed_and_batch(tokenizer, masking):
    emb = torch.randn(len(tokenizer), 16)
    features = [dict(tokenizer(t)) for t in (SENTENCE, "a completely different sentence about unbelievable films")]
    collator = MLMCollator(tokenizer, 0.3, seed=7, masking=masking, embeddings=emb)
    torch.manual_seed(1)
    first = collator(features)
    after = torch.rand(3)
    torch.manual_seed(1)
    torch.rand(5)
    second = collator(features)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)  # no global random numbers used
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["mlm_labels"], second["mlm_labels"])
    assert first["input_ids"].shape == first["attention_mask"].shape
    other = MLMCollator(tokenizer, 0.3, seed=8, masking=masking, embeddings=emb)(features)
    assert not torch.equal(other["mlm_labels"], first["mlm_labels"])


def test_masking_without_an_mlm_term_is_refused():
    with pytest.raises(ConfigError, match="general.masking.*has none"):
        load_config(None, ["general.masking=whole_word"])
    assert load_config(None, ["general.masking=mac", "general.losses={mlm_soft_ce_t2: 1.0}"]).general.masking == "mac"
