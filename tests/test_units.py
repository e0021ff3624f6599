"""A unit's own health (prober/core/units.py): counting within the window, and the reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest

from prober.core.results import FailureClass
from prober.core.unit_seen import Happened, Incident, UnitSeen
from prober.core.units import UnitReading, ending, judge, observe

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
HOUR = 3600.0
RUNNING = UnitReading("netdata.service", "loaded", "active", "running", restarts=3, oom_kills=2)
# Between a death and systemd's restart: the last run's end is still there to read.
ABORTED = UnitReading("systemd-journald.service", "loaded", "activating", "auto-restart",
                      result="core-dump", restarts=1, exit_code=3, exit_status=6,
                      exited_at=NOW - 5, oom_kills=0)
OOM_V1 = replace(RUNNING, active_state="activating", sub_state="auto-restart", result="signal",
                 exit_code=2, exit_status=9, exited_at=NOW - 5, restarts=4, oom_kills=3)


def kinds(seen: UnitSeen) -> list[str]:
    return [i.happened.value for i in seen.incidents]


@pytest.mark.parametrize(("before", "reading", "expected"), [
    # The first reading sets the counters: what happened before prober watched is not counted.
    (None, RUNNING, []),
    (UnitSeen(3, 2), RUNNING, []),
    (UnitSeen(1, 2), RUNNING, ["restart", "restart"]),
    (UnitSeen(3, 0), RUNNING, ["oom-kill", "oom-kill"]),
    # Started by hand (NRestarts from 0), a fresh cgroup (its counter from 0).
    (UnitSeen(7, 2), replace(RUNNING, restarts=0), []),
    (UnitSeen(3, 9), replace(RUNNING, oom_kills=1), ["oom-kill"]),
    # No counter to read (no memory controller, the cgroup is gone): the last one is kept.
    (UnitSeen(3, 2), replace(RUNNING, oom_kills=None), []),
    # A crash seen between death and restart, counted once; on the first reading it is the
    # baseline, as the exit before prober watched of a unit that runs again is.
    (None, ABORTED, []),
    (None, replace(ABORTED, active_state="active", sub_state="running",
                   result="exit-code", exit_code=1, exit_status=1, exited_at=NOW - 30 * 60), []),
    (UnitSeen(0, 0), ABORTED, ["restart", "crash"]),
    (UnitSeen(1, 0, NOW - 5), ABORTED, []),
    # v1: systemd says SIGKILL; the cgroup's counter says the kernel did it for memory.
    (UnitSeen(3, 2), OOM_V1, ["restart", "oom-kill"]),
    # v2: systemd says oom-kill itself; not counted twice with the cgroup's counter.
    (UnitSeen(3, 2), replace(OOM_V1, result="oom-kill", oom_kills=None), ["restart", "oom-kill"]),
    (UnitSeen(3, 2), replace(OOM_V1, result="oom-kill"), ["restart", "oom-kill"]),
    # A plain SIGKILL the counter does not explain is a crash.
    (UnitSeen(3, 3), OOM_V1, ["restart", "crash"]),
    # v1, the unit's cgroup gone with its process: the host's count of OOM kills grew
    # meanwhile, by as many as systemd restarted it, or fewer.
    (UnitSeen(1, 3, host_oom_kills=90), replace(OOM_V1, oom_kills=None, host_oom_kills=93),
     ["restart", "restart", "restart", "oom-kill", "oom-kill", "oom-kill"]),
    (UnitSeen(1, 3, host_oom_kills=90), replace(OOM_V1, oom_kills=None, host_oom_kills=91),
     ["restart", "restart", "restart", "oom-kill"]),
    (UnitSeen(1, 3, host_oom_kills=90), replace(OOM_V1, oom_kills=None, host_oom_kills=90),
     ["restart", "restart", "restart", "crash"]),
    (None, replace(OOM_V1, oom_kills=None, host_oom_kills=93), []),
    # A unit left failed is judged as failed, not counted as a crash (a start by hand heals it).
    (UnitSeen(3, 2), replace(ABORTED, active_state="failed", sub_state="failed", restarts=3), []),
    # An exit older than the window is not news.
    (UnitSeen(1, 0), replace(ABORTED, exited_at=NOW - 2 * HOUR), []),
    # An exit from the future (a clock gone wrong) is no crash, now or ever after.
    (UnitSeen(1, 0), replace(ABORTED, exited_at=NOW + 2 * HOUR), []),
    (UnitSeen(1, 0), replace(ABORTED, exited_at=4_102_444_800.0), []),
], ids=["first", "same", "restarts", "oom", "started-by-hand", "fresh-cgroup", "no-counter",
        "crash-first-seen", "exit-before-watched", "crash", "crash-already-counted", "oom-v1",
        "oom-v2", "oom-v2-counted", "sigkill", "v1-host-count", "v1-host-count-fewer",
        "v1-host-count-same", "v1-first-reading", "failed", "old-exit", "future-exit",
        "exit-in-2100"])
def test_observe_counts_what_happened_since_the_last_reading(
        before: UnitSeen | None, reading: UnitReading, expected: list[str]) -> None:
    before = before and replace(before, unit=reading.unit)
    assert kinds(observe(before, reading, NOW, HOUR)) == expected


def test_what_was_seen_of_another_unit_is_no_baseline() -> None:
    """A target pointed at another unit: its counters are not compared with the old unit's."""
    seen = observe(None, RUNNING, NOW - 60, HOUR)
    assert seen.unit == "netdata.service"
    other = replace(RUNNING, unit="redis-server.service", restarts=9, oom_kills=7)
    assert observe(seen, other, NOW, HOUR).incidents == ()
    assert kinds(observe(seen, replace(RUNNING, restarts=5), NOW, HOUR)) == ["restart"] * 2


@pytest.mark.parametrize(("reading", "failure"), [
    (replace(RUNNING, result="exit-code", exit_code=1, exit_status=1, exited_at=NOW - 30 * 60),
     None),
    (replace(RUNNING, active_state="failed", sub_state="failed", result="exit-code",
             exit_code=1, exit_status=1, exited_at=NOW - 30 * 60), FailureClass.UNIT),
], ids=["ran-again", "failed-now"])
def test_the_first_reading_judges_the_unit_as_it_is_now(
        reading: UnitReading, failure: FailureClass | None) -> None:
    """The bad exit before prober watched is not counted; a unit failed right now is."""
    seen = observe(None, reading, NOW, HOUR)
    assert seen.exited_at == reading.exited_at
    assert judge(reading, seen, NOW, 0).failure is failure


def test_an_exit_from_the_future_is_not_kept() -> None:
    """Kept, it would be refused by the state file's reader; it is never counted."""
    reading = replace(ABORTED, exited_at=NOW + 2 * HOUR)
    seen = observe(UnitSeen(1, 0, unit=reading.unit), reading, NOW, HOUR)
    assert (seen.exited_at, seen.incidents) == (None, ())


def test_observe_forgets_what_is_older_than_the_window() -> None:
    old = UnitSeen(3, 2, None, (Incident(NOW - 2 * HOUR, Happened.OOM_KILL),
                                Incident(NOW - 60, Happened.RESTART)), unit=RUNNING.unit)
    assert observe(old, RUNNING, NOW, HOUR).incidents == (Incident(NOW - 60, Happened.RESTART),)


def test_observe_bounds_what_it_keeps() -> None:
    """A counter a hostile or broken source made huge costs a bounded list."""
    seen = observe(UnitSeen(0, 0, unit=RUNNING.unit),
                   replace(RUNNING, restarts=10**9, oom_kills=10**9), NOW, HOUR)
    assert len(seen.incidents) == 1000


def _oom(*minutes_ago: float) -> tuple[Incident, ...]:
    return tuple(Incident(NOW - m * 60, Happened.OOM_KILL) for m in minutes_ago)


def _restarts(*minutes_ago: float) -> tuple[Incident, ...]:
    return tuple(Incident(NOW - m * 60, Happened.RESTART) for m in minutes_ago)


def _crash(minutes_ago: float, detail: str = "crashed (SIGABRT, core dumped)"
           ) -> tuple[Incident, ...]:
    return (Incident(NOW - minutes_ago * 60, Happened.CRASH, detail),)


FAILED = replace(RUNNING, active_state="failed", sub_state="failed", result="exit-code",
                 exit_code=1, exit_status=1, exited_at=NOW - 20 * 60)


@pytest.mark.parametrize(("reading", "incidents", "limit", "failure", "reason"), [
    (RUNNING, (), 0, None, "netdata.service is active (running)"),
    (replace(RUNNING, load_state="not-found"), (), 0, FailureClass.UNIT,
     "netdata.service is not loaded (not-found)"),
    (FAILED, (), 0, FailureClass.UNIT,
     "netdata.service is failed: it exited with status 1 at 07:40 UTC and systemd did not "
     "restart it"),
    (replace(FAILED, result="oom-kill"), (), 0, FailureClass.OOM,
     "netdata.service is failed: it was OOM-killed at 07:40 UTC and systemd did not restart it"),
    (RUNNING, _oom(40, 30, 20, 1) + _restarts(40, 30, 20, 1), 0, FailureClass.OOM,
     "netdata.service was OOM-killed 4 times in 40m; systemd restarts it each time"),
    (RUNNING, _oom(33), 5, FailureClass.OOM,
     "netdata.service was OOM-killed at 07:27 UTC; it is active (running) again"),
    (replace(RUNNING, memory_max=48 << 20), _oom(3, 2) + _restarts(3, 2), 0, FailureClass.OOM,
     "netdata.service was OOM-killed 2 times in 3m (MemoryMax=48MiB); systemd restarts it "
     "each time"),
    (replace(ABORTED, active_state="active", sub_state="running"),
     _crash(27) + _restarts(27), 0, FailureClass.UNIT,
     "systemd-journald.service crashed (SIGABRT, core dumped) at 07:33 UTC and was restarted"),
    (RUNNING, _crash(30, "crashed (SIGSEGV)") + _crash(10) + _restarts(30, 10), 1,
     FailureClass.UNIT, "netdata.service died 2 times in 30m; the last time it crashed "
     "(SIGABRT, core dumped) at 07:50 UTC; systemd restarts it each time"),
    (ABORTED, _restarts(12, 8, 4), 2, FailureClass.UNIT,
     "systemd-journald.service was restarted by systemd 3 times in 12m; it is activating "
     "(auto-restart)"),
    (RUNNING, _restarts(12, 8), 2, None,
     "netdata.service is active (running); restarted by systemd 2 times lately, within "
     "unit_restarts 2"),
], ids=["healthy", "not-loaded", "failed", "failed-oom", "oom-loop", "one-oom", "oom-limit",
        "one-crash", "crashes-over-limit", "restart-loop", "restarts-within-limit"])
def test_judge(reading: UnitReading, incidents: tuple[Incident, ...], limit: int,
               failure: FailureClass | None, reason: str) -> None:
    finding = judge(reading, UnitSeen(incidents=incidents), NOW, limit)
    assert (finding.failure, finding.reason) == (failure, reason)


@pytest.mark.parametrize(("result", "code", "status", "words"), [
    ("success", 1, 0, None),
    ("core-dump", 3, 6, "crashed (SIGABRT, core dumped)"),
    ("signal", 3, 11, "crashed (SIGSEGV, core dumped)"),
    ("signal", 2, 15, "crashed (SIGTERM)"),
    ("signal", 2, 99, "crashed (signal 99)"),
    ("exit-code", 1, 2, "exited with status 2"),
    ("watchdog", 2, 6, "missed its watchdog deadline (WatchdogSec=)"),
    ("timeout", 2, 15, "timed out"),
    ("oom-kill", 2, 9, "was OOM-killed"),
    ("start-limit-hit", 0, 0, "ended with result start-limit-hit"),
])
def test_ending(result: str, code: int, status: int, words: str | None) -> None:
    reading = replace(RUNNING, result=result, exit_code=code, exit_status=status)
    assert ending(reading) == words
