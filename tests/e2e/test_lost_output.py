"""The journal stream goes away mid-run, as when journald crashed in 2018: the shipped
prober.service still restarts what is down, saves its state and exits with its own code."""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.deploy import install
from tests.support.e2e import answers, booted_sandbox, refuses, wait_for
from tests.support.sandbox import Sandbox, Stack, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def box(sandbox_workdir: Path) -> Iterator[Sandbox]:
    with booted_sandbox(sandbox_workdir, users=["prober"]) as sandbox:
        yield sandbox


@contextlib.contextmanager
def fifo_reader(path: Path) -> Iterator[int]:
    """A FIFO, opened for reading (so that a writer's open does not block); closed after."""
    os.mkfifo(path, 0o666)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def read_until(fd: int, marker: str, within: float) -> str:
    """What the FIFO carried up to and including the line with `marker`."""
    seen = b""
    deadline = time.monotonic() + within
    while marker.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {within}s; read:\n{seen.decode()}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 65536)
    return seen.decode()


def test_shipped_service_survives_its_output_going_away(box: Sandbox) -> None:
    """The shipped timer's prober.service writes to a pipe whose reader goes away after
    `restarting` (while caddy's restart job is still running): the restart completes, the state
    is saved, and the unit exits 2 (critical: a restart happened), as with its output intact."""
    stack: Stack = start_stack(box)
    config = (f'[defaults]\ntimeout = "1s"\nfailure_threshold = 1\nstartup_grace = "0s"\n'
              f'restart_timeout = "15s"\nverify_timeout = "10s"\n\n'
              f'[[target]]\nname = "caddy"\nurl = "{stack.caddy_url}/health"\n'
              f'expect_body = "OK"\nunit = "{stack.caddy_unit}"\n')
    installed = install(box, config, period="1h")  # the timer's first run comes at once
    # caddy takes a second to come back: the prober writes its next line after the pipe closed
    box.write_unit(f"{stack.caddy_unit}.d/slow-start.conf",
                   "[Service]\nExecStartPre=/bin/sleep 1\n")
    stream = box.workdir / "journal-stream"
    with fifo_reader(stream) as fd:
        box.write_unit("prober.service.d/zz-stream.conf",
                       f"[Service]\nStandardOutput=file:{stream}\nStandardError=inherit\n")
        caddy_before = box.main_pid(stack.caddy_unit)
        httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=10,
                   trust_env=False)
        assert refuses(f"{stack.caddy_url}/health")
        box.systemctl("start", "prober.timer")  # which also keeps the service's record
        seen = read_until(fd, "restarting", within=30)
        assert box.unit_property("prober.service", "ActiveState") == "activating", seen
        os.close(fd)  # the journal is gone
        wait_for(lambda: box.unit_property("prober.service", "ActiveState") != "activating",
                 60, "the run to finish")
    assert box.unit_property("prober.service", "ExecMainCode") == "1"  # exited, not killed
    assert box.unit_property("prober.service", "ExecMainStatus") == "2", seen
    assert box.unit_property("prober.service", "Result") == "success"
    assert box.main_pid(stack.caddy_unit) not in (0, caddy_before)
    assert answers(f"{stack.caddy_url}/health")
    state = json.loads(installed.state.read_text())
    events = [change["event"] for change in state["targets"]["caddy"]["history"]]
    assert events[:2] == ["down", "restart"], events
    assert "recovered after restart" not in seen  # written after the reader left: lost
