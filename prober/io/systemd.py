"""Reading systemd: one client for everything prober asks of it, D-Bus (dbus-next) first,
`systemctl` as the fallback. The systemd actuator restarts through it; the unit_health probe
kind reads through it.

Only this module knows dbus-next; swapping it for dbus-fast (an API-compatible fork) means
changing the imports here. What dbus-next does not do for us, and we do here:
- its calls have no timeout: every call is wrapped in `asyncio.wait_for`;
- `disconnect()` shuts the socket down but does not close it: we close it;
- the bus must be created inside the running loop (it binds the loop at construction);
- signal handlers are plain callbacks kept alive by us, not coroutines;
- it is imported where first used: a run that restarts nothing never pays for it.
The prober never asks for interactive authorization: a denied request is reported, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal as signals
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from prober.core.actuator import Facts, Running, StartLimit
from prober.core.errors import SystemdError
from prober.core.keys import format_duration
from prober.core.text import LATEST_TIME, os_reason, reason

if TYPE_CHECKING:
    from dbus_next.aio.message_bus import MessageBus
    from dbus_next.message import Message

log = logging.getLogger("prober")

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"

CALL_TIMEOUT = 5.0  # one D-Bus round trip; systemd answers in milliseconds when healthy
CONNECT_TIMEOUT = 3.0

_DENIED = {
    "org.freedesktop.DBus.Error.AccessDenied",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
}


_NO_SYSTEMD_ON_BUS = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
}


class Bus(StrEnum):
    """Which systemd manager owns a target's unit."""

    SYSTEM = "system"
    USER = "user"


class ActiveState(StrEnum):
    ACTIVE = "active"
    RELOADING = "reloading"
    INACTIVE = "inactive"
    FAILED = "failed"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"
    MAINTENANCE = "maintenance"
    REFRESHING = "refreshing"


_BUSY = (ActiveState.ACTIVATING, ActiveState.RELOADING, ActiveState.DEACTIVATING,
         ActiveState.REFRESHING)


@dataclass(frozen=True)
class UnitFacts:
    """What systemd says about a unit. Times are epoch seconds."""

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
    n_restarts: int = 0  # NRestarts: systemd's own restarts since the unit was started by hand
    result: str = ""  # how the last run ended: success, oom-kill, core-dump, signal, exit-code...
    exec_main_code: int = 0  # 1 exited, 2 killed, 3 dumped (CLD_* of waitid(2))
    exec_main_status: int = 0  # the exit status, or the signal's number
    exec_main_exit: float | None = None  # when the main process ended
    memory_max: int | None = None  # MemoryMax= in bytes; None for none (infinity)

    def describe(self) -> str:
        return f"{self.unit} is {self.active_state} ({self.sub_state})"

    def neutral(self) -> Facts:
        """The facts the policy judges: a unit not loaded, inactive or failed is stopped (an
        admin's call, or systemd's Restart= job); one with a job under way is starting."""
        if self.load_state != "loaded":
            running = Running.STOPPED
            detail = f"{self.unit} is not loaded ({self.load_state})"
        else:
            busy = self.job_pending or self.active_state in _BUSY
            running = Running.STARTING if busy else (
                Running.RUNNING if self.active_state == ActiveState.ACTIVE else Running.STOPPED)
            detail = self.describe()
        limit = None
        if self.start_limit_burst > 0 and self.start_limit_interval > 0:
            limit = StartLimit(self.start_limit_burst, self.start_limit_interval,
                               f"StartLimitBurst={self.start_limit_burst} within "
                               f"StartLimitIntervalSec={format_duration(self.start_limit_interval)}"
                               " (start-limit-hit)")
        return Facts(self.unit, running, detail, since=self.active_enter,
                     main_pid=self.main_pid, memory_scope=self.control_group or None,
                     start_limit=limit)


_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service$")


def service_name(value: str) -> str:
    """`caddy` -> `caddy.service`; ValueError for a name systemd would not accept."""
    name = value if "." in value.rsplit("@", 1)[-1] else f"{value}.service"
    if not _UNIT_NAME.match(name) or len(name) > 255:
        raise ValueError(
            f'"{value}" is not a service unit name (expected something like "caddy.service")'
        )
    return name


class BusUnavailable(SystemdError):
    """The bus cannot be reached, or did not answer in time: `systemctl` may still work."""


def _denied_hint(unit: str, verb: str) -> str:
    return (
        f"the prober's user (uid {os.geteuid()}) may not {verb} {unit}: install the polkit rule "
        "that `prober polkit-rule` prints (units/50-prober.rules) listing this unit, "
        "or run the prober as root"
    )


def _bus_address(kind: Bus, environ: Mapping[str, str]) -> str:
    if kind is Bus.SYSTEM:
        return environ.get("DBUS_SYSTEM_BUS_ADDRESS",
                           "unix:path=/run/dbus/system_bus_socket")
    if environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return environ["DBUS_SESSION_BUS_ADDRESS"]
    runtime = environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.geteuid()}")
    return f"unix:path={runtime}/bus"


def _raise_for_error(reply: Message, unit: str, verb: str) -> None:
    from dbus_next.constants import MessageType

    if reply.message_type is not MessageType.ERROR:
        return
    name = reply.error_name or "unknown error"
    text = reply.body[0] if reply.body else name
    if name in _DENIED:
        raise SystemdError(f"systemd refused to {verb} {unit}: {text}", _denied_hint(unit, verb))
    if name == "org.freedesktop.systemd1.NoSuchUnit":
        raise SystemdError(f"systemd has no unit {unit}", "check the `unit` key in the config")
    if name in _NO_SYSTEMD_ON_BUS or name.startswith("org.freedesktop.DBus.Error.Spawn."):
        # A bus without systemd on it (a stray session bus): systemctl may still reach it.
        raise BusUnavailable(f"systemd is not on this bus: {name}")
    raise SystemdError(f"systemd could not {verb} {unit}: {name}: {text}")


class DBusClient:
    """One connection to a systemd manager over D-Bus, created inside the running loop."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._job_results: dict[str, str] = {}
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._subscribed = False

    @classmethod
    async def connect(cls, kind: Bus, environ: Mapping[str, str] = os.environ) -> DBusClient:
        from dbus_next.aio.message_bus import MessageBus
        from dbus_next.constants import BusType

        address = _bus_address(kind, environ)
        try:
            bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
        except Exception as exc:  # dbus-next raises plain OSErrors and its own errors
            raise BusUnavailable(f"cannot connect to the {kind} bus at {address}: "
                                 f"{os_reason(exc)}") from None
        try:
            await asyncio.wait_for(bus.connect(), CONNECT_TIMEOUT)
        except Exception as exc:
            _close(bus)
            why = "no answer" if isinstance(exc, TimeoutError) else os_reason(exc)
            raise BusUnavailable(f"cannot connect to the {kind} bus at {address}: "
                                 f"{why}") from None
        return cls(bus)

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, *, what: str, unit: str) -> Message:
        from dbus_next.message import Message

        message = Message(destination=SYSTEMD, path=path, interface=interface, member=member,
                          signature=signature, body=body or [])
        try:
            reply = await asyncio.wait_for(self._bus.call(message), CALL_TIMEOUT)
        except TimeoutError:
            raise BusUnavailable(f"systemd did not answer {member} within "
                                 f"{format_duration(CALL_TIMEOUT)}") from None
        except Exception as exc:
            raise BusUnavailable(f"D-Bus call {member} failed: {os_reason(exc)}") from None
        if reply is None:
            raise BusUnavailable(f"no reply to {member}")
        _raise_for_error(reply, unit, what)
        return reply

    async def unit_path(self, unit: str) -> str:
        reply = await self.call(MANAGER_PATH, MANAGER, "LoadUnit", "s", [unit],
                                what="look up", unit=unit)
        return str(reply.body[0])

    async def properties(self, path: str, interface: str, unit: str) -> dict[str, Any]:
        reply = await self.call(path, PROPERTIES, "GetAll", "s", [interface],
                                what="read the state of", unit=unit)
        return {key: variant.value for key, variant in reply.body[0].items()}

    async def facts(self, unit: str) -> UnitFacts:
        path = await self.unit_path(unit)
        props = await self.properties(path, UNIT, unit)
        service = await self.properties(path, SERVICE, unit) if unit.endswith(".service") else {}
        return facts_from_properties(unit, {**props, **service})

    async def _subscribe(self) -> None:
        from dbus_next.message import Message

        if self._subscribed:
            return
        self._bus.add_message_handler(self._on_message)
        rule = (f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',"
                "member='JobRemoved'")
        match = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                        body=[rule])
        await asyncio.wait_for(self._bus.call(match), CALL_TIMEOUT)
        await self.call(MANAGER_PATH, MANAGER, "Subscribe", what="subscribe to", unit="jobs")
        self._subscribed = True

    def _on_message(self, message: Message) -> bool:
        """Plain callback (not a coroutine): records JobRemoved results by job path."""
        from dbus_next.constants import MessageType

        if message.message_type is MessageType.SIGNAL and message.member == "JobRemoved":
            _job_id, job_path, _unit, result = message.body
            self._job_results[job_path] = result
            waiter = self._job_waiters.pop(job_path, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
        return False

    async def run_job(self, member: str, unit: str, timeout: float) -> str:
        """Ask for a job (RestartUnit, ...) and wait for its result: done, failed, timeout..."""
        await self._subscribe()
        reply = await self.call(MANAGER_PATH, MANAGER, member, "ss", [unit, "replace"],
                                what="restart", unit=unit)
        job = str(reply.body[0])
        if job in self._job_results:  # the signal can overtake the reply
            return self._job_results[job]
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._job_waiters[job] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return f"not finished after {format_duration(timeout)}"
        finally:
            self._job_waiters.pop(job, None)

    async def kill(self, unit: str, signal_name: str) -> None:
        number = int(signals.Signals[signal_name])
        await self.call(MANAGER_PATH, MANAGER, "KillUnit", "ssi", [unit, "main", number],
                        what=f"send {signal_name} to", unit=unit)

    def close(self) -> None:
        _close(self._bus)


def _close(bus: MessageBus) -> None:
    with contextlib.suppress(Exception):
        bus.disconnect()  # type: ignore[no-untyped-call]
    sock = getattr(bus, "_sock", None)
    if sock is not None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        with contextlib.suppress(Exception):
            sock.close()


def _usec_to_epoch(value: object) -> float | None:
    """A timestamp in µs as epoch seconds; None for none (0), and for one past LATEST_TIME
    (UINT64_MAX, a clock gone wrong) that no date or state file could hold."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    seconds = value / 1_000_000
    return seconds if 0 < seconds <= LATEST_TIME else None


def facts_from_properties(unit: str, props: Mapping[str, Any]) -> UnitFacts:
    """UnitFacts from the D-Bus property names (as `systemctl show` prints them too)."""
    job = props.get("Job")
    job_pending = bool(job and isinstance(job, list | tuple) and job[0])
    if isinstance(job, str):  # systemctl show prints the job id, or nothing
        job_pending = job.strip() not in ("", "0")
    return UnitFacts(
        unit=unit,
        load_state=str(props.get("LoadState", "")),
        active_state=str(props.get("ActiveState", "")),
        sub_state=str(props.get("SubState", "")),
        active_enter=_usec_to_epoch(props.get("ActiveEnterTimestamp")),
        main_pid=int(props.get("MainPID", 0) or 0),
        job_pending=job_pending,
        start_limit_burst=int(props.get("StartLimitBurst", 0) or 0),
        start_limit_interval=int(props.get("StartLimitIntervalUSec", 0) or 0) / 1_000_000,
        control_group=str(props.get("ControlGroup", "") or ""),
        n_restarts=_int(props.get("NRestarts")),
        result=str(props.get("Result", "") or ""),
        exec_main_code=_int(props.get("ExecMainCode")),
        exec_main_status=_int(props.get("ExecMainStatus")),
        exec_main_exit=_usec_to_epoch(props.get("ExecMainExitTimestamp")),
        memory_max=_limit(props.get("MemoryMax")),
    )


def _limit(value: object) -> int | None:
    """A memory limit: D-Bus says infinity as 2^64-1, `systemctl show` as "infinity"."""
    if isinstance(value, str):
        value = int(value) if value.isdigit() else None
    return value if isinstance(value, int) and 0 < value < (1 << 63) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- systemctl: the fallback when the bus is down or hung ---------------------------------

_SHOW_PROPERTIES = ("LoadState", "ActiveState", "SubState", "ActiveEnterTimestamp", "MainPID",
                    "Job", "StartLimitBurst", "StartLimitIntervalUSec", "ControlGroup",
                    "NRestarts", "Result", "ExecMainCode", "ExecMainStatus",
                    "ExecMainExitTimestamp", "MemoryMax")


def systemctl_argv(kind: Bus, *args: str) -> list[str]:
    scope = ["--user"] if kind is Bus.USER else []
    return ["systemctl", *scope, "--no-ask-password", *args]


async def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell) and kill it if it outlives `timeout`."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise SystemdError(f"`{' '.join(argv)}` did not finish within "
                           f"{format_duration(timeout)}") from None
    assert process.returncode is not None
    return subprocess.CompletedProcess(argv, process.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))


def _parse_show(text: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("ActiveEnterTimestamp", "ExecMainExitTimestamp"):
            props[key] = _show_usec(value)
        elif key in ("MainPID", "StartLimitBurst", "StartLimitIntervalUSec", "NRestarts",
                     "ExecMainCode", "ExecMainStatus"):
            props[key] = int(value) if value.isdigit() else 0
        else:
            props[key] = value
    return props


def _show_usec(value: str) -> int:
    """`@SECONDS` (`--timestamp=unix`) in µs; 0 for none, and for what is not a number."""
    try:
        return int(float(value[1:]) * 1_000_000) if value.startswith("@") else 0
    except (ValueError, OverflowError):
        return 0


async def systemctl_facts(unit: str, kind: Bus) -> UnitFacts:
    argv = systemctl_argv(kind, "show", "--timestamp=unix",
                           "--property=" + ",".join(_SHOW_PROPERTIES), "--", unit)
    done = await run_bounded(argv, CALL_TIMEOUT)
    if done.returncode != 0:
        raise SystemdError(f"systemctl show {unit} failed: {reason(done.stderr)}")
    return facts_from_properties(unit, _parse_show(done.stdout))



# --- the reader both the actuator and the unit_health kind use ---------------------------------


@dataclass
class _Connection:
    client: DBusClient | None
    error: str = ""


class SystemdReader:
    """Connections to the systemd managers, one per bus, made on first use: D-Bus first,
    `systemctl` when the bus fails."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._environ = environ
        self._connections: dict[Bus, _Connection] = {}
        self._lock = asyncio.Lock()

    async def _client(self, kind: Bus) -> DBusClient | None:
        async with self._lock:
            if kind not in self._connections:
                try:
                    client = await DBusClient.connect(kind, self._environ)
                    self._connections[kind] = _Connection(client)
                except BusUnavailable as exc:
                    log.warning("bus=%s: %s; falling back to systemctl", kind, exc)
                    self._connections[kind] = _Connection(None, str(exc))
            return self._connections[kind].client

    async def _drop(self, kind: Bus, exc: BusUnavailable) -> None:
        log.warning("bus=%s: %s; falling back to systemctl", kind, exc)
        async with self._lock:
            connection = self._connections.get(kind)
            if connection and connection.client:
                connection.client.close()
            self._connections[kind] = _Connection(None, str(exc))

    async def unit_facts(self, unit: str, bus: Bus) -> UnitFacts:
        client = await self._client(bus)
        if client is not None:
            try:
                return await client.facts(unit)
            except BusUnavailable as exc:
                await self._drop(bus, exc)
        return await systemctl_facts(unit, bus)

    async def close(self) -> None:
        for connection in self._connections.values():
            if connection.client is not None:
                connection.client.close()
        self._connections.clear()
