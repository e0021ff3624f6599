"""What an actuator is: the shape every module under prober/actuators/ fills in. Plain data.

An actuator restarts what serves a target (a systemd unit, a container). It declares its own
target keys, the first of them its selector: a target that sets it is restarted by this
actuator, by the name it gives; a target that sets no actuator's selector is monitored only.
It reports what it restarts as neutral `Facts`, which is all the policy judges, restarts when
the policy says so, and says what it needs granted to do that (systemd's polkit rule).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from prober.core.config import ACTUATORS, Config, Target
from prober.core.keys import Key


class Running(StrEnum):
    """Whether what a target's actuator restarts is up, in terms every actuator can report."""

    RUNNING = "running"  # up (if not answering): a restart may help
    STARTING = "starting"  # a start, stop or reload is under way: wait for it
    STOPPED = "stopped"  # stopped, failed or absent: an admin's call, never started by prober


@dataclass(frozen=True)
class StartLimit:
    """The manager's own limit on starts: more than `burst` within `interval` seconds and it
    refuses to start the service at all."""

    burst: int
    interval: float
    spelled: str  # as the manager names it: "StartLimitBurst=5 within StartLimitIntervalSec=10s"


@dataclass(frozen=True)
class Facts:
    """What an actuator says about what it restarts for a target. Times are epoch seconds."""

    name: str  # as the actuator names it: "caddy.service"
    running: Running
    detail: str  # one line: "caddy.service is active (running)"
    since: float | None = None  # when it last started, for the startup grace
    main_pid: int = 0
    memory_scope: str | None = None  # its cgroup, for its own memory pressure
    start_limit: StartLimit | None = None
    # Why the manager's own health check fails it (Docker's `unhealthy`), "" when it passes or
    # has none; read only for a target whose actuator `judges` it.
    failing: str = ""

    def describe(self) -> str:
        return self.detail


@dataclass(frozen=True)
class RestartResult:
    """What the actuator reports about one restart."""

    ok: bool  # the restart completed
    detail: str  # one line: "job done in 0.2s", "job failed", "via systemctl: ..."
    main_pid_before: int = 0
    main_pid_after: int = 0
    stopped: bool = False  # found stopped when the restart came (an admin's stop): left so


class Actuator(Protocol):
    """What a run needs to restart targets. Errors it reports are ProberErrors."""

    async def facts(self, target: Target) -> Facts: ...

    async def restart(self, target: Target) -> RestartResult: ...

    async def close(self) -> None: ...


def no_grants(config: Config, user: str) -> str:
    """The grant of an actuator that needs none."""
    return ""


def no_access(config: Config, user: str) -> str:
    """The access of an actuator that needs nothing but its grant."""
    return ""


def judges_nothing(target: Target) -> bool:
    """An actuator whose manager has no health check of its own to count."""
    return False


def fits_any(target: Target) -> str | None:
    """An actuator for which every policy key means what it says."""
    return None


@dataclass(frozen=True)
class ActuatorKind:
    """One actuator, as registered in prober/actuators/__init__.py."""

    name: str  # "systemd"
    keys: tuple[Key, ...]  # its own target keys; the first is its selector, its value the name
    make: Callable[[], Actuator]  # one per run, or for the watcher's life; closed with close()
    # What prober's user must be granted to restart the config's targets of this actuator, as
    # the text of a rule (systemd's polkit rule), or "" for nothing.
    grants: Callable[[Config, str], str] = no_grants
    # What else prober's user needs to restart the config's targets of this actuator, that no
    # rule gives (a container engine's socket), in one line, or "" for nothing.
    access: Callable[[Config, str], str] = no_access
    # Top-level keys of its own (where its manager listens), read once and handed to each of its
    # targets with its other keys, in `Target.actuation`.
    top_keys: tuple[Key, ...] = ()
    # Whether its manager's own health check (`Facts.failing`) counts as a failure of the
    # target, asked of its facts every run (a target's `container_health = true`).
    judges: Callable[[Target], bool] = judges_nothing
    # Why a target's keys, its own and the policy's together, cannot work with this actuator
    # ("stop_timeout: ..."), or None; asked once per target when the config loads. Pure.
    check: Callable[[Target], str | None] = fits_any

    @property
    def selector(self) -> str:
        return self.keys[0].name


def registered() -> tuple[ActuatorKind, ...]:
    """The registered actuators, looked up by the registry's name: the core imports none."""
    actuators: tuple[ActuatorKind, ...] = importlib.import_module(ACTUATORS).ACTUATORS
    return actuators


def actuator_of(target: Target) -> ActuatorKind:
    """The registered actuator that restarts `target` (the first when the target names none)."""
    actuators = registered()
    return next((a for a in actuators if a.name == target.actuator), actuators[0])


RestartKey = tuple[str, str]


def restart_key(target: Target) -> RestartKey:
    """What one restart restarts: a unit and a container of one name are two things."""
    return target.actuator, target.unit or ""


def restarted_as(target: Target) -> dict[str, str | None]:
    """What restarts the target, under every registered actuator's selector: a unit's target
    is `{"unit": "caddy.service", "container": None}`, a container's `{"unit": None,
    "container": "mastodon-web-1"}`: each field keeps one meaning in JSON, labels and
    notifications."""
    own = actuator_of(target).name if target.unit is not None else None
    return {kind.selector: target.unit if kind.name == own else None for kind in registered()}


class PerTarget:
    """The `Actuator` a run uses: each target's own registered actuator, made when first
    needed (connecting to its manager costs only when a restart is near)."""

    def __init__(self) -> None:
        self._made: dict[str, Actuator] = {}

    def _of(self, target: Target) -> Actuator:
        kind = actuator_of(target)
        if kind.name not in self._made:
            self._made[kind.name] = kind.make()
        return self._made[kind.name]

    async def facts(self, target: Target) -> Facts:
        return await self._of(target).facts(target)

    async def restart(self, target: Target) -> RestartResult:
        return await self._of(target).restart(target)

    async def close(self) -> None:
        made, self._made = list(self._made.values()), {}
        for actuator in made:
            await actuator.close()
