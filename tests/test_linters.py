"""The linters run as tests: ruff and mypy --strict must be clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=300)


def test_ruff() -> None:
    """ruff finds nothing in prober/, tests/ and examples/sidekiq-alive."""
    done = _run(sys.executable, "-m", "ruff", "check", "prober", "tests", "examples/sidekiq-alive")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    """mypy --strict (configured in pyproject.toml) finds nothing."""
    done = _run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr
