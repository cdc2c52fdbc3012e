"""A run folder and its stages: runs/<experiment>/<run-id>/<stage>/.

A stage records the settings it was built from. Finished with the same settings: reused. Finished with
different settings: refused (a finished artifact is never overwritten). Unfinished: resumed, or
restarted when its settings changed. A stage's training checkpoint lives until the stage is recorded
done, so a kill at any point never trains a stage twice. Under several processes every rank reads the
records and only the main one writes them.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from distill.fingerprint import stage_value
from distill.base.fsutil import recover_folder, remove_folder, write_text_atomic
from distill.base.ranks import is_main_process, wait_for_everyone
from distill.engine.trainer import CHECKPOINT



class StageConflictError(RuntimeError):
    pass


_ANNOUNCED: set[str] = set()
# wall seconds of the stages this process ran, each without the stages it pulled in (e.g. 2a runs the
# general stage first); the sum of those already attributed lets a stage subtract what ran inside it
STAGE_SECONDS: dict[str, float] = {}
_attributed = [0.0]
_ON_FIRST_START: dict[Path, Callable[[], None]] = {}


def attributed_seconds() -> float:
    """Wall seconds of every stage this process has finished so far (each counted once)."""
    return _attributed[0]


def on_first_stage_start(run_dir: Path, callback: Callable[[], None]) -> None:
    """Call ``callback`` once, when the first stage of ``run_dir`` starts work in this process (e.g. to
    record the run's config only once the stage checks have passed)."""
    _ON_FIRST_START[Path(run_dir).resolve()] = callback


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
        self._clock: tuple[float, float] | None = None  # (when its work began, seconds attributed by then)

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
        if self._clock is None:  # the stage's wall time counts from its first look (its preparation included)
            self._clock = (time.perf_counter(), _attributed[0])
        recorded = json.loads(self._stage_file.read_text()) if self._stage_file.is_file() else None
        done = self._done_file.is_file()
        wait_for_everyone()  # every rank has read the records before the main one changes them
        if recorded is None:
            return False
        same = recorded.get("fingerprint") == self.fingerprint
        if done:
            if same:
                if is_main_process():  # a kill after DONE was written may have left these behind
                    remove_folder(self.dir / CHECKPOINT)
                    recover_folder(self.model_dir)
                wait_for_everyone()
                return True
            changes = _diff(recorded.get("settings", {}), self.settings)
            raise StageConflictError(
                f"stage '{self.name}' in {self.dir} already finished with other settings ({'; '.join(changes[:4])}); "
                "pick a new run_id=... or delete that folder to rebuild it")
        if not same:
            if is_main_process():
                print(f"[{self.name}] settings changed since the unfinished attempt; starting this stage again")
                remove_folder(self.dir)
            wait_for_everyone()
        return False

    def start(self) -> None:
        """Record the settings; the stage's work begins (the first start also records the run's config)."""
        callback = _ON_FIRST_START.pop(self.dir.parent.resolve(), None)
        if callback is not None:
            callback()
        if is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self._stage_file,
                              json.dumps({"fingerprint": self.fingerprint, "settings": self.settings}, indent=1))
        wait_for_everyone()

    def finish(self, result: dict[str, Any]) -> None:
        """Record the result, mark the stage done, then drop the training checkpoint (in that order). The
        result gains ``seconds``: this attempt's wall time, without the stages that ran inside it."""
        began, attributed = self._clock or (time.perf_counter(), _attributed[0])
        seconds = time.perf_counter() - began - (_attributed[0] - attributed)
        _attributed[0] += seconds
        STAGE_SECONDS[self.name] = seconds
        result = {**result, "seconds": round(seconds, 1)}
        if is_main_process():
            write_text_atomic(self.dir / "result.json", json.dumps(result, indent=1))
            write_text_atomic(self._done_file, self.fingerprint + "\n")
            remove_folder(self.dir / CHECKPOINT)
        wait_for_everyone()

    def result(self) -> dict[str, Any]:
        path = self.dir / "result.json"
        return json.loads(path.read_text()) if path.is_file() else {}
