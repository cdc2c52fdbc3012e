"""wandb artifacts: logged by reference (or uploaded from the run folder), never copied into wandb's staging folder."""
from pathlib import Path

import pytest

from distill.engine.tracking import Tracker


@pytest.fixture()
def wandb_home(tmp_path, monkeypatch):
    """An offline wandb whose home, data, cache and config folders lie under tmp_path; returns its staging folder."""
    home = tmp_path / "home"
    for var, sub in (("HOME", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return home / "data" / "artifacts" / "staging"


@pytest.fixture()
def model_folder(tmp_path):
    folder = tmp_path / "run" / "student-task"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 400)
    (folder / "config.json").write_text("{}")
    return folder


def staged_files(staging: Path) -> list[Path]:
    return [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []


def test_staging_folder_is_where_wandb_copies(wandb_home, model_folder):
    """Control: wandb's default add_dir copies every file into the staging folder this test watches."""
    import wandb

    wandb.Artifact("control", type="model").add_dir(str(model_folder))
    assert len(staged_files(wandb_home)) == 2


@pytest.mark.parametrize("copy", ["", "1"])
def test_log_artifacts_leaves_no_staging_copy(wandb_home, model_folder, tmp_path, monkeypatch, copy):
    monkeypatch.setenv("DISTILL_WANDB_COPY", copy)
    tracker = Tracker(tmp_path / "run" / "bench", "bench", mode="offline", run_dir=tmp_path / "run")
    logged = []
    real_log_artifact = tracker._wandb.log_artifact
    monkeypatch.setattr(tracker._wandb, "log_artifact", lambda a: (logged.append(a), real_log_artifact(a))[1])
    tracker.log_artifacts({"student-task": model_folder})
    tracker.finish()

    assert staged_files(wandb_home) == []
    (artifact,) = logged
    entries = artifact.manifest.entries
    assert sorted(entries) == ["config.json", "model.safetensors"]
    weights = entries["model.safetensors"]
    if copy:  # uploaded, read from the run folder itself
        assert weights.ref is None and Path(weights.local_path) == model_folder / "model.safetensors"
    else:  # a reference: the file's own path, nothing to upload
        assert weights.ref == (model_folder / "model.safetensors").resolve().as_uri()
        assert weights.local_path is None
    assert weights.size == 256 * 400
