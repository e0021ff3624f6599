"""The systemd actuator: its `unit` key, its facts in neutral terms, its polkit grant, and its
restarts. It talks to systemd through prober/io/systemd.py (D-Bus first, `systemctl` as the
fallback), the client the unit_health probe kind reads through too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from prober.core.actuator import ActuatorKind, Facts, RestartResult
from prober.core.config import Config, Target
from prober.core.errors import SystemdError
from prober.core.keys import Key, Shape, choice, typed
from prober.core.text import reason
from prober.io.systemd import (
    CALL_TIMEOUT,
    Bus,
    BusUnavailable,
    SystemdReader,
    run_bounded,
    service_name,
    systemctl_argv,
)

log = logging.getLogger("prober")

SIGNAL_WAIT = 1.0  # after signal_before_restart, time for a core dump or thread dump to start


def bus_of(target: Target) -> Bus:
    bus: Bus = dict(target.actuation).get("bus", Bus.SYSTEM)
    return bus


def on_user_manager(target: Target) -> Target:
    """A systemd target as `check --user` runs it: its unit asked of the user's manager."""
    if target.actuator != ACTUATOR.name:
        return target
    return replace(target, actuation=(*((k, v) for k, v in target.actuation if k != "bus"),
                                      ("bus", Bus.USER)))


# --- unit names -------------------------------------------------------------------------------

# Restarting any of these would take down the prober itself, the bus it talks over, the logs
# that explain what happened, or the manager; none of them is a "layer" of a web stack.
_FORBIDDEN_UNITS = {
    "prober.service": "it is the prober itself",
    "prober-watch.service": "it is the prober itself",
    "dbus.service": "it is the system bus the prober talks to systemd over",
    "dbus-broker.service": "it is the system bus the prober talks to systemd over",
    "systemd-journald.service": "it is the journal that records what the prober did",
    "systemd-logind.service": "it manages user sessions, not a web service",
    "polkit.service": "it decides what the prober may restart",
}


def normalize_unit(value: str) -> str:
    """`caddy` -> `caddy.service`; refuses names systemd would not accept or must never restart."""
    name = service_name(value)
    if name in _FORBIDDEN_UNITS or name.startswith("systemd-journald"):
        reason = _FORBIDDEN_UNITS.get(name, "it is the journal")
        raise ValueError(f'refusing to restart "{name}": {reason}')
    return name


def unit(value: object) -> str:
    return normalize_unit(typed(value, str, 'a unit name like "caddy.service"'))





async def systemctl_restart(unit: str, kind: Bus, timeout: float) -> tuple[bool, str]:
    done = await run_bounded(systemctl_argv(kind, "restart", "--", unit), timeout)
    if done.returncode != 0:
        return False, f"systemctl restart failed: {reason(done.stderr) or done.returncode}"
    return True, "via systemctl"


# --- the actuator the check uses ------------------------------------------------------------


class SystemdActuator(SystemdReader):
    """The `actuator.Actuator` for systemd: D-Bus first, `systemctl` when the bus fails."""

    async def facts(self, target: Target) -> Facts:
        assert target.unit is not None
        return (await self.unit_facts(target.unit, bus_of(target))).neutral()

    async def restart(self, target: Target) -> RestartResult:
        unit = target.unit
        assert unit is not None
        kind = bus_of(target)
        started = time.monotonic()
        before = await self._main_pid(unit, kind)
        if target.policy.signal_before_restart:
            await self._signal(unit, kind, target.policy.signal_before_restart)
        client = await self._client(kind)
        ok, how = False, ""
        if client is not None:
            try:
                result = await client.run_job("RestartUnit", unit, target.policy.restart_timeout)
                ok, how = result == "done", f"job {result}"
            except BusUnavailable as exc:
                await self._drop(kind, exc)
                client = None
        if client is None:
            remaining = max(1.0, target.policy.restart_timeout - (time.monotonic() - started))
            ok, how = await systemctl_restart(unit, kind, remaining)
        after = await self._main_pid(unit, kind) if ok else 0
        elapsed = time.monotonic() - started
        pids = f", MainPID {before} -> {after}" if before or after else ""
        return RestartResult(ok=ok, detail=f"{how} in {elapsed:.2f}s{pids}",
                             main_pid_before=before, main_pid_after=after)

    async def _main_pid(self, unit: str, kind: Bus) -> int:
        try:
            return (await self.unit_facts(unit, kind)).main_pid
        except SystemdError:
            return 0

    async def _signal(self, unit: str, kind: Bus, name: str) -> None:
        client = await self._client(kind)
        try:
            if client is not None:
                await client.kill(unit, name)
            else:
                await run_bounded(systemctl_argv(kind, "kill", "--kill-whom=main",
                                                 f"--signal={name}", "--", unit), CALL_TIMEOUT)
            log.warning("unit=%s: sent %s before restarting, for evidence", unit, name)
            await asyncio.sleep(SIGNAL_WAIT)
        except SystemdError as exc:
            log.warning("unit=%s: could not send %s: %s", unit, name, exc)


def _grants(config: Config, user: str) -> str:
    """The polkit rule for the config's units, or "" when systemd restarts none of its
    targets (the polkit module is loaded only then: a healthy run never needs it)."""
    from prober.actuators import polkit

    return polkit.polkit_rule(config, user) if polkit.restartable_units(config) else ""


KEYS = (
    Key("unit", Shape.UNIT, unit,
        "systemd service to restart (`caddy` means `caddy.service`); without it (or another "
        "actuator's key) the target is monitored only"),
    Key("bus", Shape.CHOICE, choice(Bus),
        "`system`, or `user` for units of a `systemd --user` manager (also `check --user`)",
        default="system", in_defaults=True, choices=tuple(Bus)),
)

ACTUATOR = ActuatorKind(name="systemd", keys=KEYS, make=SystemdActuator, grants=_grants)
