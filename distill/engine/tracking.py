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


COPY_ARTIFACTS_ENV = "DISTILL_WANDB_COPY"  # 1: upload model folders to wandb instead of logging references


def wandb_copies_artifacts() -> bool:
    """True when DISTILL_WANDB_COPY asks for the model files themselves in wandb (not only their paths)."""
    return os.environ.get(COPY_ARTIFACTS_ENV, "").strip().lower() not in ("", "0", "false", "no")


class Tracker:
    """Appends every logged dict to ``metrics.jsonl`` and mirrors it to a wandb run. Each record is one
    ``write`` of a whole line; a line cut short by a kill is dropped when the file is opened again.
    Under several processes only the main one tracks (the others' calls do nothing)."""

    def __init__(self, out_dir: Path, stage: str, config: dict | None = None, project: str = "bert-distill",
                 group: str | None = None, mode: str = "auto", run_dir: Path | None = None):
        from distill.base.ranks import is_main_process

        self.path = Path(out_dir) / "metrics.jsonl"
        self.stage = stage
        self.active = is_main_process()
        self.mode = resolve_wandb_mode(mode) if self.active else "disabled"
        self._wandb = None
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_tail(self.path)
        if self.mode != "disabled":
            import wandb

            wandb_dir = Path(run_dir or out_dir)
            wandb_dir.mkdir(parents=True, exist_ok=True)
            run_id = f"{group or 'run'}-{stage}".replace("/", "-")[:120]
            self._wandb = wandb.init(project=project, group=group, name=stage, id=run_id, resume="allow",
                                     mode=self.mode, dir=str(wandb_dir), config=config or {},
                                     settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active:
            return
        record = {"stage": self.stage, "step": step, "time": round(time.time(), 3), **metrics}
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one append of the whole line: never interleaved with another record
        finally:
            os.close(fd)
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in metrics.items()
                             if isinstance(v, (int, float))}, step=step)

    def rewind(self, step: int) -> None:
        """Drop records logged after ``step``: a run resumed from the checkpoint at ``step`` logs them again."""
        if not self.active or not self.path.is_file():
            return
        records = read_metrics(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            from distill.base.fsutil import write_text_atomic

            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log_artifacts(self, folders: dict[str, Path], kind: str = "model") -> None:
        """Model folders (student checkpoints, ONNX exports) as wandb artifacts, by reference: each file's
        ``file://`` path, size and checksum, nothing copied or uploaded (the files stay in the run folder).
        With ``DISTILL_WANDB_COPY=1`` the files themselves are uploaded, read straight from the run folder
        (offline: by ``wandb sync``, while that folder still exists). Either way nothing is copied into
        wandb's staging folder or artifact cache."""
        if self._wandb is None:
            return
        import wandb

        upload = wandb_copies_artifacts()
        for name, folder in folders.items():
            artifact = wandb.Artifact(name.replace("/", "-"), type=kind)
            if upload:
                # "immutable": upload from the folder itself, not from a copy made in wandb's staging folder
                artifact.add_dir(str(folder), policy="immutable", skip_cache=True)
            else:
                artifact.add_reference(Path(folder).resolve().as_uri())
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


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so the next record starts on its own line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with path.open("r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line a kill cut short is skipped. Where a resumed run logged a
    step again (a file written without ``rewind``), the later record with that step and those fields wins."""
    if not Path(path).is_file():
        return []
    records: dict[tuple, dict] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line: the rest of the file is intact
        if not isinstance(record, dict):
            continue
        key = (record.get("step"), tuple(sorted(k for k in record if k != "time")))  # step and kind of record
        records.pop(key, None)  # re-insert: the later record wins, in the order it was written
        records[key] = record
    return list(records.values())
