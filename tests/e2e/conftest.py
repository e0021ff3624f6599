"""Fixtures for the end-to-end tests: a sandboxed systemd, and caddy + the stand-in inside it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.e2e import booted_sandbox, new_workdir, phase_failed
from tests.support.sandbox import Sandbox, Stack, start_stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[phase_failed] = True
    return report


@pytest.fixture
def sandbox_workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh work directory under .sandbox/, removed after the test.

    With PROBER_KEEP_SANDBOX=1 the folder of a failed test stays, for its logs.
    """
    path = new_workdir(request.node.name)
    yield path
    if request.node.stash.get(phase_failed, False) and os.environ.get("PROBER_KEEP_SANDBOX"):
        sys.stdout.write(f"sandbox work directory kept: {path}\n")
        return
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sandbox(request: pytest.FixtureRequest, sandbox_workdir: Path) -> Iterator[Sandbox]:
    """A booted sandbox; stopped after the test (its console is shown if the test failed)."""
    with booted_sandbox(sandbox_workdir) as box:
        yield box
    if request.node.stash.get(phase_failed, False):
        sys.stdout.write(f"--- sandbox console ({box.console_log}) ---\n{box.console_tail(80)}\n")


@pytest.fixture
def stack(sandbox: Sandbox) -> Stack:
    """caddy + the stand-in, running inside the test's sandbox (stopped with it)."""
    return start_stack(sandbox)
