"""Every stage of the pipeline, declared once (see distill/stages/spec.py), and which stages each
command asks for. The runner resolves what they read; nothing else knows the order."""
from __future__ import annotations

from distill.stages import baseline, bench, export, general, inspect, prune, qat, task, teacher, vocab
from distill.stages.spec import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (
    teacher.STAGE, general.STAGE, task.INTERMEDIATE, task.PREDICTION, baseline.STAGE, prune.STAGE, export.STAGE,
    bench.STAGE, inspect.STAGE, qat.STAGE, vocab.STAGE)}

# command -> (the stages it asks for, whether it may train the stages they read)
COMMANDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "teacher": (("teacher",), True),
    "general": (("general",), True),
    "task": (("2b",), True),
    "baseline": (("baseline",), True),
    "prune": (("prune",), True),
    "qat": (("qat",), True),
    "vocab": (("vocab",), True),
    "distill": (("2b", "prune", "qat", "vocab", "export", "bench"), True),  # qat, vocab: when enabled
    "export": (("export",), False),
    "bench": (("bench",), False),
}
