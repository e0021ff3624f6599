"""The state file: round trip, atomic writes, corrupt-file recovery, the run lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prober.errors import StateError
from prober.pressure import MemoryUser
from prober.state import LockBusy, StateStore, dumps, from_json, state_path, to_json
from prober.tracker import Event, Health, State, TargetState, Transition


def _sample() -> State:
    return State(
        targets={
            "caddy": TargetState(
                health=Health.DOWN, since=10.0, consecutive_failures=3,
                failure_times=(1.0, 2.0, 3.0), last_ok=False, last_reason="refused",
                last_failure="refused", restarts=(5.0,), restarts_total=4,
                unhelpful_restarts=1, last_restart_at=5.0, given_up=True,
                given_up_reason="given up", down_since=2.0, streak_starving=True,
                held_at=2.5, paused_until=99.0, paused_reason="upgrading",
                history=(Transition(1.0, Event.FAILING, "x"),
                         Transition(2.0, Event.DOWN, "y",
                                    (MemoryUser("convert (pid 7)", 1 << 30),))),
            ),
            "web": TargetState(health=Health.HEALTHY, last_ok=True, last_status_code=200,
                               last_latency_ms=1.5),
        },
        updated_at=42.0,
    )


def test_round_trip() -> None:
    """State -> JSON -> State gives back the same state, and the JSON is deterministic."""
    state = _sample()
    assert from_json(json.loads(dumps(state))) == state
    assert dumps(state) == dumps(from_json(to_json(state)))


@pytest.mark.parametrize(
    ("cli", "env", "expected"),
    [
        ("/x/s.json", {"PROBER_STATE": "/y.json"}, "/x/s.json"),
        (None, {"PROBER_STATE": "/y.json", "STATE_DIRECTORY": "/z"}, "/y.json"),
        (None, {"STATE_DIRECTORY": "/var/lib/prober:/other"}, "/var/lib/prober/state.json"),
        (None, {}, "/var/lib/prober/state.json"),
    ],
)
def test_state_path(cli: str | None, env: dict[str, str], expected: str) -> None:
    """--state beats PROBER_STATE beats $STATE_DIRECTORY beats the default."""
    assert state_path(cli, env) == expected


def test_save_and_load(tmp_path: Path) -> None:
    """A saved state loads back; no temp files are left behind."""
    store = StateStore(str(tmp_path / "sub" / "state.json"))
    store.save(_sample())
    assert store.load() == _sample()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["state.json"]


def test_missing_file_is_fresh_state(tmp_path: Path) -> None:
    """No state file yet means fresh state, silently."""
    assert StateStore(str(tmp_path / "state.json")).load() == State()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[]", b'{"version": 99, "targets": {}}',
     b'{"version": 1, "targets": {"a": {"consecutive_failures": -1}}}',
     b'{"version": 1, "targets": {"a": {"health": "sideways"}}}', b"\xff\xfe"],
    ids=["garbage", "empty", "list", "future-version", "negative", "bad-enum", "not-utf8"],
)
def test_corrupt_state_is_moved_aside(tmp_path: Path, content: bytes,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt state file is moved aside with a warning; the run starts fresh."""
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert StateStore(str(path)).load() == State()
    assert (tmp_path / "state.json.corrupt").read_bytes() == content
    assert not path.exists()
    assert "starting from fresh state" in caplog.text


def test_unwritable_directory_is_a_state_error(tmp_path: Path) -> None:
    """A state path whose directory cannot be created gives a StateError with a hint."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = StateStore(str(blocker / "state.json"))
    with pytest.raises(StateError, match="cannot create the state directory") as caught:
        store.save(State())
    assert caught.value.hint and "--state" in caught.value.hint


def test_lock_is_exclusive_within_a_process(tmp_path: Path) -> None:
    """A second holder of the lock is turned away at once."""
    store = StateStore(str(tmp_path / "state.json"))
    with store.locked(), pytest.raises(LockBusy), StateStore(store.path.as_posix()).locked():
        pass
    with store.locked():  # released after the first holder left
        pass


def test_a_lock_file_kept_open_still_locks_and_unlocks(tmp_path: Path) -> None:
    """A store that keeps its lock file open (the watcher's) excludes others while it holds
    the lock, lets them in between, and opens the file anew when it was removed meanwhile."""
    kept = StateStore(str(tmp_path / "state.json"), keep_lock_file_open=True)
    other = StateStore(str(tmp_path / "state.json"))
    try:
        for _ in range(2):
            with kept.locked(), pytest.raises(LockBusy), other.locked():
                pass
            with other.locked(), pytest.raises(LockBusy), kept.locked():
                pass
        kept.lock_path.unlink()  # an admin cleaning up; the next lock must use the new file
        with kept.locked(), pytest.raises(LockBusy), other.locked():
            pass
        with other.locked():
            pass
    finally:
        kept.close()
    with other.locked():
        pass


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    """While another process holds the lock, this one is turned away; after, it gets it."""
    store = StateStore(str(tmp_path / "state.json"))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from prober.state import StateStore\n"
         "with StateStore(sys.argv[1]).locked():\n"
         "    print('held', flush=True); sys.stdin.readline()",
         str(store.path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy), store.locked():
            pass
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    with store.locked():
        pass


def test_write_is_atomic_under_sigkill(tmp_path: Path) -> None:
    """Killing a writer mid-save leaves the old or the new state, never a torn file."""
    path = tmp_path / "state.json"
    StateStore(str(path)).save(State(updated_at=0.0))
    big = {f"t{i}": TargetState(last_reason="x" * 200) for i in range(300)}
    script = (
        "import sys; from prober.state import StateStore; from prober.tracker import *\n"
        "store = StateStore(sys.argv[1])\n"
        f"targets = {{f't{{i}}': TargetState(last_reason='x' * 200) for i in range({len(big)})}}\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1; store.save(State(targets=targets, updated_at=float(n)))\n"
        "    if n == 1: print('go', flush=True)\n"
    )
    for _ in range(15):
        writer = subprocess.Popen([sys.executable, "-c", script, str(path)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "go"
        writer.kill()
        writer.wait()
        writer.stdout.close()
        state = from_json(json.loads(path.read_text()))  # never torn
        assert state.targets in ({}, big)
    StateStore(str(path)).save(State())
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # stale temp files cleaned


def test_root_run_leaves_files_the_directory_owner_can_use(tmp_path: Path) -> None:
    """A run as root in a directory owned by another user hands the files to that user."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    directory = tmp_path / "prober"
    directory.mkdir()
    os.chown(directory, 4242, 4243)
    store = StateStore(str(directory / "state.json"))
    with store.locked():
        store.save(State(updated_at=1.0))
    for name in ("state.json", "state.json.lock"):
        st = (directory / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4243, 0o644), name
