"""Memory pressure (PSI), read on every run: the 2018 outage was a memory-pressure outage.

Every run reads the host's `/proc/pressure/memory`. Where targets fail, prober.memory.cgroups tells
more: a unit's own PSI (`memory.pressure` of its cgroup) and the largest memory users, on
whichever cgroup layout the host has.
"""

from __future__ import annotations

import os

from prober.core.psi import Pressure, PressureReading, Scope, parse_psi

PSI_MEMORY = "/proc/pressure/memory"
_PSI_READ_LIMIT = 4096  # the kernel's two lines are under 200 bytes


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


def read_host_pressure(path: str = PSI_MEMORY) -> PressureReading | None:
    """The host's memory pressure as a reading that says it is the host's."""
    pressure = read_psi_file(path)
    return None if pressure is None else PressureReading(pressure, Scope.HOST, path)
