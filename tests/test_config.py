import pytest
import yaml

from distill.config import ConfigError, ExperimentConfig, load_config, save_config


def test_defaults_validate():
    cfg = load_config()
    assert cfg.teacher.name == "bert-large-uncased"
    assert cfg.teacher.finetune.epochs == 3.0  # section-specific default, not TrainConfig's 1.0


def test_unknown_key_in_override_names_the_key():
    with pytest.raises(ConfigError, match=r"'teacher\.finetune\.lrr'.*unknown"):
        load_config(None, ["teacher.finetune.lrr=1e-5"])


def test_unknown_key_in_yaml_suggests_the_close_one(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("teacher:\n  nmae: minilm-l6\n")
    with pytest.raises(ConfigError, match=r"'teacher\.nmae'.*did you mean 'name'"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("teacher.finetune.batch_size=abc", "teacher.finetune.batch_size"),
    ("teacher.finetune.batch_size=2.5", "teacher.finetune.batch_size"),
    ("general.enabled=maybe", "general.enabled"),
    ("teacher.finetune.mixed_precision=fp8", "teacher.finetune.mixed_precision"),
    ("student.init_layer_list=3", "student.init_layer_list"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("teacher.finetune.lr=0", "teacher.finetune.lr"),
    ("task.max_len=100000", "task.max_len"),
    ("student.preset=giant", "student.preset"),
    ("task_distill.prediction_losses={made_up: 1.0}", "task_distill.prediction_losses.made_up"),
    ("general.layer_map=explicit", "general.layer_map_list"),
    ("run_id=a/b", "run_id"),
])
def test_impossible_value_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_and_overrides_merge_and_keep_types(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("teacher:\n  name: minilm-l6\n  finetune:\n    lr: 5e-5\n")
    cfg = load_config(path, ["teacher.finetune.batch_size=8", "run_id=7", "task_distill.prediction_losses.hard_ce=0.5"])
    assert cfg.teacher.finetune.lr == 5e-5 and isinstance(cfg.teacher.finetune.lr, float)
    assert cfg.teacher.finetune.batch_size == 8
    assert cfg.teacher.finetune.epochs == 3.0  # untouched sibling keeps its section default
    assert cfg.run_id == "7"  # str field: the override text is kept as a string
    assert cfg.task_distill.prediction_losses == {"soft_ce": 1.0, "hard_ce": 0.5}


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["teacher.name=minilm-l6", "student.preset=custom", "student.layers=2",
                             "student.hidden=64", "student.heads=2", "student.ffn=128"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["student"]["layers"] == 2


def test_missing_experiment_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("experiments/nope.yaml")


def test_every_experiment_file_validates():
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].glob("experiments/*.yaml"))
    assert files
    for path in files:
        assert isinstance(load_config(path), ExperimentConfig)
