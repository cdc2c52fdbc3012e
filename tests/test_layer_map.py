import pytest
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.engine.layer_map import LayerMapError, build_layer_map, teacher_layers
from distill.engine.objectives import DistillObjective
from tests.conftest import tiny_config


def test_strategies():
    assert teacher_layers("uniform", 4, 12) == [3, 6, 9, 12]  # TinyBERT g(m) = 3m
    assert teacher_layers("uniform", 2, 6) == [3, 6]
    assert teacher_layers("last", 2, 6) == [5, 6]
    assert teacher_layers("explicit", 2, 6, [1, 4]) == [1, 4]
    with pytest.raises(LayerMapError, match="2 layers"):
        teacher_layers("explicit", 2, 6, [1])
    with pytest.raises(LayerMapError, match="outside"):
        teacher_layers("explicit", 2, 6, [1, 7])


def test_matches_are_data():
    matches = build_layer_map({"embedding_mse": 1.0, "hidden_mse": 2.0, "soft_ce": 0.5}, "uniform", 2, 4)
    assert [(m.loss, m.student_layer, m.teacher_layer, m.weight) for m in matches] == [
        ("embedding_mse", 0, 0, 1.0), ("hidden_mse", 1, 2, 2.0), ("hidden_mse", 2, 4, 2.0), ("soft_ce", -1, -1, 0.5)]


def test_layer_map_is_validated_against_both_models(tiny_teacher_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)  # 4 layers, 4 heads
    student = BertForSequenceClassification(tiny_config(num_hidden_layers=2, num_attention_heads=2))
    matches = build_layer_map({"attention_scores_mse": 1.0}, "uniform", 2, 4)
    with pytest.raises(LayerMapError, match="use attention_kl"):
        DistillObjective(student, teacher, matches)
    DistillObjective(student, teacher, build_layer_map({"attention_kl": 1.0}, "uniform", 2, 4))  # fine
    three_labels = BertForSequenceClassification(tiny_config(num_hidden_layers=2, num_labels=3))
    with pytest.raises(LayerMapError, match="outputs"):
        DistillObjective(three_labels, teacher, build_layer_map({"soft_ce": 1.0}, "uniform", 2, 4))
