"""Memory pressure (PSI) and memory users as values, and the parsing of the kernel's text: pure.

The readers of /proc and the cgroup tree are prober.memory's; the core only sees these values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


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


def describe_users(users: Iterable[MemoryUser]) -> str:
    """`convert (pid 4242) 1.2 GiB, mastodon-sidekiq.service 800.0 MiB`."""
    return ", ".join(f"{user.name} {_size(user.bytes)}" for user in users)


def _size(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
