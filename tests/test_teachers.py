import pytest
import torch

from distill.tasks import SEQUENCE_CLASSIFICATION
from distill.engine.features import FeatureTap
from teachers.load import TeacherLoadError, has_mlm_head, load_classifier, load_tokenizer, resolve_teacher_path


@pytest.fixture(scope="module")
def minilm():
    return load_classifier("minilm-l6", ["rotten", "fresh"], SEQUENCE_CLASSIFICATION).eval(), load_tokenizer("minilm-l6")


def test_embedded_teacher_is_the_real_pretrained_minilm(minilm):
    model, tok = minilm
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    # real weights, not a fresh init: the pretrained [CLS] embedding differs from a random N(0, 0.02) draw
    emb = model.bert.embeddings.word_embeddings.weight
    assert emb.std() > 0.04 and not torch.allclose(emb[101], torch.zeros(384))
    assert not has_mlm_head("minilm-l6")


def test_teacher_returns_one_attention_map_per_layer(minilm):
    model, tok = minilm
    enc = tok(["a quietly devastating film", "dull"], padding=True, return_tensors="pt")
    out = model(**enc, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 6 and len(out.hidden_states) == 7
    assert out.attentions[0].shape == (2, 12, enc["input_ids"].shape[1], enc["input_ids"].shape[1])
    torch.testing.assert_close(out.attentions[3].sum(-1), torch.ones(2, 12, enc["input_ids"].shape[1]))


def test_tapped_scores_are_the_pre_softmax_logits_of_the_real_attention(minilm):
    model, tok = minilm
    enc = tok(["a quietly devastating film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
        tap = FeatureTap(model, attention=True)
        feats = tap(dict(enc))
        tap.remove()
    bias = (1 - enc["attention_mask"])[:, None, None, :] * -1e9
    for layer in range(6):
        probs = torch.softmax(feats.attention[layer].scores() + bias, dim=-1)
        torch.testing.assert_close(probs, out.attentions[layer], atol=1e-5, rtol=1e-4)


def test_missing_teacher_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherLoadError, match="does not exist"):
        resolve_teacher_path("./no/such/folder")
    (tmp_path / "x").mkdir()
    with pytest.raises(TeacherLoadError, match="no config.json"):
        resolve_teacher_path(str(tmp_path / "x"))


def test_hub_name_without_network_names_the_fix():
    with pytest.raises(TeacherLoadError, match="minilm-l6"):
        load_tokenizer("bert-large-uncased-not-cached")
