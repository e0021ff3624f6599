"""The unit_health probe kind: what systemd and the kernel already know of a unit.

A unit systemd restarts again and again, one the kernel OOM-kills in a loop, or one left
`failed`, often looks `active` to anyone who glances, and answers nothing prober could probe
(netdata, journald). This kind reads, through the systemd client the actuator uses
(prober/io/systemd.py), the unit's state, NRestarts and how its last run ended, and the OOM
kills its cgroup counted (prober/memory/cgroups.py); prober/core/units.py counts them within
`unit_window` and judges. Monitor-only: `unit_health` names what is watched, never what is
restarted, so it may name units prober refuses to restart (journald).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prober.core.errors import SystemdError
from prober.core.keys import Key, Shape, duration, format_duration, integer, typed
from prober.core.kinds import Argument, ProbeKind
from prober.core.results import Deadline, Finding, prober_fault
from prober.core.text import os_reason, reason
from prober.core.unit_seen import UnitSeen
from prober.core.units import UnitReading, judge, observe
from prober.io.systemd import Bus, SystemdReader, UnitFacts, service_name


@dataclass(frozen=True)
class UnitHealthProbe:
    """A unit to watch, and how much of systemd's restarting is still healthy."""

    unit_health: str
    unit_restarts: int = 0
    unit_window: float = 3600.0

    @property
    def endpoint(self) -> str:
        return self.unit_health


def unit_name(value: object) -> str:
    return service_name(typed(value, str, 'a unit name like "netdata.service"'))


KEYS = (
    Key("unit_health", Shape.UNIT, unit_name,
        "systemd service to watch (`netdata` means `netdata.service`): failed, restarted by "
        "systemd or OOM-killed; never restarted by prober, so any unit, journald too"),
    Key("unit_restarts", Shape.INTEGER, integer(0),
        "restarts (or crashes) by systemd itself within `unit_window` that are still healthy; "
        "one more fails the target", default="0", in_defaults=True, minimum=0),
    Key("unit_window", Shape.DURATION, duration(1.0),
        "how far back restarts, crashes and OOM kills of the `unit_health` unit count",
        default='"1h"', in_defaults=True, minimum=1.0),
)


def watched(spec: UnitHealthProbe) -> str:
    return spec.unit_health


def build(values: Mapping[str, Any]) -> UnitHealthProbe:
    return UnitHealthProbe(**values)


def argument(args: Sequence[str]) -> Mapping[str, Any] | None:
    if len(args) == 1 and args[0].startswith("unit:"):
        return {"unit_health": args[0][len("unit:"):]}
    return None


class UnitContext:
    """The systemd client of a run (or of the watcher's life), and what each spec saw last."""

    def __init__(self) -> None:
        self._reader: SystemdReader | None = None
        self._seen: dict[UnitHealthProbe, UnitSeen | None] = {}

    @property
    def reader(self) -> SystemdReader:
        if self._reader is None:  # made in the running loop, as the bus must be
            self._reader = SystemdReader()
        return self._reader

    def recall(self, spec: Any, seen: UnitSeen | None) -> None:
        self._seen[spec] = seen

    def seen(self, spec: UnitHealthProbe) -> UnitSeen | None:
        return self._seen.get(spec)

    def saw(self, spec: UnitHealthProbe, seen: UnitSeen) -> None:
        self._seen[spec] = seen

    async def prepare(self, specs: Sequence[Any]) -> None:
        return None

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None


def reading_of(facts: UnitFacts, oom_kills: int | None, host_oom_kills: int | None
               ) -> UnitReading:
    return UnitReading(
        unit=facts.unit, load_state=facts.load_state, active_state=facts.active_state,
        sub_state=facts.sub_state, result=facts.result or "success",
        restarts=facts.n_restarts, exit_code=facts.exec_main_code,
        exit_status=facts.exec_main_status, exited_at=facts.exec_main_exit,
        oom_kills=oom_kills, host_oom_kills=host_oom_kills, memory_max=facts.memory_max)


async def probe(spec: UnitHealthProbe, deadline: Deadline, context: UnitContext) -> Finding:
    """Read the unit, count what happened since the last reading, and judge."""
    from prober.memory.cgroups import read_host_oom_kills, read_oom_kills

    try:
        async with asyncio.timeout_at(deadline.at):
            facts = await context.reader.unit_facts(spec.unit_health, Bus.SYSTEM)
    except TimeoutError:
        return prober_fault(f"systemd did not say how {spec.unit_health} is within "
                            f"{format_duration(deadline.seconds)}")
    except (SystemdError, OSError) as exc:  # OSError: no systemctl to fall back on
        return prober_fault(reason(f"cannot read {spec.unit_health} from systemd: "
                                   f"{os_reason(exc)}"))
    oom_kills = read_oom_kills(facts.control_group) if facts.control_group else None
    now = time.time()
    reading = reading_of(facts, oom_kills, read_host_oom_kills())
    seen = observe(context.seen(spec), reading, now, spec.unit_window)
    context.saw(spec, seen)
    finding = judge(reading, seen, now, spec.unit_restarts)
    return Finding(finding.reason, finding.failure, seen=seen)


KIND: ProbeKind[UnitHealthProbe, UnitContext] = ProbeKind(
    name="unit_health",
    spec=UnitHealthProbe,
    keys=KEYS,
    selectors=("unit_health",),
    build=build,
    probe=probe,
    context=UnitContext,
    argument=Argument("unit:UNIT", "unit:UNIT (a systemd service to watch)", argument),
    restartable=False,
    watches=watched,
)
