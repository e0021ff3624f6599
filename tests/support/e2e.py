"""Helpers shared by the end-to-end tests: booting a sandbox, traffic checks, unit freezing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.sandbox import REPO, Sandbox, missing_requirements

SANDBOX_ROOT = REPO / ".sandbox"
"""Work directories of the sandboxes (gitignored); each test gets a fresh one, removed after."""

phase_failed = pytest.StashKey[bool]()
"""Set on a test's item when one of its phases failed (conftest's report hook)."""


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


def answers(url: str, within: float = 10.0) -> bool:
    """Whether `url` answers 200 "OK" within `within` seconds (polling)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=1.0, trust_env=False)
            if response.status_code == 200 and response.text == "OK":
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def refuses(url: str) -> bool:
    """Whether connecting to `url` is refused (nothing listens)."""
    try:
        httpx.get(url, timeout=1.0, trust_env=False)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def freeze(sandbox: Sandbox, unit: str) -> None:
    """SIGSTOP the unit's processes: up, `active`, and silent (the outage's failure)."""
    sandbox.systemctl("kill", "--signal=SIGSTOP", unit)


def thaw(sandbox: Sandbox, unit: str) -> None:
    """SIGCONT the unit's processes."""
    sandbox.systemctl("kill", "--signal=SIGCONT", unit, check=False)


def wait_for(predicate: Callable[[], object], within: float, what: str) -> None:
    """Poll `predicate` until it is true; fail saying `what` did not happen in time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {within}s: {what}")


def saved_state(path: Path, until: Callable[[dict[str, Any]], object], within: float,
                what: str) -> dict[str, Any]:
    """The state file at `path` once `until` holds for what it says; fail saying `what` did not
    happen in time. Wait on this, what the run saved, never on a pid or a unit's state: those
    change before the run that caused them has written its result."""
    seen: list[dict[str, Any]] = []

    def holds() -> object:
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return False  # not written yet; the writer replaces it whole, never in part
        seen[:] = [state]
        return until(state)

    wait_for(holds, within, what)
    return seen[0]


def has_event(target: str, event: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a saved state has `event` ("restart", "down", ...) in `target`'s history."""
    def check(state: dict[str, Any]) -> bool:
        history = state.get("targets", {}).get(target, {}).get("history", [])
        return any(entry.get("event") == event for entry in history)
    return check
