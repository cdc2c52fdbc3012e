"""Tracking: metrics.jsonl in the stage folder, and wandb (offline unless the user logged in)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def resolve_wandb_mode(mode: str) -> str:
    """auto -> WANDB_MODE if set, online if an API key is configured, else offline. Never needs the network."""
    if os.environ.get("WANDB_MODE") == "":
        del os.environ["WANDB_MODE"]  # wandb itself rejects an empty mode
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class Tracker:
    """Appends every logged dict to ``metrics.jsonl`` and mirrors it to a wandb run."""

    def __init__(self, out_dir: Path, stage: str, config: dict | None = None, project: str = "bert-distill",
                 group: str | None = None, mode: str = "auto", run_dir: Path | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.mode = resolve_wandb_mode(mode)
        self._wandb = None
        if self.mode != "disabled":
            import wandb

            wandb_dir = Path(run_dir or out_dir)
            wandb_dir.mkdir(parents=True, exist_ok=True)
            run_id = f"{group or 'run'}-{stage}".replace("/", "-")[:120]
            self._wandb = wandb.init(project=project, group=group, name=stage, id=run_id, resume="allow",
                                     mode=self.mode, dir=str(wandb_dir), config=config or {},
                                     settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"stage": self.stage, "step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in metrics.items()
                             if isinstance(v, (int, float))}, step=step)

    def log_artifacts(self, folders: dict[str, Path], kind: str = "model") -> None:
        """Model folders (student checkpoints, ONNX exports) as wandb artifacts; offline runs sync them later."""
        if self._wandb is None:
            return
        import wandb

        for name, folder in folders.items():
            artifact = wandb.Artifact(name.replace("/", "-"), type=kind)
            artifact.add_dir(str(folder))
            self._wandb.log_artifact(artifact)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update({f"{self.stage}/{k}": v for k, v in metrics.items()})

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def git_commit(path: Path | None = None) -> str:
    """The commit the code runs from ("unknown" outside a git checkout), with a -dirty mark."""
    import subprocess

    cwd = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
