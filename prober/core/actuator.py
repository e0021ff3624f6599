"""What a run needs from whatever restarts services, and the facts it reports. Plain data.

`systemd.SystemdActuator` (D-Bus, with `systemctl` as its fallback) is the one actuator today;
another (Docker, a supervisor) would be one more module implementing `Actuator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from prober.core.config import Bus, Target


class ActiveState(StrEnum):
    ACTIVE = "active"
    RELOADING = "reloading"
    INACTIVE = "inactive"
    FAILED = "failed"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"
    MAINTENANCE = "maintenance"
    REFRESHING = "refreshing"


@dataclass(frozen=True)
class UnitFacts:
    """What the service manager says about a unit. Times are epoch seconds."""

    unit: str
    load_state: str
    active_state: str
    sub_state: str
    active_enter: float | None = None
    main_pid: int = 0
    job_pending: bool = False
    start_limit_burst: int = 0
    start_limit_interval: float = 0.0
    control_group: str = ""  # the unit's cgroup path, e.g. /system.slice/caddy.service

    def describe(self) -> str:
        return f"{self.unit} is {self.active_state} ({self.sub_state})"


@dataclass(frozen=True)
class RestartResult:
    """What the actuator reports about one restart."""

    ok: bool  # the restart job completed ("done")
    detail: str  # one line: "job done in 0.2s", "job failed", "via systemctl: ..."
    main_pid_before: int = 0
    main_pid_after: int = 0


class Actuator(Protocol):
    """What a run needs to restart units. Errors it reports are ProberErrors."""

    async def unit_facts(self, unit: str, bus: Bus) -> UnitFacts: ...

    async def restart(self, target: Target) -> RestartResult: ...

    async def close(self) -> None: ...
