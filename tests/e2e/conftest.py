"""Fixtures for the end-to-end tests: a sandboxed systemd, and caddy + the stand-in inside it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sandbox import REPO, Sandbox, Stack, missing_requirements, start_stack

SANDBOX_ROOT = REPO / ".sandbox"
"""Work directories of the sandboxes (gitignored); each test gets a fresh one, removed after."""

_phase_failed = pytest.StashKey[bool]()


@dataclass(frozen=True)
class SandboxRecord:
    """What a sandbox looked like from the host, kept to check that nothing of it outlives it."""

    pid: int
    start_time: int
    pid_ns: str


_history: list[SandboxRecord] = []


def sandbox_history() -> list[SandboxRecord]:
    """Every sandbox booted through booted_sandbox() in this session, oldest first."""
    return list(_history)


def require_sandbox(*, memory: bool = False) -> None:
    """Skip (or, with $CI set, fail) when this machine cannot boot a sandbox (with a memory
    controller, for `memory`)."""
    missing = missing_requirements(memory=memory)
    if not missing:
        return
    message = "the systemd sandbox needs: " + "; ".join(missing)
    if os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def new_workdir(name: str) -> Path:
    """A fresh, empty folder under the repository's .sandbox/ (visible inside and outside)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:60]
    path = SANDBOX_ROOT / f"{slug}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def booted_sandbox(
    workdir: Path, *, share: Sequence[Path] = (), users: Sequence[str] = (),
    memory: bool = False,
    overlay: bool = False,
) -> Iterator[Sandbox]:
    """Boot a Sandbox in `workdir`, yield it, and stop it (whatever happens in between)."""
    require_sandbox(memory=memory)
    box = Sandbox(workdir, share=share, users=users, memory=memory, overlay=overlay)
    box.start()
    _history.append(
        SandboxRecord(box.pid, box.pid_start_time, os.readlink(f"/proc/{box.pid}/ns/pid")))
    try:
        yield box
    finally:
        box.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_phase_failed] = True
    return report


@pytest.fixture
def sandbox_workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh work directory under .sandbox/, removed after the test.

    With PROBER_KEEP_SANDBOX=1 the folder of a failed test stays, for its logs.
    """
    path = new_workdir(request.node.name)
    yield path
    if request.node.stash.get(_phase_failed, False) and os.environ.get("PROBER_KEEP_SANDBOX"):
        sys.stdout.write(f"sandbox work directory kept: {path}\n")
        return
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sandbox(request: pytest.FixtureRequest, sandbox_workdir: Path) -> Iterator[Sandbox]:
    """A booted sandbox; stopped after the test (its console is shown if the test failed)."""
    with booted_sandbox(sandbox_workdir) as box:
        yield box
    if request.node.stash.get(_phase_failed, False):
        sys.stdout.write(f"--- sandbox console ({box.console_log}) ---\n{box.console_tail(80)}\n")


@pytest.fixture
def stack(sandbox: Sandbox) -> Stack:
    """caddy + the stand-in, running inside the test's sandbox (stopped with it)."""
    return start_stack(sandbox)
