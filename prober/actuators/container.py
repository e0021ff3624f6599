"""The container actuator ("docker", for the API it speaks): its `container` key, its facts in
neutral terms, and everything about talking to a Docker-compatible engine (Docker, podman's
`system service`) over its Unix socket.

It speaks the Docker Engine API with httpx's Unix-socket transport, no Docker SDK. What the
engine answers is hostile input like any other: every call ends within CALL_TIMEOUT (a restart
within the target's restart_timeout), every answer is read up to MAX_ANSWER bytes, and what it
says is checked for type before use. What prober cannot do through its own fault (no socket, no
permission, an API too old, a container briefly unknown while compose recreates it) is an
`ActuatorFault`: the run says `prober-fault` and restarts nothing.

A container's state in prober is keyed by its name, not its id: compose recreating it (a new
id, a new StartedAt) keeps its history and budgets. One that is `exited` or `created` (stopped
by an admin or by compose) or `paused` is never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prober.core.actuator import ActuatorKind, Facts, RestartResult, Running
from prober.core.config import Config, Target
from prober.core.errors import ActuatorFault
from prober.core.keys import Key, Shape, boolean, duration, format_duration, typed
from prober.core.text import one_line, os_reason, reason

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("prober")

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
API_VERSION = "1.40"  # Docker 19.03; every path below is asked as /v1.40/...
CALL_TIMEOUT = 5.0  # one API round trip but a restart; an engine answers in milliseconds
MAX_ANSWER = 1 << 20  # an inspect answer with many labels and env entries stays far below
SIGNAL_WAIT = 1.0  # after signal_before_restart, time for a core dump or thread dump to start
VERIFY_POLL = 0.1
DEFAULT_STOP_TIMEOUT = 10.0  # Docker's own default `t`
PROC = "/proc"
_CGROUP_LIMIT = 64 << 10

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_ID = re.compile(r"[0-9a-f]{1,128}")

# The endpoints prober uses, for a socket proxy's allow list (docs/operating.md lists them).
ENDPOINTS = ("GET /_ping", "GET /version", "GET /containers/{name}/json",
             "POST /containers/{id}/restart", "POST /containers/{id}/kill")


def container_name(value: object) -> str:
    """A container's name as the engine spells it (compose v2: `PROJECT-SERVICE-1`)."""
    name = typed(value, str, 'a container name like "mastodon-web-1"').removeprefix("/")
    if not _NAME.match(name):
        raise ValueError(f'"{value}" is not a container name (letters, digits, "_", ".", "-", '
                         "starting with a letter or digit)")
    return name


def docker_host(value: object) -> str:
    """The engine's socket: `unix:///run/docker.sock` (the DOCKER_HOST convention) or a path."""
    text = typed(value, str, 'a "unix:///path" address')
    path = text.removeprefix("unix://")
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f'"{value}" is not a Unix socket address (expected '
                         f'"{DEFAULT_DOCKER_HOST}"; only unix:// is supported)')
    return f"unix://{path}"


def _socket_of(target: Target) -> str:
    host: str = dict(target.actuation).get("docker_host", DEFAULT_DOCKER_HOST)
    return host.removeprefix("unix://")


def _setting(target: Target, name: str, default: Any) -> Any:
    return dict(target.actuation).get(name, default)


def judges_health(target: Target) -> bool:
    return bool(_setting(target, "container_health", False))


def _stop_timeout(target: Target) -> float:
    return float(_setting(target, "stop_timeout", DEFAULT_STOP_TIMEOUT))


def fits(target: Target) -> str | None:
    """A restart's stop must leave room for its start within restart_timeout: a container
    that ignores SIGTERM would otherwise still be stopping when prober stops waiting, and no
    restart of it could ever be verified."""
    stop, budget = _stop_timeout(target), target.policy.restart_timeout
    if stop < budget:
        return None
    return (f"stop_timeout: {format_duration(stop)} is not below restart_timeout "
            f"{format_duration(budget)}, which bounds the whole restart, stop and start "
            "(lower stop_timeout or raise restart_timeout)")


def _access(config: Config, user: str) -> str:
    """The sockets prober's user must be able to read and write, as no polkit rule grants."""
    sockets = sorted({_socket_of(t) for t in config.targets if t.actuator == ACTUATOR.name})
    if not sockets:
        return ""
    return (f"containers are restarted through {', '.join(sockets)}: {user} needs read and "
            "write access to it, a socket proxy's (recommended) or the engine's own through the "
            "docker group (docs/operating.md, Containers)")


# --- what the engine says -----------------------------------------------------------------------


def _epoch(value: object) -> float | None:
    """RFC 3339 with nanoseconds, as the engine writes StartedAt; None for its zero time."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", value)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        at = dt.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return at.timestamp() + (int(fraction[:6].ljust(6, "0")) / 1e6 if fraction else 0.0)


def _text(value: object, limit: int = 200) -> str:
    """A string the engine sent, as one clipped line; "" for anything else."""
    return one_line(reason(value[:4 * limit]))[:limit] if isinstance(value, str) else ""


def _table(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ContainerFacts:
    """What the engine says about a container. Times are epoch seconds."""

    name: str
    id: str
    status: str  # created, running, paused, restarting, removing, exited, dead
    restarting: bool = False
    started_at: float | None = None
    started_raw: str = ""  # StartedAt as written: a restart changes it
    pid: int = 0
    health: str = ""  # starting, healthy, unhealthy, "" (no HEALTHCHECK)
    failing_streak: int = 0
    health_output: str = ""  # the last check's output, clipped
    restart_policy: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running" and not self.restarting

    def describe(self) -> str:
        extras = [f"health {self.health}"] if self.health else []
        if self.restart_policy:
            extras.append(f"restart policy {self.restart_policy}")
        more = f" ({', '.join(extras)})" if extras else ""
        return f"container {self.name} is {self.status}{more}"

    def unhealthy(self) -> str:
        """Why its HEALTHCHECK fails it, or "" while it passes or it has none."""
        if self.health != "unhealthy":
            return ""
        said = f": {self.health_output}" if self.health_output else ""
        return (f"container {self.name} is unhealthy: its HEALTHCHECK failed "
                f"{self.failing_streak} times in a row{said}")

    def neutral(self, *, judged: bool, memory_scope: str | None = None) -> Facts:
        """The facts the policy judges: restarting is a job under way, running is up; paused,
        created, exited or dead is an admin's (or compose's) call, never started by prober."""
        if self.restarting or self.status in ("restarting", "removing"):
            running = Running.STARTING
        elif self.status == "running":
            running = Running.RUNNING
        else:
            running = Running.STOPPED
        return Facts(self.name, running, self.describe(), since=self.started_at,
                     main_pid=self.pid, memory_scope=memory_scope,
                     failing=self.unhealthy() if judged else "")


def facts_from_inspect(name: str, answer: object) -> ContainerFacts:
    """ContainerFacts from GET /containers/{name}/json, whatever its shape."""
    data = _table(answer)
    state = _table(data.get("State"))
    health = _table(state.get("Health"))
    checks = health.get("Log")
    last = _table(checks[-1]) if isinstance(checks, list) and checks else {}
    policy = _table(_table(data.get("HostConfig")).get("RestartPolicy"))
    pid, streak = state.get("Pid"), health.get("FailingStreak")
    started = state.get("StartedAt")
    return ContainerFacts(
        name=name,
        id=_text(data.get("Id"), 128),
        status=_text(state.get("Status"), 32) or "unknown",
        restarting=state.get("Restarting") is True,
        started_at=_epoch(started),
        started_raw=_text(started, 64),
        pid=pid if isinstance(pid, int) and 0 < pid < 1 << 31 else 0,
        health=_text(health.get("Status"), 32),
        failing_streak=streak if isinstance(streak, int) and streak >= 0 else 0,
        health_output=_text(last.get("Output")),
        restart_policy=_text(policy.get("Name"), 32),
    )


def cgroup_of(pid: int, proc: str = PROC) -> str | None:
    """The cgroup v2 path of a process (the `0::` line of /proc/PID/cgroup), for its own
    memory.pressure; None where it cannot be read or is the root."""
    if pid <= 0:
        return None
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as handle:
            text = handle.read(_CGROUP_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::/") and line != "0::/":
            return line[3:]
    return None


# --- the engine's API ---------------------------------------------------------------------------


def _cause_errno(exc: BaseException) -> int | None:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def _unreachable(path: str, exc: BaseException) -> ActuatorFault:
    code = _cause_errno(exc)
    if code in (errno.ENOENT, errno.ECONNREFUSED):
        return ActuatorFault(f"no container engine answers at {path}: {os_reason(exc)}",
                             "is the engine running? `docker_host` names its socket")
    if code in (errno.EACCES, errno.EPERM):
        return ActuatorFault(f"prober may not use the engine's socket {path}: permission denied",
                             "see docs/operating.md, least privilege: the docker group or a "
                             "socket proxy")
    if isinstance(exc, TimeoutError):
        return ActuatorFault(f"the container engine at {path} did not answer within "
                             f"{format_duration(CALL_TIMEOUT)}")
    why = reason(str(exc)) or type(exc).__name__
    return ActuatorFault(f"the container engine at {path} failed: {why}")


class NoAnswer(ActuatorFault):
    """The engine took the request and did not answer within its time."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: object  # parsed JSON, or None


class Engine:
    """One engine's API over its Unix socket, checked once (`/_ping`, the API version)."""

    def __init__(self, path: str) -> None:
        import httpx

        self.path = path
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path, retries=0),
            base_url=f"http://docker/v{API_VERSION}", timeout=CALL_TIMEOUT)
        self._checked = False

    async def call(self, method: str, path: str, *, timeout: float = CALL_TIMEOUT,
                   params: Mapping[str, str] | None = None) -> Answer:
        """One request, all of it within `timeout`, its answer read up to MAX_ANSWER bytes."""
        import httpx

        try:
            async with asyncio.timeout(timeout):
                request = self._client.build_request(
                    method, path, params=params,
                    timeout=httpx.Timeout(timeout))
                response = await self._client.send(request, stream=True)
                try:
                    body = await _read_bounded(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise NoAnswer(f"the container engine at {self.path} did not answer "
                                f"{method} {path} within {format_duration(timeout)}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise _unreachable(self.path, exc) from None
        return Answer(response.status_code, body)

    async def check(self) -> None:
        """Once: the engine answers `/_ping` and speaks API_VERSION or later."""
        if self._checked:
            return
        ping = await self.call("GET", "/_ping")
        if ping.status != 200:
            raise ActuatorFault(f"the container engine at {self.path} answered /_ping with "
                                f"HTTP {ping.status}")
        version = await self.call("GET", "/version")
        said = _table(version.body).get("ApiVersion")
        if not isinstance(said, str) or _api_tuple(said) < _api_tuple(API_VERSION):
            raise ActuatorFault(f"the container engine at {self.path} speaks API "
                                f"{_text(said, 16) or 'unknown'}; prober needs {API_VERSION} or "
                                "later (Docker 19.03, podman 3)")
        self._checked = True

    async def inspect(self, name: str) -> ContainerFacts:
        await self.check()
        answer = await self.call("GET", f"/containers/{name}/json")
        if answer.status == 404:
            raise ActuatorFault(f"the engine at {self.path} has no container {name} (being "
                                "recreated, or the name is wrong)",
                                "`docker ps -a` lists the names; compose v2's are "
                                "PROJECT-SERVICE-1")
        if answer.status != 200:
            raise ActuatorFault(f"the engine at {self.path} could not inspect {name}: "
                                f"HTTP {answer.status}{_message(answer.body)}")
        if not _is_container(answer.body):
            raise ActuatorFault(f"the engine at {self.path} answered the inspect of {name} "
                                "with what is not a container")
        return facts_from_inspect(name, answer.body)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _is_container(body: object) -> bool:
    """An inspect answer with a state and an id: not a proxy's error page, not cut short."""
    data = _table(body)
    status, found = _table(data.get("State")).get("Status"), data.get("Id")
    return isinstance(status, str) and bool(status) and isinstance(found, str) \
        and _ID.fullmatch(found) is not None


def _api_tuple(text: str) -> tuple[int, ...]:
    parts = text.split(".")
    return tuple(int(p) for p in parts[:3]) if all(p.isdigit() for p in parts) else (0,)


def _message(body: object) -> str:
    said = _text(_table(body).get("message"))
    return f": {said}" if said else ""


async def _read_bounded(response: httpx.Response) -> object:
    chunks, size = [], 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_ANSWER:
            raise ActuatorFault(f"the container engine's answer is over {MAX_ANSWER} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# --- the actuator the check uses ----------------------------------------------------------------


class ContainerActuator:
    """The `actuator.Actuator` for containers: one Engine per socket, made when first asked."""

    def __init__(self, proc: str = PROC) -> None:
        self._engines: dict[str, Engine] = {}
        self._proc = proc

    def _engine(self, target: Target) -> Engine:
        path = _socket_of(target)
        if path not in self._engines:
            self._engines[path] = Engine(path)
        return self._engines[path]

    async def facts(self, target: Target) -> Facts:
        assert target.unit is not None
        found = await self._engine(target).inspect(target.unit)
        return found.neutral(judged=judges_health(target),
                             memory_scope=cgroup_of(found.pid, self._proc))

    async def restart(self, target: Target) -> RestartResult:
        name = target.unit
        assert name is not None
        engine = self._engine(target)
        started = time.monotonic()
        before = await engine.inspect(name)
        if before.neutral(judged=False).running is Running.STOPPED:  # an admin's stop since
            return RestartResult(False, f"{before.describe()}: stopped since it was judged, "
                                        "not restarted", before.pid, stopped=True)
        if target.policy.signal_before_restart:
            await self._signal(engine, before, target.policy.signal_before_restart)
        stop = _stop_timeout(target)
        budget = target.policy.restart_timeout
        left = max(1.0, budget - (time.monotonic() - started))
        try:
            answer = await engine.call("POST", f"/containers/{before.id}/restart",
                                       params={"t": str(int(stop))}, timeout=left)
        except NoAnswer:
            return RestartResult(False, f"no answer within restart_timeout "
                                        f"{format_duration(budget)}", before.pid)
        if answer.status == 404:
            raise ActuatorFault(f"container {name} went away before its restart")
        if answer.status not in (200, 204):
            return RestartResult(False, f"the engine refused: HTTP {answer.status}"
                                        f"{_message(answer.body)}", before.pid)
        try:
            after = await self._restarted(engine, before, started + budget)
        except ActuatorFault as exc:  # asked and done: counted, though not verified
            return RestartResult(False, f"restarted, then not verified: {exc}", before.pid)
        elapsed = time.monotonic() - started
        pids = f", pid {before.pid} -> {after.pid}"
        if not after.running or after.started_raw == before.started_raw:
            return RestartResult(False, f"{after.describe()} after the restart, in "
                                        f"{elapsed:.2f}s{pids}", before.pid, after.pid)
        return RestartResult(True, f"container restarted in {elapsed:.2f}s{pids}",
                             before.pid, after.pid)

    async def _restarted(self, engine: Engine, before: ContainerFacts,
                         deadline: float) -> ContainerFacts:
        """The container after its restart: running with a new StartedAt, or as it is when
        the deadline comes."""
        while True:
            after = await engine.inspect(before.name)
            done = after.running and after.started_raw != before.started_raw
            if done or time.monotonic() >= deadline:
                return after
            await asyncio.sleep(VERIFY_POLL)

    async def _signal(self, engine: Engine, before: ContainerFacts, name: str) -> None:
        try:
            answer = await engine.call("POST", f"/containers/{before.id}/kill",
                                       params={"signal": name})
        except ActuatorFault as exc:
            log.warning("container=%s: could not send %s: %s", before.name, name, exc)
            return
        if answer.status not in (200, 204):
            log.warning("container=%s: could not send %s: HTTP %d%s", before.name, name,
                        answer.status, _message(answer.body))
            return
        log.warning("container=%s: sent %s before restarting, for evidence", before.name, name)
        await asyncio.sleep(SIGNAL_WAIT)

    async def close(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await engine.close()


KEYS = (
    Key("container", Shape.NAME, container_name,
        "container to restart, by its name (compose v2: `PROJECT-SERVICE-1`); its history "
        "and budgets stay with the name when compose recreates it"),
    Key("container_health", Shape.BOOLEAN, boolean,
        "the container's own HEALTHCHECK counts: Docker's `unhealthy` is a failure of the "
        "target", default="false", in_defaults=True),
    Key("stop_timeout", Shape.DURATION, duration(0.0),
        "a restart's stop waits this long after SIGTERM before SIGKILL (Docker's `t`); "
        "below `restart_timeout`",
        default="10s", in_defaults=True),
)

TOP_KEYS = (
    Key("docker_host", Shape.PATH, docker_host,
        "the container engine's socket, as `DOCKER_HOST` spells it (`unix:///...`); podman's "
        "rootful one is `unix:///run/podman/podman.sock`", default=DEFAULT_DOCKER_HOST),
)

ACTUATOR = ActuatorKind(name="docker", keys=KEYS, make=ContainerActuator,
                        top_keys=TOP_KEYS, judges=judges_health, check=fits,
                        access=_access)
