"""Token classification: sub-word alignment (real MiniLM tokenizer, hand-worked), per-token losses
against element-by-element references, seqeval F1 against a known example, the collator."""
import math

import pytest
import torch

from distill.engine.losses import hard_ce, soft_ce
from distill.tasks.metrics import entity_metrics
from distill.tasks import TOKEN_CLASSIFICATION
from distill.tasks.token_classification import IGNORE, AlignmentStats, TokenCollator, encode_words

# CoNLL-2003 tag ids as load_token_task orders them
O, B_LOC, I_LOC, B_MISC, I_MISC, B_ORG, I_ORG, B_PER, I_PER = range(9)
X = IGNORE


def test_first_sub_token_carries_the_tag(tokenizer):
    # [CLS] nad ##im lad ##ki [SEP]
    enc = encode_words([["Nadim", "Ladki"]], [[B_PER, I_PER]], tokenizer, 128)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == ["[CLS]", "nad", "##im", "lad", "##ki", "[SEP]"]
    assert enc["labels"][0] == [X, B_PER, X, I_PER, X, X]
    # [CLS] al - ain , united arab emirates 1996 - 12 - 06 [SEP]
    words = ["AL-AIN", ",", "United", "Arab", "Emirates", "1996-12-06"]
    tags = [B_LOC, O, B_LOC, I_LOC, I_LOC, O]
    enc = encode_words([words], [tags], tokenizer, 128)
    assert enc["labels"][0] == [X, B_LOC, X, X, O, B_LOC, I_LOC, I_LOC, O, X, X, X, X, X]
    assert enc["length"][0] == 14


@pytest.mark.parametrize("max_len, kept_tokens, labels, truncated", [
    # 14 tokens do not fit in 10: cutting after 9 would split 1996-12-06, so the cut moves before it
    (10, ["[CLS]", "al", "-", "ain", ",", "united", "arab", "emirates", "[SEP]"],
     [X, B_LOC, X, X, O, B_LOC, I_LOC, I_LOC, X], 1),
    (6, ["[CLS]", "al", "-", "ain", ",", "[SEP]"], [X, B_LOC, X, X, O, X], 4),
    (3, ["[CLS]", "[SEP]"], [X, X], 6),  # the first word alone is longer than the budget
])
def test_long_sentences_are_cut_at_a_word_boundary_and_counted(tokenizer, max_len, kept_tokens, labels, truncated):
    words = ["AL-AIN", ",", "United", "Arab", "Emirates", "1996-12-06"]
    stats = AlignmentStats()
    enc = encode_words([words], [[B_LOC, O, B_LOC, I_LOC, I_LOC, O]], tokenizer, max_len, stats)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == kept_tokens
    assert len(enc["input_ids"][0]) <= max_len
    assert enc["labels"][0] == labels
    assert enc["attention_mask"][0] == [1] * len(kept_tokens)
    assert (stats.long_sentences, stats.truncated_words) == (1, truncated)
    assert f"{truncated} words cut off" in stats.line("test", max_len)


def test_per_token_soft_ce_matches_an_element_by_element_reference():
    torch.manual_seed(0)
    b, s, c, temperature = 3, 5, 4, 2.0
    student, teacher = torch.randn(b, s, c), torch.randn(b, s, c)
    labels = torch.tensor([[X, 1, X, 2, X], [X, 0, 3, X, X], [X, X, X, X, X]])
    mask = TOKEN_CLASSIFICATION.output_mask({"labels": labels, "attention_mask": torch.ones(b, s)})
    total, count = 0.0, 0
    for i in range(b):
        for j in range(s):
            if labels[i, j] == X:
                continue
            zs = [math.exp(student[i, j, k].item() / temperature) for k in range(c)]
            zt = [math.exp(teacher[i, j, k].item() / temperature) for k in range(c)]
            p_t = [z / sum(zt) for z in zt]
            log_p_s = [math.log(z / sum(zs)) for z in zs]
            total += -sum(p_t[k] * log_p_s[k] for k in range(c))
            count += 1
    assert count == 4
    assert soft_ce(student, teacher, mask, temperature=temperature).item() == pytest.approx(total / count, rel=1e-5)
    # positions outside the mask never matter
    changed = teacher.clone()
    changed[labels == X] = 100.0
    assert soft_ce(student, changed, mask, temperature=temperature).item() == pytest.approx(total / count, rel=1e-5)


def test_per_token_hard_ce_ignores_positions_without_a_tag():
    torch.manual_seed(1)
    student = torch.randn(2, 4, 3)
    labels = torch.tensor([[X, 2, 0, X], [X, 1, X, X]])
    expected = []
    for i, j in ((0, 1), (0, 2), (1, 1)):
        logp = torch.log_softmax(student[i, j], -1)
        expected.append(-logp[labels[i, j]].item())
    assert hard_ce(student, labels).item() == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_seqeval_entity_f1_on_a_known_example():
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    out = entity_metrics(gold, pred)  # 2 gold entities, 2 predicted, 1 exact match
    assert out["precision"] == pytest.approx(0.5) and out["recall"] == pytest.approx(0.5)
    assert out["entity_f1"] == pytest.approx(0.5) and out["score"] == out["entity_f1"]
    assert out["token_accuracy"] == pytest.approx(8 / 10)  # 2 of 10 tags differ
    pred[1] = ["B-PER", "O", "O"]  # a partial entity is wrong at entity level
    assert entity_metrics(gold, pred)["entity_f1"] == pytest.approx(0.0)


def test_token_metric_scores_only_word_positions():
    import numpy as np

    names = ["O", "B-PER", "I-PER"]
    logits = np.eye(3)[[0, 1, 0, 2, 0]]  # predicts O B-PER O I-PER O
    labels = np.array([X, 1, X, 2, X])  # words at positions 1 and 3: B-PER I-PER
    out = TOKEN_CLASSIFICATION.metrics([logits], [labels], "entity_f1", names)
    assert out["entity_f1"] == 1.0  # the sub-token positions (argmax O / whatever) do not count


def test_collator_pads_labels_and_variable_length_teacher_logits(tokenizer):
    features = [{"input_ids": torch.tensor([101, 2000, 102]), "attention_mask": torch.ones(3, dtype=torch.long),
                 "labels": torch.tensor([X, 1, X]), "teacher_logits": torch.ones(3, 2)},
                {"input_ids": torch.tensor([101, 2000, 2001, 2002, 102]), "attention_mask": torch.ones(5, dtype=torch.long),
                 "labels": torch.tensor([X, 0, 1, 2, X]), "teacher_logits": torch.full((5, 2), 2.0)}]
    batch = TokenCollator(tokenizer)(features)
    assert batch["input_ids"].shape == (2, 5) and batch["labels"].shape == (2, 5)
    assert batch["labels"][0].tolist() == [X, 1, X, X, X]
    assert batch["teacher_logits"].shape == (2, 5, 2)
    assert batch["teacher_logits"][0, 3:].abs().sum() == 0 and batch["teacher_logits"][1].eq(2.0).all()
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]


def test_per_token_hard_ce_is_zero_not_nan_when_no_position_has_a_tag():
    # a batch whose sentences kept no word (all pieces cut or empty) must not stop the run as "not finite"
    from distill.engine.losses import hard_ce

    loss = hard_ce(torch.randn(2, 3, 4), torch.full((2, 3), -100))
    assert torch.isfinite(loss) and loss.item() == 0.0
    logits, tags = torch.randn(1, 3, 4), torch.tensor([[-100, 2, 1]])
    assert torch.allclose(hard_ce(logits, tags), torch.nn.functional.cross_entropy(logits[0, 1:], tags[0, 1:]))
