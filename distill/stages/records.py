"""A run folder and its stages: runs/<experiment>/<run-id>/<stage>/.

A stage records the settings it was built from. Finished with the same settings: reused. Finished with
different settings: refused (a finished artifact is never overwritten). Unfinished: resumed, or, when
its settings changed, the attempt is set aside (renamed, never deleted) and the stage starts again. A stage's training checkpoint lives until the stage is recorded
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
from distill.base.errors import UserError



class StageConflictError(UserError, RuntimeError):
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
        self._clock: tuple[float, float] | None = None
        self.started = False  # start() ran in this process (a stage may start itself after its own checks)  # (when its work began, seconds attributed by then)

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def _stage_file(self) -> Path:
        return self.dir / "stage.json"

    @property
    def _done_file(self) -> Path:
        return self.dir / "DONE"

    def status(self) -> tuple[str, str]:
        """(state, why) from the records alone, with no side effect: ``done`` (finished with these settings),
        ``new`` (never started), ``resume`` (unfinished, same settings), ``changed`` (unfinished, other
        settings: the attempt is set aside when the stage runs) or ``conflict`` (finished with other settings)."""
        recorded = json.loads(self._stage_file.read_text()) if self._stage_file.is_file() else None
        if recorded is None:
            return "new", "no earlier attempt"
        same = recorded.get("fingerprint") == self.fingerprint
        changes = "; ".join(_diff(recorded.get("settings", {}), self.settings)[:4])
        if self._done_file.is_file():
            return ("done", "finished with these settings") if same else ("conflict", changes)
        return ("resume", "unfinished attempt with these settings") if same else ("changed", changes)

    def is_done(self) -> bool:
        """True when finished with these settings; raises when finished with other settings. An unfinished
        attempt with other settings is set aside (renamed, never deleted) and the stage starts again."""
        if self._clock is None:  # the stage's wall time counts from its first look (its preparation included)
            self._clock = (time.perf_counter(), _attributed[0])
        state, why = self.status()
        wait_for_everyone()  # every rank has read the records before the main one changes them
        if state == "done":
            if is_main_process():  # a kill after DONE was written may have left these behind
                remove_folder(self.dir / CHECKPOINT)
                recover_folder(self.model_dir)
            wait_for_everyone()
            return True
        if state == "conflict":
            raise StageConflictError(
                f"stage '{self.name}' in {self.dir} already finished with other settings ({why}); "
                "pick a new run_id=... or delete that folder to rebuild it")
        if state == "changed":
            self.set_aside(why)
        return False

    def set_aside(self, why: str) -> Path:
        """Move an unfinished attempt made with other settings out of the way (``<stage>.aside-<n>``), so its
        checkpoint is kept for the user to resume or delete; returns where it went."""
        n = 1
        while (self.dir.parent / f"{self.dir.name}.aside-{n}").exists():
            n += 1
        target = self.dir.parent / f"{self.dir.name}.aside-{n}"
        if is_main_process():
            self.dir.rename(target)
            print(f"[{self.name}] settings changed since the unfinished attempt ({why}); that attempt and its "
                  f"checkpoint are kept in {target}; this stage starts again (to resume it instead, restore the "
                  "old settings and move the folder back)")
        wait_for_everyone()
        return target

    def begin_clock(self) -> None:
        """The stage's wall time counts from here (its preparation included)."""
        if self._clock is None:
            self._clock = (time.perf_counter(), _attributed[0])

    def start(self) -> None:
        """Record the settings; the stage's work begins (the first start also records the run's config)."""
        if self._clock is None:
            self._clock = (time.perf_counter(), _attributed[0])
        self.started = True
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
