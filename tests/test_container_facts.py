"""The docker actuator's pure parts and its guard against a hostile engine: what an inspect
answer means, the container's cgroup for its own memory pressure (on fixture trees: this host
is hybrid), its keys, and an engine that answers too much, too late, or too old an API (a
Unix-socket server of the test's own)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from prober.actuators.container import (
    MAX_ANSWER,
    ContainerActuator,
    Engine,
    NoAnswer,
    cgroup_of,
    container_name,
    docker_host,
    facts_from_inspect,
)
from prober.core.actuator import RestartResult, Running
from prober.core.config import parse_config
from prober.core.errors import ActuatorFault
from prober.core.psi import Scope
from prober.memory.cgroups import CgroupMounts, read_unit_pressure

pytestmark = pytest.mark.timeout(30)


def _inspect(status: str = "running", **state: Any) -> dict[str, Any]:
    return {"Id": "abc123", "State": {"Status": status, "Pid": 4242,
                                      "StartedAt": "2026-12-07T15:41:56.941011017Z", **state},
            "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}}}


@pytest.mark.parametrize(("status", "extra", "running"), [
    ("running", {}, Running.RUNNING),
    ("running", {"Restarting": True}, Running.STARTING),
    ("restarting", {}, Running.STARTING),
    ("removing", {}, Running.STARTING),
    ("paused", {}, Running.STOPPED),
    ("exited", {}, Running.STOPPED),
    ("created", {}, Running.STOPPED),
    ("dead", {}, Running.STOPPED),
    ("what", {}, Running.STOPPED),
])
def test_the_engines_states_in_neutral_terms(status: str, extra: dict[str, Any],
                                             running: Running) -> None:
    """Running is up; a restart under way is waited for; paused, created, exited or dead is an
    admin's (or compose's) call, never started."""
    facts = facts_from_inspect("web", _inspect(status, **extra)).neutral(judged=False)
    assert facts.running is running
    assert facts.name == "web"


def test_started_at_with_nanoseconds_is_the_startup_grace_origin() -> None:
    facts = facts_from_inspect("web", _inspect()).neutral(judged=False)
    assert facts.since == pytest.approx(1796658116.941011)
    assert facts.main_pid == 4242
    assert facts.detail == ("container web is running (restart policy unless-stopped)")
    zero = facts_from_inspect("web", _inspect(StartedAt="0001-01-01T00:00:00Z"))
    assert zero.started_at is None


def test_unhealthy_fails_it_only_when_judged() -> None:
    health = {"Status": "unhealthy", "FailingStreak": 3,
              "Log": [{"ExitCode": 1, "Output": "pg_isready: no response\n"}]}
    found = facts_from_inspect("db", _inspect(Health=health))
    assert found.neutral(judged=False).failing == ""
    assert found.neutral(judged=True).failing == (
        "container db is unhealthy: its HEALTHCHECK failed 3 times in a row: "
        "pg_isready: no response")
    healthy = facts_from_inspect("db", _inspect(Health={**health, "Status": "healthy"}))
    assert healthy.neutral(judged=True).failing == ""


@pytest.mark.parametrize("answer", [
    None, [], "running", 7, {"State": []}, {"State": {"Status": 5, "Pid": "1", "Health": 3}},
    {"State": {"Status": "running", "Pid": -1, "StartedAt": "yesterday",
               "Health": {"Status": "unhealthy", "Log": "x", "FailingStreak": -2}}},
    {"State": {"Status": "running\n[fake] line", "Pid": 1 << 40,
               "Health": {"Status": "unhealthy", "Log": [{"Output": "x" * 1_000_000}]}}},
], ids=["null", "list", "string", "number", "state-list", "wrong-types", "bad-values",
        "huge-and-forged"])
def test_a_hostile_inspect_answer_is_read_safely(answer: object) -> None:
    """Whatever the engine sends, the facts are of the right types, one line, clipped."""
    found = facts_from_inspect("web", answer)
    facts = found.neutral(judged=True)
    assert isinstance(facts.running, Running)
    assert "\n" not in facts.detail and len(facts.detail) < 400
    assert "\n" not in facts.failing and len(facts.failing) < 400
    assert 0 <= found.pid < 1 << 31
    assert found.failing_streak >= 0


def test_its_own_memory_pressure_is_read_from_its_cgroup(tmp_path: Path) -> None:
    """The container's cgroup v2 path from /proc/PID/cgroup, and its memory.pressure under the
    cgroup2 mount: the pressure hold judges the container, not the host."""
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    scope = "/system.slice/docker-abc123.scope"
    (proc / "4242" / "cgroup").write_text(f"0::{scope}\n")
    cgroup = tmp_path / "cgroup" / scope.strip("/")
    cgroup.mkdir(parents=True)
    (cgroup / "memory.pressure").write_text(
        "some avg10=41.50 avg60=20.00 avg300=5.00 total=1\n"
        "full avg10=10.00 avg60=5.00 avg300=1.00 total=1\n")
    facts = facts_from_inspect("web", _inspect()).neutral(
        judged=False, memory_scope=cgroup_of(4242, str(proc)))
    assert facts.memory_scope == scope
    reading = read_unit_pressure(scope, CgroupMounts(unified=str(tmp_path / "cgroup")))
    assert reading is not None
    assert (reading.scope, reading.pressure.some_avg10) == (Scope.UNIT, 41.5)


@pytest.mark.parametrize("text", ["0::/\n", "4:memory:/docker/abc\n", "", "0::relative\n"],
                         ids=["root", "v1-only", "empty", "relative"])
def test_no_cgroup_of_its_own_means_the_hosts_pressure(tmp_path: Path, text: str) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(text)
    assert cgroup_of(7, str(tmp_path)) is None
    assert cgroup_of(8, str(tmp_path)) is None  # gone
    assert cgroup_of(0, str(tmp_path)) is None


@pytest.mark.parametrize(("value", "expected"), [
    ("mastodon-web-1", "mastodon-web-1"), ("/db", "db"), ("w_2.x", "w_2.x")])
def test_container_names(value: str, expected: str) -> None:
    assert container_name(value) == expected


@pytest.mark.parametrize("value", ["", "-web", "web/1", "a b", "x" * 300, 3])
def test_bad_container_names(value: object) -> None:
    with pytest.raises(ValueError, match="container name"):
        container_name(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("unix:///run/podman/podman.sock", "unix:///run/podman/podman.sock"),
    ("/var/run/docker.sock", "unix:///var/run/docker.sock")])
def test_docker_host(value: str, expected: str) -> None:
    assert docker_host(value) == expected


@pytest.mark.parametrize("value", ["tcp://127.0.0.1:2375", "unix://relative", "", "docker.sock"])
def test_docker_host_is_a_unix_socket(value: str) -> None:
    with pytest.raises(ValueError, match="not a Unix socket address"):
        docker_host(value)


# --- a hostile engine -------------------------------------------------------------------------

Handler = Callable[[bytes], bytes | None]  # request head -> raw answer, or None: never answer


@contextlib.asynccontextmanager
async def fake_engine(handler: Handler) -> AsyncIterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="engine-"))
    path = str(folder / "docker.sock")
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            answer = handler(head)
            if answer is not None:
                writer.write(answer)
                await writer.drain()
                writer.close()

    server = await asyncio.start_unix_server(serve, path)
    try:
        yield path
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        Path(path).unlink(missing_ok=True)
        folder.rmdir()


def _http(body: bytes, status: str = "200 OK") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: "
            f"{len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _engine_saying(version: bytes, inspect: bytes | None) -> Handler:
    def handler(head: bytes) -> bytes | None:
        if b" /v1.40/_ping " in head:
            return _http(b"OK")
        if b" /v1.40/version " in head:
            return _http(version)
        return inspect
    return handler


async def _inspect_through(handler: Handler) -> None:
    async with fake_engine(handler) as path:
        engine = Engine(path)
        try:
            await engine.inspect("web")
        finally:
            await engine.close()


def test_an_api_too_old_is_a_prober_fault() -> None:
    with pytest.raises(ActuatorFault, match=r"speaks API 1\.30; prober needs 1\.40 or later"):
        asyncio.run(_inspect_through(_engine_saying(b'{"ApiVersion": "1.30"}', None)))


def test_an_answer_too_large_is_refused() -> None:
    huge = _http(b'{"Id": "' + b"x" * (MAX_ANSWER + 10) + b'"}')
    with pytest.raises(ActuatorFault, match="answer is over"):
        asyncio.run(_inspect_through(_engine_saying(b'{"ApiVersion": "1.41"}', huge)))


def test_an_engine_that_never_answers_is_given_up_on() -> None:
    """A hung engine costs CALL_TIMEOUT per call, then a clear reason."""
    async def hung() -> None:
        async with fake_engine(lambda head: None) as path:
            engine = Engine(path)
            try:
                await engine.call("GET", "/_ping", timeout=0.3)
            finally:
                await engine.close()

    with pytest.raises(NoAnswer, match="did not answer GET /_ping within"):
        asyncio.run(hung())


def test_an_unknown_container_is_a_prober_fault() -> None:
    """Mid-`compose up` the name is briefly unknown: prober's to wait out, not a restart."""
    missing = _http(b'{"message": "no such container"}', "404 Not Found")
    with pytest.raises(ActuatorFault, match="has no container web"):
        asyncio.run(_inspect_through(_engine_saying(b'{"ApiVersion": "1.41"}', missing)))


def test_no_socket_is_a_prober_fault(tmp_path: Path) -> None:
    async def absent() -> None:
        engine = Engine(str(tmp_path / "docker.sock"))
        try:
            await engine.inspect("web")
        finally:
            await engine.close()

    with pytest.raises(ActuatorFault, match="no container engine answers at"):
        asyncio.run(absent())


def _restart_through(inspect: Callable[[list[bytes]], bytes]) -> tuple[RestartResult,
                                                                       list[bytes]]:
    """The docker actuator's restart of container web against a fake engine that answers its
    ping, its version and a restart, and each inspect with `inspect(the paths asked so far)`;
    the result, and the paths it asked."""
    asked: list[bytes] = []

    def handler(head: bytes) -> bytes | None:
        asked.append(head.split(b" ")[1])
        if b" /v1.40/_ping " in head:
            return _http(b"OK")
        if b" /v1.40/version " in head:
            return _http(b'{"ApiVersion": "1.41"}')
        if b"/restart?t=" in head:
            return _http(b"", "204 No Content")
        return inspect(asked)

    async def run() -> RestartResult:
        async with fake_engine(handler) as path:
            config = parse_config({"docker_host": path, "target": [
                {"name": "web", "url": "http://127.0.0.1:1/", "container": "web"}]})
            actuator = ContainerActuator()
            try:
                return await actuator.restart(config.targets[0])
            finally:
                await actuator.close()

    return asyncio.run(run()), asked


def test_a_restart_done_but_not_verified_is_a_failed_restart_not_a_fault() -> None:
    """The engine restarted it, then lost it (compose recreating it at that moment): the
    restart was done, so it counts, as a failed one; never a prober fault that counts nothing."""
    inspected = json.dumps(_inspect()).encode()

    def inspect(asked: list[bytes]) -> bytes:
        seen = sum(1 for path in asked if path.endswith(b"/json"))
        return _http(inspected) if seen == 1 else _http(b'{"message": "no such"}', "404 No")

    result, asked = _restart_through(inspect)
    assert not result.ok
    assert result.detail.startswith("restarted, then not verified: the engine at "), result
    assert b"/v1.40/containers/abc123/restart?t=10" in asked


@pytest.mark.parametrize("body", [
    b"<html><body>502 Bad Gateway</body></html>", b'{"Id": "abc123", "State": {"Stat', b"",
    b"null", b"[]", b'{"Id": "abc123"}', b'{"Id": "abc123", "State": {"Status": 5}}',
    b'{"Id": "abc123", "State": {"Status": ""}}', b'{"State": {"Status": "running"}}',
    b'{"Id": "", "State": {"Status": "running"}}',
    b'{"Id": "../../abc", "State": {"Status": "running"}}',
    b'{"Id": 7, "State": {"Status": "running"}}',
], ids=["html", "truncated", "empty", "null", "list", "no-state", "status-number",
        "status-empty", "no-id", "empty-id", "id-path", "id-number"])
def test_an_answer_that_is_not_a_container_is_a_prober_fault(body: bytes) -> None:
    """A proxy's error page or a cut answer with HTTP 200 is the engine's problem: never read
    as a stopped container blamed on it, never an empty id in a restart's path."""
    with pytest.raises(ActuatorFault, match="answered the inspect of web with what is not a "
                                            "container"):
        asyncio.run(_inspect_through(_engine_saying(b'{"ApiVersion": "1.41"}', _http(body))))


@pytest.mark.parametrize("status", ["exited", "created", "paused", "dead"])
def test_a_container_stopped_since_its_facts_is_not_restarted(status: str) -> None:
    """An admin's `docker stop` between the run's facts and its restart: Docker's restart
    would start it; prober asks for none, and says it found the container stopped."""
    inspected = _http(json.dumps(_inspect(status, Pid=0)).encode())
    result, asked = _restart_through(lambda asked: inspected)
    assert result == RestartResult(False, f"container web is {status} (restart policy "
                                          "unless-stopped): stopped since it was judged, not "
                                          "restarted", stopped=True), result
    assert not [path for path in asked if b"/restart" in path], asked
