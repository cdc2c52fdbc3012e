"""`make setup` re-installs when TORCH_SPEC / TORCH_PIP_ARGS change, and only then (run on a copy of the
Makefile whose venv holds a fake python that records its arguments)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


@pytest.fixture()
def project(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "constraints.txt").write_text("")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls.log"}\n')
    python.chmod(0o755)
    return tmp_path


def make(project: Path, *args: str) -> str:
    done = subprocess.run(["make", "--no-print-directory", *args], cwd=project, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def torch_installs(output: str) -> list[str]:
    return [line for line in output.splitlines() if "pip install" in line and "torch" in line
            and "-e " not in line and "--no-deps" not in line]


def test_setup_reinstalls_when_the_torch_spec_changes_and_only_then(project):
    make(project, "setup")  # the first setup: installs the default torch
    (first,) = [c for c in (project / "calls.log").read_text().splitlines() if "torch==" in c]
    assert first.endswith("torch==2.13.0")

    assert torch_installs(make(project, "-n", "setup")) == []  # same spec: nothing to do
    assert torch_installs(make(project, "-n", "setup", "TORCH_SPEC=torch==2.13.0")) == []
    (line,) = torch_installs(make(project, "-n", "setup", "TORCH_SPEC=torch==9.9"))
    assert "'torch==9.9'" in line
    (line,) = torch_installs(make(project, "-n", "setup", "TORCH_PIP_ARGS=--index-url http://example.invalid/cpu"))
    assert "--index-url http://example.invalid/cpu 'torch==2.13.0'" in line
    # other targets keep the torch setup installed: no reinstall behind `make test`'s back
    assert torch_installs(make(project, "-n", "test", "TORCH_SPEC=torch==9.9")) == []

    before = len((project / "calls.log").read_text().splitlines())
    make(project, "setup", "TORCH_SPEC=torch==9.9")  # really switch
    calls = (project / "calls.log").read_text().splitlines()[before:]
    assert [c for c in calls if "torch==" in c] == ["-m pip install -q torch==9.9"]
    assert torch_installs(make(project, "-n", "setup", "TORCH_SPEC=torch==9.9")) == []
    assert len(list((project / ".venv").glob(".torch-spec-*"))) == 1  # the old choice's file is gone
    (line,) = torch_installs(make(project, "-n", "setup"))  # back to the default: installs it again
    assert "'torch==2.13.0'" in line
