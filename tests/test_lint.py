"""The linters are part of the suite, so CI (which runs the suite) enforces them as `nox -s lint` does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "finetune", "noxfile.py"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "argv",
    [["ruff", "check", *PATHS], ["ruff", "format", "--check", *PATHS]],
    ids=["ruff check", "ruff format"],
)
def test_ruff(argv: list[str]) -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    done = run(*argv)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    done = run(sys.executable, "-m", "mypy")  # files and options come from pyproject.toml
    assert done.returncode == 0, done.stdout + done.stderr
