"""The state file: round trip, atomic writes, corrupt-file recovery, the run lock."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prober
from prober.core.config import parse_config, parse_toml
from prober.core.errors import StateError
from prober.core.psi import MemoryUser
from prober.core.tracker import Event, Health, PressureEpisode, State, TargetState, Transition
from prober.core.unit_seen import Happened, Incident, UnitSeen
from prober.core.units import UnitReading, observe
from prober.io.systemd import facts_from_properties
from prober.shell.state import (
    _READERS,
    MIGRATIONS,
    STATE_VERSION,
    LockBusy,
    StateStore,
    dumps,
    from_json,
    may_write,
    migrate,
    named_apart,
    size_limit,
    state_path,
    to_json,
)


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
            "netdata": TargetState(health=Health.DOWN, unit_seen=UnitSeen(
                restarts=4, oom_kills=4, exited_at=30.0,
                incidents=(Incident(10.0, Happened.OOM_KILL), Incident(10.0, Happened.RESTART),
                           Incident(20.0, Happened.CRASH, "crashed (SIGABRT, core dumped)")),
                host_oom_kills=98, unit="netdata.service")),
        },
        updated_at=42.0,
    )


def test_round_trip() -> None:
    """State -> JSON -> State gives back the same state, and the JSON is deterministic."""
    state = _sample()
    assert from_json(json.loads(dumps(state))).state == state
    assert dumps(state) == dumps(from_json(to_json(state)).state)


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
     b'{"version": 2, "trial": false, "targets": []}',
     b'{"version": 2, "trial": "yes", "targets": {}}', b'{"version": true, "targets": {}}',
     b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"],
    ids=["garbage", "empty", "list", "future-version", "targets-a-list", "trial-not-a-flag",
         "version-a-flag", "nested-deep", "not-utf8"],
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
         "import sys, time; from prober.shell.state import StateStore\n"
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
        "import sys; from prober.shell.state import StateStore; from prober.core.tracker import *\n"
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
        state = from_json(json.loads(path.read_text())).state  # never torn
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


V1_FILE = Path(__file__).parent / "testdata" / "state-v1.json"
V2_FILE = Path(__file__).parent / "testdata" / "state-v2.json"
V3_FILE = Path(__file__).parent / "testdata" / "state-v3.json"


_V5 = {"pressure": None, "systemd_unreachable_since": None}  # what v5 adds to the top


NEW = {"last_notice": "", "unit_seen": None}  # what v3 and v4 add to each target's entry


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"version": 1, "targets": {"a": {}}, "updated_at": 5.0},
         {"version": 5, "targets": {"a": NEW}, "updated_at": 5.0,
          "trial": False, "written_by": "", **_V5}),
        ({"version": 2, "targets": {"a": {"health": "down"}}, "trial": True,
          "written_by": "0.1.0"},
         {"version": 5, "targets": {"a": {"health": "down", **NEW}}, "trial": True,
          "written_by": "0.1.0", **_V5}),
        ({"version": 2, "targets": {"a": 7, "b": {}}},
         {"version": 5, "targets": {"a": 7, "b": NEW}, **_V5}),
        ({"version": 2, "targets": []}, {"version": 5, "targets": [], **_V5}),
        ({"version": 2}, {"version": 5, **_V5}),
        ({"version": 3, "targets": {"a": {"last_notice": "x"}}, "trial": False},
         {"version": 5, "targets": {"a": {"last_notice": "x", "unit_seen": None}},
          "trial": False, **_V5}),
        ({"version": 3, "targets": {"a": 7}}, {"version": 5, "targets": {"a": 7}, **_V5}),
        ({"version": 3, "targets": []}, {"version": 5, "targets": [], **_V5}),
        ({"version": 4, "targets": {"a": {"unit_seen": {"restarts": 2}}}, "trial": False},
         {"version": 5, "targets": {"a": {"unit_seen": {"restarts": 2}}}, "trial": False,
          **_V5}),
        ({"version": 5, "targets": {}, "pressure": {"since": 1.0}},
         {"version": 5, "targets": {}, "pressure": {"since": 1.0}}),
    ],
    ids=["v1", "v2", "v2-a-damaged-entry", "v2-damaged-targets", "v2-no-targets",
         "v3", "v3-a-damaged-entry", "v3-damaged-targets", "v4", "v5-as-it-is"],
)
def test_migrate(document: dict[str, object], expected: dict[str, object]) -> None:
    """Each version is brought up to the current one, one step at a time, nothing lost."""
    assert migrate(document) == expected


@pytest.mark.parametrize("version", [0, -1, STATE_VERSION + 1, 99, "1", 1.0, None, True],
                         ids=repr)
def test_migrate_refuses_a_version_it_does_not_know(version: object) -> None:
    """A version that is none of ours, a newer one included, is not read."""
    with pytest.raises(ValueError, match="version"):
        migrate({"version": version, "targets": {}})


def test_every_version_below_the_current_one_has_a_migration() -> None:
    """The path from version 1 up has no gap, and ends at STATE_VERSION."""
    assert sorted(MIGRATIONS) == list(range(1, STATE_VERSION))


def test_every_target_field_has_a_reader() -> None:
    """A field added to TargetState is checked on load: it needs its own reader."""
    assert set(_READERS) == {f.name for f in dataclasses.fields(TargetState)}


def test_a_v1_file_of_the_last_release_is_rewritten_as_the_current_version_with_nothing_lost(
        tmp_path: Path) -> None:
    """tests/testdata/state-v1.json, written by the version 1 StateStore.save, loads; the next
    save writes the current version with every target's entry as it was, no notice, no unit
    seen and no pressure episode."""
    v1 = json.loads(V1_FILE.read_text())
    path = tmp_path / "state.json"
    path.write_bytes(V1_FILE.read_bytes())
    store = StateStore(str(path))
    state = store.load()
    assert not state.trial and set(state.targets) == set(v1["targets"])
    store.save(state)
    current = json.loads(path.read_text())
    assert (current["version"], current["trial"], current["written_by"]) == \
        (STATE_VERSION, False, prober.__version__)
    assert (current["pressure"], current["systemd_unreachable_since"]) == (None, None)
    assert current["targets"] == {name: {**entry, **NEW} for name, entry in v1["targets"].items()}
    assert current["updated_at"] == v1["updated_at"]
    assert not (tmp_path / "state.json.corrupt").exists()


def test_a_v2_file_of_the_last_release_is_rewritten_as_the_current_version_with_nothing_lost(
        tmp_path: Path) -> None:
    """tests/testdata/state-v2.json, written by the version 2 StateStore.save, loads; the next
    save writes the current version with every target's entry as it was, no notice and no unit
    seen."""
    v2 = json.loads(V2_FILE.read_text())
    assert v2["version"] == 2
    path = tmp_path / "state.json"
    path.write_bytes(V2_FILE.read_bytes())
    store = StateStore(str(path))
    store.save(store.load())
    current = json.loads(path.read_text())
    assert (current["version"], current["trial"]) == (STATE_VERSION, False)
    assert current["targets"] == {name: {**entry, **NEW} for name, entry in v2["targets"].items()}
    assert not (tmp_path / "state.json.corrupt").exists()


def test_a_v3_file_of_the_last_release_is_rewritten_as_the_current_version_with_nothing_lost(
        tmp_path: Path) -> None:
    """tests/testdata/state-v3.json, written by the version 3 StateStore.save, loads; the next
    save writes the current version with every target's entry as it was, no unit seen, no
    pressure episode and systemd never found unreachable."""
    v3 = json.loads(V3_FILE.read_text())
    assert v3["version"] == 3
    path = tmp_path / "state.json"
    path.write_bytes(V3_FILE.read_bytes())
    store = StateStore(str(path))
    store.save(store.load())
    now = json.loads(path.read_text())
    assert (now["version"], now["pressure"], now["systemd_unreachable_since"]) == \
        (STATE_VERSION, None, None)
    assert now["targets"] == {name: {**entry, "unit_seen": None}
                              for name, entry in v3["targets"].items()}
    assert now["updated_at"] == v3["updated_at"]


def test_a_pressure_episode_survives_a_save_and_a_bad_one_costs_only_itself(
        tmp_path: Path) -> None:
    """The episode going on and systemd's unreachability read back as saved; a damaged episode
    is dropped with its own warning, the targets kept."""
    episode = PressureEpisode(1.0, 42.5, 2.0, (MemoryUser("grower.service", 1 << 27),))
    state = State(targets={"a": TargetState()}, updated_at=3.0, pressure=episode,
                  systemd_unreachable_since=2.5)
    assert from_json(json.loads(dumps(state))).state == state
    damaged = {**json.loads(dumps(state)), "pressure": {"since": 1.0, "peak": 400}}
    salvaged = from_json(damaged)
    assert salvaged.state.pressure is None and set(salvaged.state.targets) == {"a"}
    assert salvaged.dropped == ("pressure: peak: not a percentage",)


def _with_entry(field: str, value: object) -> bytes:
    """A v2 state where target "bad" has `field` set to `value`, beside two good targets,
    one paused and one with restarts in its budget."""
    good = json.loads(dumps(_sample()))
    good["targets"]["bad"] = {**good["targets"]["web"], field: value}
    return json.dumps(good).encode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("paused_until", "tomorrow"), ("since", "x"), ("since", 1e308),
        ("last_checked_at", -1.0), ("held_at", float("nan")), ("down_since", float("inf")),
        ("consecutive_failures", -1), ("consecutive_failures", 1.5),
        ("consecutive_passes", True), ("restarts_total", 10**30), ("restarts", "5"),
        ("restarts", [1.0, "x"]), ("failure_times", {}), ("health", "sideways"),
        ("health", 3), ("last_ok", "yes"), ("last_reason", None), ("last_failure", "melted"),
        ("last_failure", 7), ("last_status_code", "200"), ("last_latency_ms", -3),
        ("given_up", 1), ("given_up_reason", []), ("paused_reason", {}),
        ("streak_starving", None), ("history", {}), ("history", [1]),
        ("history", [{"at": 1.0, "event": "exploded", "reason": ""}]),
        ("history", [{"at": "now", "event": "down", "reason": ""}]),
        ("history", [{"at": 1.0, "event": "down", "reason": 5}]),
        ("history", [{"at": 1.0, "event": "down", "reason": "", "top_memory": "lots"}]),
        ("history", [{"at": 1.0, "event": "down", "reason": "",
                      "top_memory": [{"name": "x", "bytes": -1}]}]),
        ("unit_seen", 3), ("unit_seen", {"restarts": 1, "oom_kills": 0, "incidents": {}}),
        ("unit_seen", {"restarts": -1, "oom_kills": 0, "incidents": []}),
        ("unit_seen", {"restarts": 1, "oom_kills": 0, "exited_at": "x", "incidents": []}),
        ("unit_seen", {"restarts": 1, "oom_kills": 0, "incidents": [{"at": 1.0}]}),
        ("unit_seen", {"restarts": 1, "oom_kills": 0,
                       "incidents": [{"at": 1.0, "happened": "crash", "detail": 5}]}),
        ("unit_seen", {"restarts": 1, "oom_kills": 0,
                       "incidents": [{"at": 1.0, "happened": "restart"}] * 1001}),
        ("unit_seen", {"restarts": 1, "oom_kills": 0, "incidents": [], "unit": 5}),
        ("unit_seen", {"restarts": 1, "oom_kills": 0, "incidents": [], "host_oom_kills": -2}),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_a_bad_field_costs_only_its_own_target(tmp_path: Path, field: str, value: object,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A wrong-typed or out-of-range field drops that target's entry with one warning naming
    it and the field; the other targets' pauses and restart budgets stay; the file stays."""
    path = tmp_path / "state.json"
    path.write_bytes(_with_entry(field, value))
    state = StateStore(str(path)).load()
    assert dict(state.targets) == dict(_sample().targets)
    assert state.updated_at == _sample().updated_at
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f'target "bad": {field}: ' in warnings[0], warnings
    assert not (tmp_path / "state.json.corrupt").exists()


def test_what_the_unit_health_kind_keeps_of_a_hostile_reading_reads_back() -> None:
    """An exit time from systemd past what the state file holds (UINT64_MAX µs, after 2100) is
    never kept, so the target's history and restart budget are not lost on the next load."""
    now = 1_800_000_000.0
    for exited in (4_102_444_801.0, facts_from_properties(
            "netdata.service", {"ExecMainExitTimestamp": (1 << 64) - 1}).exec_main_exit):
        reading = UnitReading("netdata.service", "loaded", "active", "running",
                              result="exit-code", exit_code=1, exit_status=1, exited_at=exited)
        first = observe(None, reading, now, 3600.0)
        seen = observe(first, dataclasses.replace(reading, active_state="failed"), now + 60, 3600.0)
        state = State(targets={"netdata": dataclasses.replace(_sample().targets["caddy"],
                                                              unit_seen=seen)})
        salvaged = from_json(json.loads(dumps(state)))
        assert (salvaged.dropped, salvaged.state) == ((), state)


def test_a_bad_entry_and_a_bad_time_of_the_file(tmp_path: Path) -> None:
    """An entry that is not an object is dropped; a bad updated_at is forgotten, alone."""
    good = json.loads(dumps(_sample()))
    good["targets"]["bad"] = "down"
    good["updated_at"] = "yesterday"
    salvaged = from_json(good)
    assert dict(salvaged.state.targets) == dict(_sample().targets)
    assert salvaged.state.updated_at is None
    assert [d.split(":")[0] for d in salvaged.dropped] == ['target "bad"', "updated_at"]


def test_a_file_larger_than_its_config_writes_is_moved_aside(tmp_path: Path) -> None:
    """The size cap scales with the targets and `history`; a file over it is never read
    whole, and is moved aside."""
    target = '[[target]]\nname = "{}"\nurl = "http://127.0.0.1/"\n'
    small = parse_config(parse_toml("history = 10\n" + target.format("a"), "small"))
    large = parse_config(parse_toml(target.format("a") + target.format("b"), "large"))
    assert size_limit(large) > size_limit(small)
    path = tmp_path / "state.json"
    path.write_bytes(b" " * (size_limit(small) + 1))
    assert StateStore(str(path)).load(size_limit(small)) == State()
    assert (tmp_path / "state.json.corrupt").exists()


@pytest.mark.parametrize(
    ("dry_run", "named", "found", "trial", "expected"),
    [
        (False, False, False, False, True),
        (False, True, True, False, True),
        (True, False, True, False, False),  # a human's dry run on the real state
        (True, False, False, False, False),  # ... before the first real run
        (True, True, True, False, False),  # the real file, named with --state
        (True, True, False, False, True),  # a trial's first run
        (True, True, True, True, True),  # a trial's later runs
    ],
)
def test_may_write(dry_run: bool, named: bool, found: bool, trial: bool,
                   expected: bool) -> None:
    """A dry run writes only a trial's own file; a real run any file but a trial's."""
    assert may_write(dry_run=dry_run, named_apart=named, found=found, trial=trial,
                     path=Path("s.json")) is expected


def test_a_real_run_refuses_a_trial_file() -> None:
    with pytest.raises(StateError, match="trial state file"):
        may_write(dry_run=False, named_apart=True, found=True, trial=True, path=Path("s.json"))


@pytest.mark.parametrize(
    ("cli", "env", "expected"),
    [
        (None, {}, False),
        (None, {"STATE_DIRECTORY": "/var/lib/prober"}, False),
        ("/var/lib/prober/trial.json", {}, True),
        (None, {"PROBER_STATE": "/var/lib/prober/trial.json"}, True),
        ("/var/lib/prober/state.json", {}, False),  # the default, named: still the real one
        (None, {"PROBER_STATE": "/srv/s/state.json", "STATE_DIRECTORY": "/srv/s"}, False),
    ],
)
def test_named_apart(cli: str | None, env: dict[str, str], expected: bool) -> None:
    """Only a file named for the run, other than the one a run finds by default."""
    assert named_apart(cli, env) is expected
