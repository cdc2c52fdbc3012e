import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.passes.flops import encoder_flops
from students.build import StudentInitError, build_student, init_teacher_layers
from students.presets import PRESETS, resolve_shape
from tests.conftest import tiny_config


def test_presets_have_the_papers_shapes():
    assert PRESETS["tinybert-4l-312"] == resolve_shape("tinybert-4l-312")
    s = PRESETS["tinybert-4l-312"]
    assert (s.layers, s.hidden, s.heads, s.ffn) == (4, 312, 12, 1200)
    assert resolve_shape("tinybert-4l-312", layers=2).layers == 2
    with pytest.raises(ValueError, match="divisible"):
        resolve_shape("custom", 2, 100, 12, 50)


def test_init_layer_strategies():
    assert init_teacher_layers("uniform", 2, 6) == [2, 5]
    assert init_teacher_layers("uniform", 6, 12) == [1, 3, 5, 7, 9, 11]
    assert init_teacher_layers("first", 2, 6) == [0, 1]
    assert init_teacher_layers("last", 2, 6) == [4, 5]
    assert init_teacher_layers("explicit", 2, 6, [0, 3]) == [0, 3]
    with pytest.raises(StudentInitError):
        init_teacher_layers("explicit", 2, 6, [0, 9])


def _plant_ffn(layer, generator) -> list[int]:
    """Give 16 of the 64 FFN neurons |W_in row| * |W_out column| = 1 and every other neuron at most 0.1, with
    decoys whose input (or output) norm alone is the largest. Returns the 16 important neurons."""
    order = torch.randperm(64, generator=generator).tolist()
    important, big_in, big_out = sorted(order[:16]), order[16:32], order[32:48]
    norms_in, norms_out = torch.full((64,), 0.1), torch.full((64,), 0.1)  # the rest: 0.01
    norms_in[important], norms_out[important] = 1.0, 1.0
    norms_in[big_in], norms_out[big_in] = 10.0, 0.01  # 0.1: largest input norm, little effect
    norms_in[big_out], norms_out[big_out] = 0.01, 10.0  # 0.1: largest output norm, little effect
    with torch.no_grad():
        w_in, w_out = layer.intermediate.dense.weight, layer.output.dense.weight  # (64, hidden), (hidden, 64)
        w_in.mul_((norms_in / w_in.norm(dim=1))[:, None])
        w_out.mul_((norms_out / w_out.norm(dim=0))[None, :])
    return important


def test_init_from_teacher_copies_layers_and_keeps_the_planted_important_ffn_neurons(tiny_teacher_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    generator = torch.Generator().manual_seed(0)
    planted = {t: _plant_ffn(teacher.bert.encoder.layer[t], generator) for t in (1, 3)}
    assert planted[1] != planted[3]
    shape = resolve_shape("custom", 2, 32, 4, 16)  # teacher FFN 64 -> 16
    student = build_student(shape, teacher, "classifier", ["a", "b"], init="teacher", init_layers="explicit",
                            init_layer_list=[1, 3])
    torch.testing.assert_close(student.bert.embeddings.word_embeddings.weight,
                               teacher.bert.embeddings.word_embeddings.weight)
    for s_index, t_index in enumerate((1, 3)):
        t_layer, s_layer = teacher.bert.encoder.layer[t_index], student.bert.encoder.layer[s_index]
        torch.testing.assert_close(s_layer.attention.self.query.weight, t_layer.attention.self.query.weight)
        keep = planted[t_index]
        torch.testing.assert_close(s_layer.intermediate.dense.weight, t_layer.intermediate.dense.weight[keep])
        torch.testing.assert_close(s_layer.intermediate.dense.bias, t_layer.intermediate.dense.bias[keep])
        torch.testing.assert_close(s_layer.output.dense.weight, t_layer.output.dense.weight[:, keep])
        torch.testing.assert_close(s_layer.output.dense.bias, t_layer.output.dense.bias)
    with pytest.raises(StudentInitError, match="hidden width"):
        build_student(resolve_shape("custom", 2, 16, 4, 16), teacher, init="teacher")


def test_student_folder_round_trip(tmp_path, tiny_teacher_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    student = build_student(resolve_shape("custom", 2, 16, 2, 24), teacher, "classifier", ["neg", "pos"])
    student.save_pretrained(tmp_path)
    again = build_student(resolve_shape("tinybert-4l-312"), teacher, "classifier", ["neg", "pos"], init=str(tmp_path))
    assert again.config.hidden_size == 16  # the folder's shape wins over the preset
    ids = torch.tensor([[101, 2023, 3185, 102]])
    student.eval(), again.eval()
    torch.testing.assert_close(student(input_ids=ids).logits, again(input_ids=ids).logits)


def test_encoder_flops_match_torch_flop_counter():
    model = BertForSequenceClassification(tiny_config(num_hidden_layers=2)).eval()
    model.set_attn_implementation("eager")
    seq = 24
    ids = torch.randint(1000, 2000, (1, seq))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.bert.encoder(model.bert.embeddings(input_ids=ids))
    assert encoder_flops(model, seq) == counter.get_total_flops()
