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


@pytest.mark.parametrize("given, says", [("nope.yaml", "does not exist"), ("experiments", "is a folder")])
def test_wrong_config_path_lists_the_experiments(given, says, tmp_path, monkeypatch):
    """Run from a folder of one's own with experiments/ (and a sub-folder): those and the repo's are listed."""
    (tmp_path / "experiments" / "mine").mkdir(parents=True)
    (tmp_path / "experiments" / "mine" / "own.yaml").write_text("name: own\n")
    (tmp_path / "experiments" / "top.yaml").write_text("name: top\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(given)
    message = str(err.value)
    assert "\n" not in message and says in message and repr(given) in message
    listed = message.split("experiments: ", 1)[1].split(", ")
    assert "experiments/mine/own.yaml" in listed and "experiments/top.yaml" in listed
    assert any(name.endswith("/experiments/rotten_tomatoes_minilm.yaml") for name in listed)  # the repo's


@pytest.mark.parametrize("text, line, column, problem", [
    ("teacher:\n  name: minilm-l6\n  finetune: {lr: 1e-5\nstudent:\n  layers: 2\n", 4, 8,
     "expected ',' or '}', but got ':' (while parsing a flow mapping that starts on line 3)"),
    ("teacher:\n  name: minilm-l6\n   finetune: 1\n", 3, 12, "mapping values are not allowed here"),
    ("teacher:\n\tname: minilm-l6\n", 2, 1, "indent with spaces, not tabs"),
])
def test_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path, text, line, column, problem):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and "<unicode string>" not in message
    assert message.startswith(f"experiment file {str(path)!r}, line {line}, column {column}: invalid YAML: ")
    assert problem in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no yaml traceback behind it


def test_cli_prints_a_yaml_error_as_one_line(tmp_path, capsys):
    from distill.cli import main

    path = tmp_path / "broken.yaml"
    path.write_text("name: [a\n")
    with pytest.raises(SystemExit) as exit_:
        main(["config", "--config", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: experiment file {str(path)!r}, line 2") and "\n" not in err


def test_every_experiment_file_validates():
    from pathlib import Path

    files = sorted(Path(__file__).parents[1].glob("experiments/*.yaml"))
    assert files
    for path in files:
        assert isinstance(load_config(path), ExperimentConfig)


# ------------------------------------------------------------------------------------------------
# bad input caught when the config loads, before any weight


@pytest.mark.parametrize("value, hint", [
    ("tecaher", "did you mean 'teacher'"),
    ("Random", "did you mean 'random'"),
    ("runs/no/such/folder", "neither random, teacher nor a model folder"),
])
def test_student_init_typo_names_the_key(value, hint):
    with pytest.raises(ConfigError, match=rf"'student\.init'.*{hint}"):
        load_config(None, [f"student.init={value}"])


def test_student_init_folder_must_be_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"'student\.init'"):
        load_config(None, [f"student.init={tmp_path}"])  # exists, but holds no config.json
    (tmp_path / "config.json").write_text("{}")
    assert load_config(None, [f"student.init={tmp_path}"]).student.init == str(tmp_path)


@pytest.mark.parametrize("value, hint", [
    ("wikii", "did you mean 'wiki'"),
    ("Wiki", "did you mean 'wiki'"),
    ("./corpus.txt", "looks like a path"),
    ("data/texts/corpus", "looks like a path"),
    ("corpus.txt", "looks like a path"),
    ("my corpus", "not 'wiki', an existing text file"),
])
def test_general_corpus_typo_names_the_key(value, hint):
    with pytest.raises(ConfigError, match=rf"'general\.corpus'.*{hint}"):
        load_config(None, [f"general.corpus={value}"])


def test_general_corpus_accepts_wiki_paths_and_datasets_names(tmp_path):
    (tmp_path / "c.txt").write_text("text\n")
    for value in ("wiki", str(tmp_path / "c.txt"), str(tmp_path), "Salesforce/wikitext:wikitext-103-raw-v1",
                  "bookcorpus"):
        assert load_config(None, [f"general.corpus={value}"]).general.corpus == value
    assert load_config(None, ["general.enabled=false", "general.corpus=./gone.txt"])  # unused: not checked


@pytest.mark.parametrize("override, key, hint", [
    ("general.losses={}", "general.losses", "is empty"),
    ("general.losses={hidden_mse: 0.0}", "general.losses", "every weight is 0"),
    ("task_distill.prediction_losses={}", "task_distill.prediction_losses", "is empty"),
    ("task_distill.prediction_losses={soft_ce: 0, hard_ce: 0}", "task_distill.prediction_losses", "every weight is 0"),
    ("task_distill.intermediate_losses={hidden_mse: 0}", "task_distill.intermediate_losses", r"use \{\} to skip"),
    ("prune.recovery_losses={}", "prune.recovery_losses", "is empty"),
    ("prune.recovery_losses={soft_ce: 0.0}", "prune.recovery_losses", "every weight is 0"),
])
def test_empty_or_all_zero_loss_dict_names_the_key(override, key, hint):
    with pytest.raises(ConfigError, match=rf"'{key.replace('.', chr(92) + '.')}'.*{hint}"):
        load_config(None, [override])


def test_loss_dicts_that_are_allowed_to_be_empty():
    cfg = load_config(None, ["task_distill.intermediate_losses={}"])  # documented: skips stage 2a
    assert cfg.task_distill.intermediate_losses == {}
    assert load_config(None, ["general.enabled=false", "general.losses={}"])
    assert load_config(None, ["prune.enabled=false", "export.models=[student-task]", "prune.recovery_losses={}"])


@pytest.mark.parametrize("override, key", [
    ("task_distill.temperature=nan", "task_distill.temperature"),
    ("teacher.finetune.lr=inf", "teacher.finetune.lr"),
    ("prune.ratio=.nan", "prune.ratio"),
    ("teacher.finetune.max_grad_norm=.inf", "teacher.finetune.max_grad_norm"),
    ("general.losses.hidden_mse=inf", "general.losses.hidden_mse"),
    ("prune.layer_ratios=[0.1, .nan]", r"prune.layer_ratios\[1\]"),
])
def test_inf_and_nan_are_refused_in_every_float_key(override, key):
    with pytest.raises(ConfigError, match=rf"'{key.replace('.', chr(92) + '.')}': must be a finite number"):
        load_config(None, [override])


def test_inf_in_yaml_is_refused(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("task_distill:\n  prediction:\n    weight_decay: .inf\n")
    with pytest.raises(ConfigError, match=r"'task_distill\.prediction\.weight_decay': must be a finite"):
        load_config(path)


def test_unknown_bench_skip_format_names_the_key():
    with pytest.raises(ConfigError, match=r"'bench\.skip_formats'.*'int8'"):
        load_config(None, ["bench.skip_formats=[fp16, int8]"])
    assert load_config(None, ["bench.skip_formats=[fp16, int8-qdq]"]).bench.skip_formats == ["fp16", "int8-qdq"]


def test_task_type_is_a_checked_choice():
    assert load_config().task.type == "auto"
    with pytest.raises(ConfigError, match=r"'task\.type'"):
        load_config(None, ["task.type=regresion"])


def test_a_map_or_list_split_by_the_shell_is_joined_back():
    """`general.losses={hidden_mse: 1.0, attention_kl: 2}` unquoted (or through make's ARGS) reaches argv as
    four pieces; they mean one override, and the next override stays its own."""
    from distill.config import join_split_overrides

    pieces = ["general.losses={hidden_mse:", "1.0,", "attention_kl:", "2}", "seed=3"]
    assert join_split_overrides(pieces) == ["general.losses={hidden_mse: 1.0, attention_kl: 2}", "seed=3"]
    cfg = load_config(None, pieces + ["student.init_layer_list=[0,", "2]"])
    assert cfg.general.losses == {"hidden_mse": 1.0, "attention_kl": 2.0} and cfg.seed == 3
    assert cfg.student.init_layer_list == [0, 2]
    with pytest.raises(ConfigError, match="'student.init_layer_list'"):  # still a clear error when unbalanced
        load_config(None, ["student.init_layer_list=[0,", "2"])
