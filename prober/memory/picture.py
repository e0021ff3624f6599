"""What a run reads of memory: the host's PSI, each failing target's own, and the culprit.

The host's reading is one small file on every run; the cgroup tree is walked only when a target
fails, and the largest memory users are looked for only when a failing target starves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prober.core import policy
from prober.core.actuator import Facts
from prober.core.config import Target
from prober.core.psi import MemoryUser, Pressure, PressureReading
from prober.core.results import FailureClass
from prober.core.tracker import Verdict
from prober.memory.pressure import read_host_pressure


@dataclass(frozen=True)
class MemoryPicture:
    """What the run read of memory: the host's PSI, each failing target's own reading, and,
    when some of them starve, who holds the most memory."""

    host: PressureReading | None
    readings: Mapping[str, PressureReading]
    top: tuple[MemoryUser, ...] = ()
    worth_saying: tuple[str, ...] = ()  # the readings that made the run look for a culprit

    @property
    def host_pressure(self) -> Pressure | None:
        return None if self.host is None else self.host.pressure

    @property
    def culprit(self) -> str | None:
        """The largest memory user, when the run looked for one."""
        return self.top[0].name if self.top else None

    def for_target(self, name: str) -> policy.Memory:
        return policy.Memory(self.readings.get(name, self.host), self.culprit)


def read_memory(targets: Sequence[Target], verdicts: Sequence[Verdict],
                facts: Mapping[str, Facts]) -> MemoryPicture:
    """The host's PSI, always; a failing target's unit's own where systemd told its cgroup;
    the largest memory users only when some failing target starves, or was OOM-killed (worth
    the walk)."""
    host = read_host_pressure()
    readings: dict[str, PressureReading] = {}
    if all(verdict.result.ok for verdict in verdicts):
        return MemoryPicture(host, readings)
    from prober.memory.cgroups import read_cgroup_mounts, read_unit_pressure, top_memory_users

    mounts = read_cgroup_mounts()
    for target, verdict in zip(targets, verdicts, strict=True):
        if verdict.result.ok:
            continue
        known = facts.get(target.name)
        scope = known.memory_scope if known else None
        own = read_unit_pressure(scope, mounts) if scope else None
        reading = own or host
        if reading is not None:
            readings[target.name] = reading
    by_name = {t.name: t for t in targets}
    starving = [reading.describe() for name, reading in readings.items()
                if policy.worth_saying(reading.pressure, by_name[name].policy.pressure_threshold)]
    # An OOM kill is itself the evidence: its largest memory users are named whatever PSI says.
    starving += [verdict.result.reason for verdict in verdicts
                 if verdict.result.failure is FailureClass.OOM]
    if not starving:
        return MemoryPicture(host, readings)
    return MemoryPicture(host, readings, top_memory_users(3, mounts),
                          tuple(dict.fromkeys(starving)))


def top_memory_now() -> tuple[MemoryUser, ...]:
    """The three largest memory users now: a walk of the cgroup tree, for a pressure peak."""
    from prober.memory.cgroups import read_cgroup_mounts, top_memory_users

    return top_memory_users(3, read_cgroup_mounts())
