"""prober's own state file, damaged or not its own, met where a user meets it: the real
`prober check`, `status` and `watch` (and its page), against loopback servers.

A FIFO or a device is never read, a wrong-typed field costs only its own target's entry, a dry
run leaves the real state and the webhook alone, a trial keeps its own file, and a version 1
file of the last release is carried to version 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prober.shell.state import STATE_VERSION
from tests.support.processes import stop_process
from tests.support.servers import Server, answer, health, serve
from tests.test_notify import receiving

pytestmark = pytest.mark.timeout(120)

V1_FILE = Path(__file__).parent / "testdata" / "state-v1.json"
HOUR = 3600.0


def _environ(tmp: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROBER_", "NOTIFY_", "WATCHDOG_"))}
    # no system bus here: unit lookups fail fast instead of hanging
    environ["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={tmp}/no-bus"
    return environ


def _limit_memory() -> None:
    limit = 2 << 30  # room for the threads' malloc arenas, not for a read of /dev/zero
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def prober(tmp: Path, *args: str, state: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    """`prober ARGS --config tmp/prober.toml --state STATE`, in at most 2 GiB, given 60 s."""
    command = [sys.executable, "-m", "prober", *args, "--config", str(tmp / "prober.toml"),
               "--state", str(state or tmp / "state.json")]
    return subprocess.run(command, capture_output=True, text=True, env=_environ(tmp),
                          timeout=60, check=False, preexec_fn=_limit_memory)


def _config(tmp: Path, server: Server, *names: str, extra: str = "") -> None:
    targets = "".join(f'[[target]]\nname = "{name}"\nurl = "{server.url("/health")}"\n'
                      f'unit = "{name}.service"\n' for name in names)
    (tmp / "prober.toml").write_text(f'[defaults]\ntimeout = "1s"\n{extra}\n{targets}')


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(health()) as server:
        yield server


def _assert_one_line_error(run: subprocess.CompletedProcess[str], words: str) -> None:
    assert run.returncode == 3, run.stderr
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    last = run.stderr.rstrip("\n").split("\n")[-1]
    assert last.startswith("prober: error: ") and words in last, run.stderr


# --- only a regular file is read --------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_fifo_state_file_is_refused_without_blocking(tmp_path: Path, web: Server) -> None:
    """A FIFO at the state path is not opened for reading: `check` probes, restarts nothing,
    says why in one line (exit 3) and does not hold the lock, so the next run is not skipped;
    `status` says the same. Before, the run hung for good, holding the lock."""
    _config(tmp_path, web, "web")
    os.mkfifo(tmp_path / "state.json")
    first, second = prober(tmp_path, "check"), prober(tmp_path, "check")
    for run in (first, second):
        _assert_one_line_error(run, "a FIFO, not a regular file")
        assert "another prober run holds" not in run.stdout
    _assert_one_line_error(prober(tmp_path, "status"), "a FIFO, not a regular file")
    assert (tmp_path / "state.json").is_fifo()


@pytest.mark.timeout(90)
def test_a_fifo_lock_file_does_not_block_the_run(tmp_path: Path, web: Server) -> None:
    """A FIFO where the lock file goes is opened without waiting for a writer: the run
    goes on as usual. Before, it waited for good."""
    _config(tmp_path, web, "web")
    os.mkfifo(tmp_path / "state.json.lock")
    run = prober(tmp_path, "check")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "state.json").read_text())["targets"]["web"]["last_ok"]


@pytest.mark.timeout(90)
def test_a_symlink_to_dev_zero_is_never_read(tmp_path: Path, web: Server) -> None:
    """A symlink to /dev/zero is followed to a device, which is not read: one line, exit 3,
    within the 2 GiB the run is given. Before, the run read /dev/zero until memory ran out."""
    _config(tmp_path, web, "web")
    (tmp_path / "state.json").symlink_to("/dev/zero")
    run = prober(tmp_path, "check")
    _assert_one_line_error(run, "a character device, not a regular file")
    assert (tmp_path / "state.json").is_symlink()


def test_a_symlink_to_a_regular_state_file_is_followed(tmp_path: Path, web: Server) -> None:
    """A symlink to a regular file is a state file like any other."""
    _config(tmp_path, web, "web")
    real = tmp_path / "real.json"
    shutil.copy(V1_FILE, real)
    (tmp_path / "state.json").symlink_to(real)
    run = prober(tmp_path, "status", "--json")
    assert run.returncode == 3 and "too old to trust" in run.stderr, run.stderr  # hours ago


# --- every field checked ------------------------------------------------------------------


def _damaged_state(tmp: Path) -> float:
    """The v1 file of the last release, "mastodon-web" paused for an hour from now, and three
    targets' entries damaged: "caddy" has paused_until "tomorrow", "sidekiq" a since of 1e308,
    "streaming" a last_failure of no known class. The pause, to look for."""
    data = json.loads(V1_FILE.read_text())
    pause = round(time.time() + HOUR)
    data["targets"]["mastodon-web"]["paused_until"] = pause
    data["targets"]["caddy"]["paused_until"] = "tomorrow"
    data["targets"]["sidekiq"]["since"] = 1e308
    data["targets"]["streaming"]["last_failure"] = "melted"
    (tmp / "state.json").write_text(json.dumps(data))
    return pause


NAMES = ("caddy", "mastodon-web", "sidekiq", "streaming")


def test_wrong_typed_fields_cost_only_their_own_targets(tmp_path: Path, web: Server) -> None:
    """`status` and `check` go on: each damaged entry gets one warning naming the target and
    the field; the good target's pause stays. Before, every run was an internal error, exit 3."""
    _config(tmp_path, web, *NAMES)
    pause = _damaged_state(tmp_path)
    status = prober(tmp_path, "status", "--json")
    assert status.returncode == 3, status.stderr  # the last release's run, hours ago
    paused = {t["name"]: t["paused_until"] for t in status_targets(status)}
    assert paused["mastodon-web"] == pause
    for words in ('target "caddy": paused_until: not a time', 'target "sidekiq": since: ',
                  'target "streaming": last_failure: not a failure class'):
        assert status.stderr.count(words) == 1, status.stderr
    check = prober(tmp_path, "check", "--json")
    assert check.returncode == 0, check.stderr
    assert "internal error" not in check.stderr
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["version"] == STATE_VERSION
    assert saved["targets"]["mastodon-web"]["paused_until"] == pause
    assert saved["targets"]["caddy"]["paused_until"] is None  # its entry began afresh


def status_targets(run: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = json.loads(run.stdout)["targets"]
    return targets


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _after_a_run(status: dict[str, Any]) -> bool:
    """Whether /status.json shows a run of the watcher (before it, the state is not read)."""
    return any(t["last_checked_at"] is not None for t in status.get("targets", ()))


def test_watch_and_its_page_go_on_over_wrong_typed_fields(tmp_path: Path, web: Server) -> None:
    """`watch` keeps running (no exit 3 for systemd to restart in a loop); /status.json and the
    page answer 200, the good target's pause in them."""
    _config(tmp_path, web, *NAMES)
    pause = _damaged_state(tmp_path)
    port = _free_port()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "prober", "watch", "--config", str(tmp_path / "prober.toml"),
         "--state", str(tmp_path / "state.json"), "--listen", f"127.0.0.1:{port}",
         "--interval", "1s"],
        stderr=subprocess.PIPE, text=True, env=_environ(tmp_path))
    status: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        while not _after_a_run(status) and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/status.json", timeout=5,
                                   trust_env=False).json()
            except httpx.HTTPError:
                continue
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5, trust_env=False)
        still_running = watcher.poll() is None
    finally:
        stop_process(watcher)
        assert watcher.stderr is not None
        with watcher.stderr:
            err = watcher.stderr.read()
    assert still_running, err
    assert page.status_code == 200 and "mastodon-web" in page.text
    paused = {t["name"]: t["paused_until"] for t in status["targets"]}
    assert paused["mastodon-web"] == pause, err


# --- a dry run changes nothing a real run reads ------------------------------------------------


def test_three_dry_runs_leave_the_real_count_and_notify_no_one(tmp_path: Path) -> None:
    """After a real run (1 failure of 3), three `check --dry-run` each say what the next run
    would see (2/3), leave the state file and its heartbeat as they were and send no webhook;
    the next real run counts 2. Before, the dry runs walked the count to down and notified."""
    with receiving() as receiver, serve(answer(500, b"broken")) as server:
        _config(tmp_path, server, "web",
                extra=f'failure_threshold = 3\n[notify]\nwebhook = "{receiver.url}"\n')
        assert prober(tmp_path, "check").returncode == 1
        state, beat = tmp_path / "state.json", tmp_path / "state.json.last-run"
        before = (state.read_bytes(), state.stat().st_mtime_ns, beat.stat().st_mtime_ns)
        dry = [prober(tmp_path, "check", "--dry-run", "--json") for _ in range(3)]
        after = (state.read_bytes(), state.stat().st_mtime_ns, beat.stat().st_mtime_ns)
        sent_by_dry_runs = list(receiver.received)
        real = prober(tmp_path, "check", "--json")
    assert [json.loads(r.stdout)["targets"][0]["consecutive_failures"] for r in dry] == \
        [2, 2, 2], [r.stderr for r in dry]
    assert after == before
    assert sent_by_dry_runs == []
    assert json.loads(real.stdout)["targets"][0]["consecutive_failures"] == 2


def test_watch_dry_run_counts_in_memory_only_and_notifies_no_one(tmp_path: Path) -> None:
    """`watch --dry-run` over a real run's state: its count goes on in memory (and on its
    page) past the threshold, while the state file and its heartbeat stay as they were and no
    webhook is sent. Before, it wrote its counts to the real state."""
    port = _free_port()
    with receiving() as receiver, serve(answer(500, b"broken")) as server:
        _config(tmp_path, server, "web",
                extra=f'failure_threshold = 3\n[notify]\nwebhook = "{receiver.url}"\n')
        assert prober(tmp_path, "check").returncode == 1
        state, beat = tmp_path / "state.json", tmp_path / "state.json.last-run"
        before = (state.read_bytes(), state.stat().st_mtime_ns, beat.stat().st_mtime_ns)
        watcher = subprocess.Popen(
            [sys.executable, "-m", "prober", "watch", "--dry-run", "--config",
             str(tmp_path / "prober.toml"), "--state", str(state), "--listen",
             f"127.0.0.1:{port}", "--interval", "1s"],
            stderr=subprocess.PIPE, text=True, env=_environ(tmp_path))
        failures = 0
        try:
            deadline = time.monotonic() + 40
            while failures < 4 and time.monotonic() < deadline:
                time.sleep(0.2)
                with contextlib.suppress(httpx.HTTPError):
                    status = httpx.get(f"http://127.0.0.1:{port}/status.json", timeout=5,
                                       trust_env=False).json()
                    failures = status["targets"][0]["consecutive_failures"]
        finally:
            stop_process(watcher)
            assert watcher.stderr is not None
            with watcher.stderr:
                err = watcher.stderr.read()
        after = (state.read_bytes(), state.stat().st_mtime_ns, beat.stat().st_mtime_ns)
    assert failures >= 4, err
    assert after == before, err
    assert receiver.received == []


def test_a_trial_keeps_its_own_counts_and_a_real_run_refuses_them(tmp_path: Path) -> None:
    """`check --dry-run --state trial.json` keeps a trial's counts there (trial: true), apart
    from the real state; a real run given trial.json refuses it in one line, leaving it."""
    trial = tmp_path / "trial.json"
    with serve(answer(500, b"broken")) as server:
        _config(tmp_path, server, "web", extra="failure_threshold = 3")
        runs = [prober(tmp_path, "check", "--dry-run", "--json", state=trial) for _ in range(2)]
        kept = trial.read_bytes()
        real = prober(tmp_path, "check", state=trial)
    assert [json.loads(r.stdout)["targets"][0]["consecutive_failures"] for r in runs] == [1, 2]
    assert json.loads(kept)["trial"] is True
    assert not (tmp_path / "state.json").exists()
    _assert_one_line_error(real, "a trial state file, written by a --dry-run")
    assert trial.read_bytes() == kept


# --- version 1 to the current version ------------------------------------------------------


def test_check_carries_a_v1_file_to_current_with_nothing_lost(tmp_path: Path,
                                                             web: Server) -> None:
    """The last release's file: `status` reads it (its run too old to vouch for), the first
    `check` writes it as the current version, each target's restart count and history
    (top_memory in it) kept."""
    _config(tmp_path, web, *NAMES, extra="max_restarts = 9")
    shutil.copy(V1_FILE, tmp_path / "state.json")
    v1 = json.loads(V1_FILE.read_text())
    assert prober(tmp_path, "status").returncode == 3
    assert prober(tmp_path, "check").returncode == 0
    v2 = json.loads((tmp_path / "state.json").read_text())
    assert (v2["version"], v2["trial"]) == (STATE_VERSION, False)
    for name, old in v1["targets"].items():
        new = v2["targets"][name]
        assert new["restarts_total"] == old["restarts_total"]
        assert new["history"][:len(old["history"])] == old["history"]
