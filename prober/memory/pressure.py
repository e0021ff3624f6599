"""Memory pressure (PSI), read on every run: the 2018 outage was a memory-pressure outage.

Every run reads the host's `/proc/pressure/memory`. Where targets fail, prober.cgroups tells
more: a unit's own PSI (`memory.pressure` of its cgroup) and the largest memory users, on
whichever cgroup layout the host has. Those names can be imported from here too; they load the
first time one is asked for, so that a healthy run does not pay for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prober.cgroups import (
        MAX_CGROUPS,
        MAX_DEPTH,
        MAX_PROCESSES,
        CgroupMounts,
        Layout,
        anon_bytes,
        is_unit_cgroup,
        largest,
        parse_mountinfo,
        process_memory_users,
        read_cgroup_mounts,
        read_unit_pressure,
        statm_anon_bytes,
        top_memory_users,
        unit_memory_users,
        valid_control_group,
    )

__all__ = [
    "MAX_CGROUPS",
    "MAX_DEPTH",
    "MAX_PROCESSES",
    "PSI_MEMORY",
    "CgroupMounts",
    "Layout",
    "MemoryUser",
    "Pressure",
    "PressureReading",
    "Scope",
    "anon_bytes",
    "describe_users",
    "is_unit_cgroup",
    "largest",
    "parse_mountinfo",
    "parse_psi",
    "process_memory_users",
    "read_cgroup_mounts",
    "read_host_pressure",
    "read_memory_pressure",
    "read_psi_file",
    "read_unit_pressure",
    "statm_anon_bytes",
    "top_memory_users",
    "unit_memory_users",
    "valid_control_group",
]

PSI_MEMORY = "/proc/pressure/memory"
_PSI_READ_LIMIT = 4096  # the kernel's two lines are under 200 bytes


@dataclass(frozen=True)
class Pressure:
    """Share of time (percent) that some / all tasks stalled on memory, over 10 s and 60 s."""

    some_avg10: float
    some_avg60: float
    full_avg10: float
    full_avg60: float

    def describe(self) -> str:
        return (f"memory pressure: some {self.some_avg10:.1f}% / full {self.full_avg10:.1f}% "
                "of the last 10s")


class Scope(StrEnum):
    """Whose stalls a reading counts; the values are what reports may show."""

    UNIT = "unit"  # the tasks of one unit's cgroup
    HOST = "host"  # every task on the host (/proc/pressure/memory)


@dataclass(frozen=True)
class PressureReading:
    """A PSI reading and where it came from, so that a report can say which one it quotes."""

    pressure: Pressure
    scope: Scope
    source: str  # the file read
    cgroup: str | None = None  # the unit's cgroup (systemd's ControlGroup) for a unit reading

    def describe(self) -> str:
        """`memory pressure of /system.slice/caddy.service: some 41.2% / full ...`."""
        whose = f"of {self.cgroup}" if self.cgroup is not None else "(host)"
        text = self.pressure.describe()
        return text.replace("memory pressure:", f"memory pressure {whose}:", 1)


@dataclass(frozen=True)
class MemoryUser:
    """A unit (or, in the fallback, a process) and the anonymous memory it holds."""

    name: str  # `mastodon-sidekiq.service`, or `convert (pid 4242)` in the process fallback
    bytes: int


def parse_psi(text: str) -> Pressure:
    """Pressure from the kernel's `some avg10=.. avg60=.. ...` / `full ...` lines."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for field in rest.split():
            key, _, value = field.partition("=")
            if key in ("avg10", "avg60"):
                values[f"{kind}_{key}"] = float(value)
    return Pressure(values.get("some_avg10", 0.0), values.get("some_avg60", 0.0),
                    values.get("full_avg10", 0.0), values.get("full_avg60", 0.0))


def read_psi_file(path: str) -> Pressure | None:
    """A PSI file (the host's, or a cgroup's memory.pressure), or None if it cannot be read."""
    try:
        # os.read, not open(): no buffered file object for the watcher to build every cycle.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, _PSI_READ_LIMIT)
        finally:
            os.close(fd)
        return parse_psi(data.decode("ascii", errors="replace"))
    except (OSError, ValueError):
        return None


def read_memory_pressure(path: str = PSI_MEMORY) -> Pressure | None:
    """The host's current memory pressure, or None where the kernel has no PSI."""
    return read_psi_file(path)


_LAZY = frozenset(__all__) - {"PSI_MEMORY", "Pressure", "parse_psi", "read_psi_file",
                              "read_memory_pressure", "Scope", "PressureReading", "MemoryUser",
                              "read_host_pressure",
                              "describe_users"}


def read_host_pressure(path: str = PSI_MEMORY) -> PressureReading | None:
    """The host's memory pressure as a reading that says it is the host's."""
    pressure = read_psi_file(path)
    return None if pressure is None else PressureReading(pressure, Scope.HOST, path)


def describe_users(users: Iterable[MemoryUser]) -> str:
    """`convert (pid 4242) 1.2 GiB, mastodon-sidekiq.service 800.0 MiB`."""
    return ", ".join(f"{user.name} {_size(user.bytes)}" for user in users)


def _size(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from prober import cgroups

        return getattr(cgroups, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
