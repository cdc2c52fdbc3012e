"""The layer contracts (.importlinter) hold, and break when a stage imports another stage."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="needs import-linter (lint-imports) beside this Python")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports over the packages in ``tree``: ``tree`` first on PYTHONPATH (it is what is linted), what
    was on PYTHONPATH kept after it (a host whose packages sit there), and this environment otherwise."""
    path = os.pathsep.join([str(tree), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    return subprocess.run([str(LINT), "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=tree,
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)


def test_the_code_keeps_every_contract():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_a_stage_importing_another_stage_breaks_the_build(tmp_path):
    for package in ("distill", "teachers", "students"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    bench = tmp_path / "distill" / "stages" / "bench.py"
    bench.write_text(bench.read_text() + "\nfrom distill.stages import teacher  # noqa: E402\n")
    engine = tmp_path / "distill" / "engine" / "losses.py"
    engine.write_text(engine.read_text() + "\nimport distill.stages.context  # noqa: E402\n")
    done = _lint(tmp_path)
    assert done.returncode == 1
    assert "distill.stages.bench is not allowed to import distill.stages.teacher" in done.stdout
    assert "distill.engine is not allowed to import distill.stages" in done.stdout
