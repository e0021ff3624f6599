"""What a test needs from the machine: skip without it, or, with $CI set, fail loudly."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """Whether $CI says this is a CI run (where a missing requirement is a failure)."""
    return os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}


def need(ok: bool, what: str) -> None:
    """Skip the test (fail it in CI) unless `ok`; `what` names the requirement and its package."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"missing: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


def need_program(path: str, package: str) -> str:
    """`path` (or the program of that name on PATH) if it is executable; see need()."""
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    need(found is not None, f"{path} (Debian package {package})")
    assert found is not None
    return found
