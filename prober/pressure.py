"""Memory pressure (PSI), read on every run: the 2018 outage was a memory-pressure outage.

Every run reads the host's `/proc/pressure/memory`. Where targets fail, prober.cgroups tells
more: a unit's own PSI (`memory.pressure` of its cgroup) and the largest memory users, on
whichever cgroup layout the host has. Those names can be imported from here too; they load the
first time one is asked for, so that a healthy run does not pay for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prober.cgroups import (
        MAX_CGROUPS,
        MAX_DEPTH,
        MAX_PROCESSES,
        CgroupMounts,
        Layout,
        MemoryUser,
        PressureReading,
        Scope,
        anon_bytes,
        is_unit_cgroup,
        largest,
        parse_mountinfo,
        process_memory_users,
        read_cgroup_mounts,
        read_host_pressure,
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
        with open(path, "rb") as handle:
            return parse_psi(handle.read(_PSI_READ_LIMIT).decode("ascii", errors="replace"))
    except (OSError, ValueError):
        return None


def read_memory_pressure(path: str = PSI_MEMORY) -> Pressure | None:
    """The host's current memory pressure, or None where the kernel has no PSI."""
    return read_psi_file(path)


_LAZY = frozenset(__all__) - {"PSI_MEMORY", "Pressure", "parse_psi", "read_psi_file",
                              "read_memory_pressure"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from prober import cgroups

        return getattr(cgroups, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
