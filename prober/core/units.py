"""A unit's own health, as systemd and the kernel report it. Pure: readings and `now` in.

The unit_health probe kind reads a unit's state, systemd's count of its automatic restarts
(NRestarts), how its last run ended (Result, and the main process's exit), and the OOM kills
its cgroup counted. None of these remembers much: Result is the last run's only, NRestarts
starts again at 0 when an admin starts the unit, and a cgroup made afresh counts from 0. So the
kind keeps what it saw (`UnitSeen`, in the state file between runs): the counters as last read,
the last exit already counted, and the incidents within the target's `unit_window`, with when
they were seen. `observe` adds a reading to that; `judge` says whether the unit is healthy, in
words an admin reads at 4 am.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from prober.core.keys import format_duration
from prober.core.results import FailureClass, Finding
from prober.core.text import size, utc
from prober.core.unit_seen import MAX_INCIDENTS, Happened, Incident, UnitSeen

CLOCK = "%H:%M UTC"


@dataclass(frozen=True)
class UnitReading:
    """What systemd and the unit's cgroup say now."""

    unit: str
    load_state: str
    active_state: str
    sub_state: str
    result: str = "success"  # how the last run ended: oom-kill, core-dump, signal, exit-code...
    restarts: int = 0  # NRestarts
    exit_code: int = 0  # ExecMainCode: 1 exited, 2 killed, 3 dumped (0: has not ended)
    exit_status: int = 0  # ExecMainStatus: the exit status, or the signal's number
    exited_at: float | None = None  # ExecMainExitTimestamp
    oom_kills: int | None = None  # the cgroup's oom_kill counter; None where it cannot be read
    host_oom_kills: int | None = None  # the kernel's, for the whole host (/proc/vmstat)
    memory_max: int | None = None  # the unit's MemoryMax= in bytes, None for none


_CLD_KILLED, _CLD_DUMPED = 2, 3
_CLOCK_SLACK = 60.0  # systemd's clock and `now` are the host's, read a moment apart


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ending(reading: UnitReading) -> str | None:
    """How the last run ended, as words ("crashed (SIGABRT, core dumped)"); None if well."""
    result = reading.result
    if result == "core-dump" or (result == "signal" and reading.exit_code == _CLD_DUMPED):
        return f"crashed ({signal_name(reading.exit_status)}, core dumped)"
    if result == "signal":
        return f"crashed ({signal_name(reading.exit_status)})"
    if result == "exit-code":
        return f"exited with status {reading.exit_status}"
    if result == "watchdog":
        return "missed its watchdog deadline (WatchdogSec=)"
    if result == "timeout":
        return "timed out"
    if result == "oom-kill":
        return "was OOM-killed"
    if result in ("", "success"):
        return None
    return f"ended with result {result}"


def _new_count(now_count: int, before: int) -> int:
    """Incidents since `before` was read: a counter lower than before started again from 0."""
    return now_count - before if now_count >= before else now_count


def observe(seen: UnitSeen | None, reading: UnitReading, now: float,
            window: float) -> UnitSeen:
    """What is remembered after this reading: counters that grew since the last one add an
    incident each (the first reading only sets them), a new bad exit adds one, and incidents
    older than `window` are forgotten.

    A main process killed by SIGKILL is an OOM kill when the unit's cgroup counted one, or,
    where that counter went with the cgroup (v1 removes a unit's cgroup with its last process;
    v2 has systemd say `oom-kill` itself), when the host's count of OOM kills grew meanwhile:
    then each restart since the last reading that the host's count covers was one too. The
    exit of a unit left failed is judged as that, not counted. The first reading (or the
    first of another unit: the target's `unit_health` changed) is the baseline, its last exit
    included: what happened before prober watched is not counted. An exit time later than
    `now` is a clock gone wrong, and ignored.
    """
    exited_at = reading.exited_at
    if exited_at is not None and exited_at > now + _CLOCK_SLACK:
        exited_at = None  # a clock gone wrong: an exit from the future is no incident
    if seen is None or seen.unit != reading.unit:
        seen = UnitSeen(reading.restarts, reading.oom_kills or 0, exited_at,
                        host_oom_kills=reading.host_oom_kills)
    previous = seen
    restarts = _new_count(reading.restarts, previous.restarts)
    ooms = 0
    if reading.oom_kills is not None:
        ooms = _new_count(reading.oom_kills, previous.oom_kills)
    host_ooms = 0
    if reading.host_oom_kills is not None and previous.host_oom_kills is not None:
        host_ooms = _new_count(reading.host_oom_kills, previous.host_oom_kills)
    added = [Incident(now, Happened.RESTART)] * min(restarts, MAX_INCIDENTS)
    new_exit = exited_at is not None and exited_at != previous.exited_at \
        and exited_at >= now - window
    how = ending(reading) if new_exit else None
    at = exited_at if exited_at is not None else now
    killed = reading.exit_code == _CLD_KILLED and reading.exit_status == signal.SIGKILL
    if how is not None and (reading.result == "oom-kill" or (killed and (ooms or host_ooms))):
        ooms = max(ooms, 1, min(restarts, host_ooms))
    elif how is not None and reading.active_state != "failed":
        added.append(Incident(at, Happened.CRASH, how))
    added += [Incident(at if how else now, Happened.OOM_KILL)] * min(ooms, MAX_INCIDENTS)
    kept = tuple(i for i in (*previous.incidents, *added) if i.at >= now - window)
    return UnitSeen(reading.restarts,
                    previous.oom_kills if reading.oom_kills is None else reading.oom_kills,
                    exited_at if new_exit else previous.exited_at,
                    kept[-MAX_INCIDENTS:],
                    previous.host_oom_kills if reading.host_oom_kills is None
                    else reading.host_oom_kills, reading.unit)


def _of(seen: UnitSeen, happened: Happened) -> list[Incident]:
    return [i for i in seen.incidents if i.happened is happened]


def _span(incidents: list[Incident], now: float) -> str:
    """How long the incidents span, up to now, in whole minutes once past one."""
    seconds = now - incidents[0].at
    return format_duration(round(seconds / 60) * 60 if seconds >= 60 else max(1, round(seconds)))


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _now(reading: UnitReading) -> str:
    state = f"{reading.active_state} ({reading.sub_state})"
    if reading.active_state == "active":
        return "it is " + state + " again"
    return "it is " + state


def judge(reading: UnitReading, seen: UnitSeen, now: float, restart_limit: int) -> Finding:
    """Failed, OOM-killed within the window, or restarted (or crashed) more than
    `restart_limit` times within it: a failure, with the reason; otherwise a pass."""
    unit = reading.unit
    if reading.load_state != "loaded":
        return Finding(f"{unit} is not loaded ({reading.load_state or 'unknown'})",
                       FailureClass.UNIT)
    ooms, restarts = _of(seen, Happened.OOM_KILL), _of(seen, Happened.RESTART)
    crashes = _of(seen, Happened.CRASH)
    if reading.active_state == "failed":
        how = ending(reading) or f"ended with result {reading.result}"
        when = f" at {utc(reading.exited_at, CLOCK)}" if reading.exited_at else ""
        return Finding(f"{unit} is failed: it {how}{when} and systemd did not restart it",
                       FailureClass.OOM if reading.result == "oom-kill" else FailureClass.UNIT)
    if ooms:
        again = "systemd restarts it each time" if restarts else _now(reading)
        limit = f" (MemoryMax={size(reading.memory_max)})" if reading.memory_max else ""
        if len(ooms) == 1:
            return Finding(f"{unit} was OOM-killed at {utc(ooms[0].at, CLOCK)}{limit}; {again}",
                           FailureClass.OOM)
        return Finding(f"{unit} was OOM-killed {len(ooms)} times in {_span(ooms, now)}{limit}; "
                       f"{again}", FailureClass.OOM)
    if len(crashes) > restart_limit:
        last = crashes[-1]
        if len(crashes) == 1:
            return Finding(f"{unit} {last.detail} at {utc(last.at, CLOCK)} and was restarted",
                           FailureClass.UNIT)
        return Finding(f"{unit} died {_times(len(crashes))} in {_span(crashes, now)}; the last "
                       f"time it {last.detail} at {utc(last.at, CLOCK)}; systemd restarts it "
                       "each time", FailureClass.UNIT)
    if len(restarts) > restart_limit:
        return Finding(f"{unit} was restarted by systemd {_times(len(restarts))} in "
                       f"{_span(restarts, now)}; {_now(reading)}", FailureClass.UNIT)
    state = f"{unit} is {reading.active_state} ({reading.sub_state})"
    if restarts:
        return Finding(f"{state}; restarted by systemd {_times(len(restarts))} lately, "
                       f"within unit_restarts {restart_limit}")
    return Finding(state)
