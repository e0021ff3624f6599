"""What the unit_health kind remembers of a unit between runs: the state file's `unit_seen`.

Plain data, apart from prober/core/units.py (which judges it) so that a probe's finding can
carry it without the results importing the judging.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MAX_INCIDENTS = 1000  # kept per unit: a loop this fast is a loop whatever the exact count


class Happened(StrEnum):
    """What the kind counts; the values are what the state file keeps."""

    RESTART = "restart"  # systemd restarted the unit by itself (Restart=)
    OOM_KILL = "oom-kill"  # the kernel killed a process of the unit's cgroup for memory
    CRASH = "crash"  # the main process ended badly: a signal, a core dump, an exit code...


@dataclass(frozen=True)
class Incident:
    at: float  # epoch seconds: when it ended for a crash, when it was first seen otherwise
    happened: Happened
    detail: str = ""  # a crash's: "crashed (SIGABRT, core dumped)"


@dataclass(frozen=True)
class UnitSeen:
    """What the kind remembers of a unit between runs (the state file's `unit_seen`)."""

    restarts: int = 0
    oom_kills: int = 0
    exited_at: float | None = None  # the exit already counted as an incident
    incidents: tuple[Incident, ...] = ()
    host_oom_kills: int | None = None  # the host's count of OOM kills, as last read
    unit: str = ""  # the unit these are of: a target pointed at another starts afresh
