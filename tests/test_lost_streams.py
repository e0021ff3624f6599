"""stdout and stderr going away mid-run (journald died, a reader closed the pipe) change nothing:
the run completes, saves its state and exits with its own code; logging never raises."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from prober.shell.logs import SafeStream, safe, setup_logging
from tests.support.servers import refused_port


@contextlib.contextmanager
def broken_pipe() -> Iterator[io.TextIOWrapper]:
    """A text stream on a pipe whose reader is already gone: every flush fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = open(write_end, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        yield stream
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def test_safe_stream_swallows_epipe_and_points_the_fd_at_dev_null() -> None:
    """A write and flush on a dead pipe return normally; the descriptor then leads to /dev/null,
    so that what was buffered, and what children inheriting it write, goes nowhere quietly."""
    with broken_pipe() as raw:
        stream = SafeStream(raw)
        assert stream.write("first line\n") == len("first line\n")
        stream.flush()
        assert stream.lost
        assert os.readlink(f"/proc/self/fd/{raw.fileno()}") == os.devnull
        stream.write("later line\n")
        stream.flush()


def test_safe_stream_survives_a_closed_stream() -> None:
    """Writing to a closed stream (ValueError) does not raise either."""
    raw = io.StringIO()
    raw.close()
    stream = SafeStream(raw)
    stream.write("x")
    stream.flush()
    assert stream.lost


def test_safe_stream_hides_its_buffer() -> None:
    """No `buffer` attribute: click.echo writes through the wrapper, not around it."""
    wrapped = safe(io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert not hasattr(wrapped, "buffer")
    assert wrapped.encoding == "utf-8"
    assert safe(wrapped) is wrapped


def test_click_echo_of_bytes_goes_through_the_wrapper() -> None:
    """click.echo(bytes), as shell completion writes its script, finds no buffer and writes
    the text through the wrapper, decoded."""
    raw = io.BytesIO()
    wrapped = safe(io.TextIOWrapper(raw, encoding="utf-8"))
    click.echo("caf\u00e9 script".encode(), file=wrapped, nl=False)
    wrapped.flush()
    assert raw.getvalue() == "caf\u00e9 script".encode()


def test_logging_to_a_dead_stderr_neither_raises_nor_reports(
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Log lines to a stderr whose reader is gone: no exception, no "--- Logging error ---"."""
    with broken_pipe() as raw:
        monkeypatch.setattr(sys, "stderr", raw)
        setup_logging(0, environ={})
        log = logging.getLogger("prober")
        for number in range(100):
            log.warning("target=web: probe failed (refused) [%d in a row]", number)
        monkeypatch.undo()
    out, err = capfd.readouterr()
    assert "Logging error" not in out + err
    setup_logging(0, environ={})  # leave the logger on the real stderr


def test_a_broken_log_call_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A log call with bad arguments (a bug) is reported in one line, not a traceback."""
    setup_logging(0, environ={})
    logging.getLogger("prober").warning("%d targets", "not a number")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prober: logging error: TypeError"), err
    assert "Traceback" not in err


@contextlib.contextmanager
def silent_bus(path: Path) -> Iterator[str]:
    """A bus socket that accepts connections and never answers: D-Bus waits for its timeout."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(16)
        yield f"unix:path={path}"


def _check(tmp_path: Path, name: str, bus: str) -> tuple[list[str], subprocess.Popen[str]]:
    config = tmp_path / "prober.toml"
    config.write_text(f'[[target]]\nname = "web"\nurl = "http://127.0.0.1:{refused_port()}/"\n'
                      'unit = "web"\nfailure_threshold = 1\n')
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    env["DBUS_SYSTEM_BUS_ADDRESS"] = bus
    argv = [sys.executable, "-m", "prober", "check", "--config", str(config),
            "--state", str(tmp_path / f"{name}.json")]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    return [proc.stderr.readline()], proc


def test_check_whose_pipes_close_mid_run_finishes_normally(tmp_path: Path) -> None:
    """`prober check` whose stdout and stderr readers go away after its first log line still
    runs to the end (the bus times out, the systemctl fallback answers), saves its state and
    exits 2, as the same run with its pipes open does."""
    with silent_bus(tmp_path / "bus") as bus:
        first, control = _check(tmp_path, "control", bus)
        started = time.monotonic()
        out, err = control.communicate(timeout=60)
        lines = first + err.splitlines(keepends=True)
        assert control.returncode == 2, lines
        assert "probe failed (refused)" in lines[0]
        later = [line for line in lines[1:] if "falling back to systemctl" in line]
        assert later, lines  # written after the bus timed out: seconds after the first line
        assert time.monotonic() - started >= 1.0
        assert "CRITICAL: 1 critical" in out

        first, proc = _check(tmp_path, "closed", bus)
        assert "probe failed (refused)" in first[0]
        assert proc.poll() is None, "the run ended before its pipes closed: nothing was proved"
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        assert proc.wait(timeout=60) == 2
    state = json.loads((tmp_path / "closed.json").read_text())
    events = [t["event"] for t in state["targets"]["web"]["history"]]
    assert "down" in events, state
