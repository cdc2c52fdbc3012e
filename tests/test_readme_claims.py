"""The README names only things that exist: every `make` target, every CLI command and every config key
it mentions (a renamed target or key fails here, not in a new user's first hour)."""
import dataclasses
import re
import typing
from pathlib import Path

from distill.cli import CHOOSE, COMMANDS
from distill.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTIONS = {f.name for f in dataclasses.fields(ExperimentConfig) if dataclasses.is_dataclass(f.type)
            or f.name in typing.get_type_hints(ExperimentConfig)}


def _targets() -> set[str]:
    return set(re.findall(r"(?m)^([a-z][a-z-]*):", (ROOT / "Makefile").read_text()))


def _key_exists(key: str) -> bool:
    tp = ExperimentConfig
    for part in key.split("."):
        if typing.get_origin(tp) is dict:  # {loss: weight} maps take any name
            tp = typing.get_args(tp)[1]
            continue
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return True


def test_every_make_target_in_the_readme_exists():
    named = set(re.findall(r"(?m)(?:^|`|\$ |&& )make ([a-z][a-z-]*)", README))
    assert named, "no make commands found"
    assert named <= _targets(), sorted(named - _targets())


def test_every_cli_command_in_the_readme_exists():
    named = set(re.findall(r"(?:python -m distill|bert-distill) ([a-z][a-z-]*)", README))
    assert named <= set(COMMANDS) | {CHOOSE}, sorted(named - set(COMMANDS) - {CHOOSE})


def test_every_config_key_in_the_readme_exists():
    candidates = set(re.findall(r"(?<![\w./-])((?:%s)(?:\.[a-z_0-9]+)+)(?==|`|\s|,|\))" % "|".join(
        sorted(typing.get_type_hints(ExperimentConfig), key=len, reverse=True)), README))
    candidates = {c for c in candidates if not c.endswith((".yaml", ".py", ".json", ".md", ".txt"))}
    assert len(candidates) > 20, sorted(candidates)
    deliberate = {"teacher.finetune.lrr"}  # the README's example of the error a misspelt key gets
    missing = sorted(c for c in candidates - deliberate if not _key_exists(c))
    assert not missing, missing


def test_the_key_check_would_catch_a_renamed_key():
    assert _key_exists("teacher.finetune.lr") and _key_exists("general.losses.hidden_mse")
    assert not _key_exists("teacher.finetune.learning_rate") and not _key_exists("prune.ratios")
