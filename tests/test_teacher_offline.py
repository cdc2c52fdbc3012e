"""A hub teacher name fails at once, with the fix in the message, when the hub cannot be reached; a model the
local cache holds still loads (from the cache, without retrying the network). huggingface_hub reads
HF_HUB_OFFLINE / HF_ENDPOINT / HF_HUB_CACHE when it is imported, so the tests set its constants as well."""
import shutil
import socket
import time

import pytest
from huggingface_hub import constants

from distill.tasks import SEQUENCE_CLASSIFICATION
from teachers import load
from teachers.load import TeacherLoadError, load_classifier, load_config, load_tokenizer, local_model_folder

LOADS = [load_config, load_tokenizer, local_model_folder,
         lambda name: load_classifier(name, ["neg", "pos"], SEQUENCE_CLASSIFICATION)]


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """Online mode with an empty cache in tmp_path; returns a function that points the hub at an endpoint."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    load._probe_hub.cache_clear()

    def point_at(endpoint: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)

    yield point_at
    load._probe_hub.cache_clear()


@pytest.fixture()
def silent_endpoint():
    """A port that accepts connections (the kernel's backlog) but never answers: a hub behind a dead network."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def timed_errors(name: str) -> tuple[float, list[str | None]]:
    start, errors = time.perf_counter(), []
    for call in LOADS:
        try:
            call(name)
            errors.append(None)
        except TeacherLoadError as err:
            errors.append(str(err))
    return time.perf_counter() - start, errors


@pytest.mark.parametrize("how", ["offline", "refused", "silent"])
def test_uncached_hub_name_fails_fast_with_the_fix(how, hub, silent_endpoint, monkeypatch):
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        hub("http://127.0.0.1:9")  # never asked
    else:
        hub("http://127.0.0.1:9" if how == "refused" else silent_endpoint)  # port 9: nothing listens
    seconds, errors = timed_errors("bert-large-uncased")
    assert seconds < 5.0, errors  # before: 25-30 s per call, retrying the hub
    for error in errors:
        assert error is not None and "'bert-large-uncased'" in error and "\n" not in error
        assert "teacher.name=minilm-l6" in error and "local model folder" in error
        assert ("HF_HUB_OFFLINE" in error) == (how == "offline")
        assert ("cannot be reached" in error) == (how != "offline")


def test_cached_hub_model_loads_when_the_hub_cannot_be_reached(hub, tmp_path, tiny_teacher_dir):
    """The hub cache layout (models--owner--name/snapshots/<commit>/, refs/main) filled from a tiny model."""
    hub("http://127.0.0.1:9")
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--acme--tiny-bert"
    shutil.copytree(tiny_teacher_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    seconds, errors = timed_errors("acme/tiny-bert")
    assert errors == [None] * 4
    assert seconds < 5.0
    assert local_model_folder("acme/tiny-bert") == repo / "snapshots" / commit
