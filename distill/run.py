"""A run folder and its stages: runs/<experiment>/<run-id>/<stage>/.

A stage records the settings it was built from. Finished with the same settings: reused. Finished with
different settings: refused (a finished artifact is never overwritten). Unfinished: resumed, or
restarted when its settings changed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from distill.fingerprint import stage_value


class StageConflictError(RuntimeError):
    pass


_ANNOUNCED: set[str] = set()


def announce_once(key: str, message: str) -> None:
    """Print a reuse note once per process (several later stages ask for the same finished stage)."""
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(message)


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, name)
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


class StageRun:
    """One stage's folder: ``model/`` (the artifact), ``metrics.jsonl``, ``result.json``, ``stage.json``."""

    def __init__(self, run_dir: Path, name: str, settings: dict[str, Any]):
        self.name = name
        self.dir = Path(run_dir) / name
        self.settings = json.loads(json.dumps({k: stage_value(v) for k, v in settings.items()}, default=str))
        self.fingerprint = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def _stage_file(self) -> Path:
        return self.dir / "stage.json"

    @property
    def _done_file(self) -> Path:
        return self.dir / "DONE"

    def is_done(self) -> bool:
        """True when finished with these settings; raises when finished with other settings."""
        if not self._stage_file.is_file():
            return False
        recorded = json.loads(self._stage_file.read_text())
        same = recorded.get("fingerprint") == self.fingerprint
        if self._done_file.is_file():
            if same:
                return True
            changes = _diff(recorded.get("settings", {}), self.settings)
            raise StageConflictError(
                f"stage '{self.name}' in {self.dir} already finished with other settings ({'; '.join(changes[:4])}); "
                "pick a new run_id=... or delete that folder to rebuild it")
        if not same:
            print(f"[{self.name}] settings changed since the unfinished attempt; starting this stage again")
            shutil.rmtree(self.dir)
        return False

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stage_file.write_text(json.dumps({"fingerprint": self.fingerprint, "settings": self.settings}, indent=1))

    def finish(self, result: dict[str, Any]) -> None:
        (self.dir / "result.json").write_text(json.dumps(result, indent=1))
        self._done_file.write_text(self.fingerprint + "\n")

    def result(self) -> dict[str, Any]:
        path = self.dir / "result.json"
        return json.loads(path.read_text()) if path.is_file() else {}
