"""Library output a user cannot act on (TorchScript tracer warnings, ONNX Runtime fusion messages, calibration
progress), held back during export steps and counted in one line; DISTILL_VERBOSE=1 lets it through."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator


VERBOSE_ENV = "DISTILL_VERBOSE"  # 1: let library warnings and messages through to the terminal
_LIBRARY_LOGGERS = ("", "onnxruntime", "onnx", "onnxscript", "torch", "transformers")  # "": the root logger
_open_blocks: list[list[str]] = []  # the messages of the outermost open quiet_library_output block


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name or 'root'}: {record.getMessage()}")


@contextlib.contextmanager
def quiet_library_output(log: Path | None = None, label: str = "export") -> Iterator[None]:
    """Hold back library noise during export steps: Python warnings and the records of the torch, transformers,
    onnx and onnxruntime loggers (and of the root logger, which ORT's quantizer writes to); the steps of this
    module also hold back what the libraries print to stdout (calibration progress). At the end one line counts
    them (``log``: the file they are appended to); when the block fails they go to stderr instead, as they may
    explain the failure. Blocks nest: only the outermost collects and reports, so a caller that wraps several
    steps gets one line, and its own prints pass. DISTILL_VERBOSE=1: nothing held back. C++-level ONNX Runtime
    messages are not Python's and pass through."""
    if os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0") or _open_blocks:
        yield
        return
    lines: list[str] = []
    _open_blocks.append(lines)
    handler = _Collect(lines)
    loggers = [logging.getLogger(name or None) for name in _LIBRARY_LOGGERS]
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    failed = False
    try:
        for logger in loggers:
            logger.handlers = [handler]  # the root logger keeps a handler: logging.warning() adds no basicConfig
            logger.propagate = False
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            except BaseException:
                failed = True
                raise
            finally:
                lines.extend(f"{w.category.__name__} {w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}"
                             for w in caught)
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        _open_blocks.pop()
        _report_held_back(lines, log, label, failed)


@contextlib.contextmanager
def _library_prints() -> Iterator[None]:
    """What a library prints to stdout here becomes a held-back message of the open block (if one is open)."""
    if not _open_blocks:  # DISTILL_VERBOSE=1
        yield
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        _open_blocks[-1].extend(line for line in printed.getvalue().splitlines() if line.strip())


def _report_held_back(lines: list[str], log: Path | None, label: str, failed: bool) -> None:
    if not lines:
        return
    distinct = len(dict.fromkeys(lines))
    where = ""
    if log is not None:
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
        where = f" (in {log})"
    if failed and log is None:
        print("\n".join(lines), file=sys.stderr)
        return
    what = "library warning or message" if distinct == 1 else "library warnings and messages"
    print(f"[{label}] {distinct} {what} hidden{where}; {VERBOSE_ENV}=1 shows them")


def quiet_step(fn):
    """Decorator: run the step ``fn`` inside quiet_library_output (an outer block's, if one is open), its prints held."""
    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with quiet_library_output(), _library_prints():
            return fn(*args, **kwargs)
    return quiet
