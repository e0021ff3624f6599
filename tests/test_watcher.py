"""The watcher in process: the state written only when it changed, other writers respected,
reload, and a stop in the middle of a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prober.core import tracker
from prober.core.actuator import Facts, RestartResult, Running
from prober.core.config import Config, Target
from prober.core.errors import ConfigError
from prober.core.runs import RunReport, Skipped
from prober.core.tracker import Event
from prober.io.configfiles import load_config
from prober.shell.state import StateStore
from prober.shell.watcher import Watcher
from tests.support.servers import Listening, Server, answer, health, serve, serving
from tests.test_run import FakeActuator

pytestmark = pytest.mark.timeout(60)


@dataclass
class HangingActuator:
    """Says every unit is active; its restarts are asked for and never answered."""

    asked: list[str] = field(default_factory=list)

    async def facts(self, target: Target) -> Facts:
        unit = target.unit or ""
        return Facts(unit, Running.RUNNING, f"{unit} is active (running)", since=0.0, main_pid=7)

    async def restart(self, target: Target) -> RestartResult:
        assert target.unit is not None
        self.asked.append(target.unit)
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async def close(self) -> None:
        return None


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(health()) as server:
        yield server


def write_config(path: Path, *targets: str, threshold: int = 1) -> None:
    path.write_text(
        f'[defaults]\ntimeout = "1s"\nfailure_threshold = {threshold}\nstartup_grace = "0s"\n'
        + "".join(f"[[target]]\n{t}\n" for t in targets))


def loader(path: Path) -> Config:
    return load_config(str(path), insecure=True)


def in_one_loop(*steps: Callable[[], Awaitable[None] | None]) -> None:
    """Run the steps in order in one event loop (the watcher's contexts belong to it)."""
    async def main() -> None:
        for step in steps:
            outcome = step()
            if outcome is not None:
                await outcome

    asyncio.run(main())


def test_healthy_cycles_do_not_rewrite_the_state(tmp_path: Path, web: Server) -> None:
    """Cycles in which nothing changes leave the state file alone and touch the heartbeat;
    a change is written at once."""
    config = tmp_path / "prober.toml"
    write_config(config, f'name = "web"\nurl = "{web.url("/health")}"')
    store = StateStore(str(tmp_path / "state.json"))
    reports: list[RunReport | Skipped] = []
    watcher = Watcher(lambda: loader(config), store, None, interval=0.01,
                      on_report=lambda result, _: reports.append(result))
    seen: dict[str, object] = {}

    def note() -> None:
        seen["written"], seen["beat"] = store.signature(), store.beat_path.stat().st_mtime_ns

    def check_untouched() -> None:
        assert len(reports) == 6 and store.signature() == seen["written"]
        assert store.beat_path.stat().st_mtime_ns > int(str(seen["beat"]))
        assert watcher.state.get("web").consecutive_passes == 6  # kept in memory all along
        web.handler = answer(500, b"broken")

    in_one_loop(lambda: watcher.run(1), note, lambda: watcher.run(5), check_untouched,
                lambda: watcher.run(1))
    assert store.signature() != seen["written"]
    assert store.load().get("web").health.value == "down"


def test_changes_by_other_processes_are_read_not_overwritten(tmp_path: Path,
                                                             web: Server) -> None:
    """A pause written by another process between cycles is picked up by the next cycle, and
    the watcher's own writes keep it."""
    config = tmp_path / "prober.toml"
    write_config(config, f'name = "web"\nurl = "{web.url("/health")}"\nunit = "web"')
    store = StateStore(str(tmp_path / "state.json"))
    watcher = Watcher(lambda: loader(config), store, None, interval=0.01)
    def pause_elsewhere() -> None:
        with store.locked():
            store.save(tracker.pause(store.load(), ["web"], 4_000_000_000.0, "upgrading", 1.0))
        web.handler = answer(500, b"broken")

    in_one_loop(lambda: watcher.run(1), pause_elsewhere, lambda: watcher.run(2))
    assert watcher.report is not None
    assert watcher.report.targets[0].decision.action.value == "paused"
    assert store.load().get("web").paused_reason == "upgrading"


def prober_cli(config: Path, state: Path, *args: str) -> None:
    """Run the real `prober` command on `config` and `state`, as an operator or cron would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROBER_", "NOTIFY_"))}
    env.update({"PROBER_CONFIG": str(config), "PROBER_STATE": str(state),
                "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={state.parent}/no-bus"})
    done = subprocess.run([sys.executable, "-m", "prober", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: the target is failing


@pytest.mark.parametrize(
    ("before", "between", "failures", "events"),
    [
        ([], ["reset", "web"], 1, ["failing", "reset", "failing"]),
        (["pause", "web", "--reason", "upgrading"], ["resume", "web"], 1,
         ["paused", "resumed", "failing"]),
        ([], ["check"], 3, ["failing"]),
    ],
    ids=["reset", "resume", "cron-check"],
)
def test_other_writers_between_cycles_are_kept(tmp_path: Path, before: list[str],
                                               between: list[str], failures: int,
                                               events: list[str]) -> None:
    """The real `prober reset`, `prober resume` or a one-shot `prober check` (the cron
    fallback) writes the state between two watcher cycles: the watcher's next cycle starts
    from what they wrote, and its own write keeps their change."""
    config, state = tmp_path / "prober.toml", tmp_path / "state.json"
    with serve(answer(500, b"broken")) as broken:
        write_config(config, f'name = "web"\nurl = "{broken.url("/")}"', threshold=10)
        if before:
            prober_cli(config, state, *before)
        store = StateStore(str(state), keep_lock_file_open=True)
        watcher = Watcher(lambda: loader(config), store, None, interval=0.01)
        in_one_loop(lambda: watcher.run(1), lambda: prober_cli(config, state, *between),
                    lambda: watcher.run(1))
    web = store.load().get("web")
    assert (web.consecutive_failures, web.paused_until) == (failures, None)
    assert [t.event.value for t in web.history] == events
    assert watcher.state.get("web") == web


def test_reload_swaps_a_valid_config_and_keeps_the_old_on_a_bad_one(
        tmp_path: Path, web: Server, caplog: pytest.LogCaptureFixture) -> None:
    """A reload with a valid config prunes removed targets and probes the new ones; a bad
    config is refused in one error line and the previous one keeps running."""
    config = tmp_path / "prober.toml"
    write_config(config, f'name = "old"\nurl = "{web.url("/health")}"')
    store = StateStore(str(tmp_path / "state.json"))
    watcher = Watcher(lambda: loader(config), store, None, interval=0.01)
    def rename() -> None:
        write_config(config, f'name = "new"\nurl = "{web.url("/health")}"')
        watcher.request_reload()

    def check_renamed() -> None:
        assert watcher.config.names == ("new",)
        assert set(store.load().targets) == {"new"}
        config.write_text("[[target]]\nname = 'broken'\n")
        watcher.request_reload()

    with caplog.at_level(logging.ERROR, logger="prober"):
        in_one_loop(lambda: watcher.run(1), rename, lambda: watcher.run(2), check_renamed,
                    lambda: watcher.run(2))
    assert watcher.config.names == ("new",)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "reload: keeping the previous config" in errors[0]


@pytest.mark.parametrize("how", ["stop", "sigterm"])
def test_stop_during_a_restart_records_it_as_asked(tmp_path: Path, how: str) -> None:
    """Stopping the watcher while systemd has a restart to do, by stop() or by a real SIGTERM to
    this process (taken by the handlers the watcher installs on its loop), ends the run at once
    and records the restart as asked, its outcome unknown: it counts against budget and
    cooldown."""
    config = tmp_path / "prober.toml"
    unhandled: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: unhandled.append(signum))
    try:
        with serve(answer(500, b"broken")) as broken:
            write_config(config, f'name = "web"\nurl = "{broken.url("/")}"\nunit = "web"')
            store = StateStore(str(tmp_path / "state.json"))
            actuator = HangingActuator()
            watcher = Watcher(lambda: loader(config), store, lambda: actuator, interval=0.01)

            async def stop_once_asked() -> None:
                task = asyncio.ensure_future(watcher.run())
                while not actuator.asked:
                    await asyncio.sleep(0.01)
                if how == "stop":
                    watcher.stop()
                else:
                    os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(task, 2)

            asyncio.run(stop_once_asked())
    finally:
        signal.signal(signal.SIGTERM, before)
    assert unhandled == []  # with SIGTERM: the watcher's handler took it, not the stand-in above
    web = store.load().get("web")
    assert actuator.asked == ["web.service"]
    assert (web.restarts_total, len(web.restarts)) == (1, 1)
    assert web.last_restart_at is not None
    assert web.history[-1].event is Event.RESTART
    assert "outcome" not in web.history[-1].reason and "stopped" in web.history[-1].reason


class _KeepAlive(BaseHTTPRequestHandler):
    """HTTP/1.1 that keeps the connection open for the next request, unless told to close."""

    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle client's connection ends, and its thread with it
    server: KeepAliveServer

    def do_GET(self) -> None:
        self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: object) -> None:
        return None


class KeepAliveServer(ThreadingHTTPServer):
    """A loopback HTTP/1.1 server with keep-alive, counting the connections it accepted."""

    daemon_threads = False  # server_close() joins every connection's thread

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _KeepAlive)
        self.accepted = 0
        self.requests = 0

    def get_request(self) -> tuple[socket.socket, object]:
        accepted = super().get_request()
        self.accepted += 1
        return accepted

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/health"


def test_every_probe_opens_a_fresh_connection(tmp_path: Path) -> None:
    """Against a server that would keep the connection for the next request (as a plain
    HTTP/1.1 client finds), the watcher opens one connection per probe, cycle after cycle."""
    import httpx

    config = tmp_path / "prober.toml"
    with serving(KeepAliveServer()) as server:
        with httpx.Client(trust_env=False) as client:
            assert [client.get(server.url).text for _ in range(2)] == ["OK", "OK"]
        assert (server.accepted, server.requests) == (1, 2)  # it does keep connections
        write_config(config, f'name = "web"\nurl = "{server.url}"')
        watcher = Watcher(lambda: loader(config), StateStore(str(tmp_path / "state.json")),
                          None, interval=0.01)
        in_one_loop(lambda: watcher.run(5))
        assert watcher.state.get("web").consecutive_passes == 5
        assert (server.accepted, server.requests) == (1 + 5, 2 + 5)


def test_a_bad_config_at_start_is_a_config_error(tmp_path: Path) -> None:
    """The watcher refuses to start on a config that does not load."""
    config = tmp_path / "prober.toml"
    config.write_text("[[target]]\nname = 'x'\n")
    with pytest.raises(ConfigError):
        Watcher(lambda: loader(config), StateStore(str(tmp_path / "s.json")), None)


def test_the_watcher_serves_its_page_and_metrics_and_follows_a_reload(tmp_path: Path,
                                                                      web: Server) -> None:
    """With `listen`, the running watcher answers /metrics, /status.json and the page from
    what it knows; a reload that moves `listen` moves the server; stopping closes it."""
    import httpx

    config = tmp_path / "prober.toml"
    config.write_text(f'listen = "127.0.0.1:{free_port()}"\n[[target]]\nname = "web"\n'
                      f'url = "{web.url("/health")}"\n')
    store = StateStore(str(tmp_path / "state.json"))
    watcher = Watcher(lambda: loader(config), store, None, interval=0.05)
    seen: dict[str, str] = {}

    async def scenario() -> None:
        task = asyncio.ensure_future(watcher.run())
        while watcher.report is None:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(trust_env=False) as client:
            first = watcher.listen
            assert first is not None
            base = f"http://127.0.0.1:{first[1]}"
            seen["metrics"] = (await client.get(f"{base}/metrics")).text
            seen["status"] = (await client.get(f"{base}/status.json")).text
            seen["page"] = (await client.get(f"{base}/")).text
            moved = free_port()
            config.write_text(config.read_text().replace(str(first[1]), str(moved)))
            watcher.request_reload()
            while watcher.listen != ("127.0.0.1", moved):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            seen["moved"] = (await client.get(f"http://127.0.0.1:{moved}/metrics")).text
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{base}/metrics")
            watcher.stop()
            await asyncio.wait_for(task, 5)
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{moved}/metrics")

    asyncio.run(scenario())
    assert 'prober_probe_success{container="",target="web",unit=""} 1.0' in seen["metrics"]
    assert '"name": "web"' in seen["status"] and "<html" in seen["page"].lower()
    assert "prober_interval_seconds" in seen["moved"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_watchdog_pings_during_a_run_until_its_deadline(tmp_path: Path) -> None:
    """A run slower than the watchdog's ping interval keeps it fed, but only until the run's
    deadline: a run stuck past it (here, a restart that never ends) lets the watchdog fire."""
    import socket

    config = tmp_path / "prober.toml"
    with serve(answer(500, b"broken")) as broken, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        sd.bind(str(tmp_path / "notify"))
        sd.setblocking(False)
        config.write_text('[defaults]\ntimeout = "1s"\nfailure_threshold = 1\n'
                          'startup_grace = "0s"\nrestart_timeout = "1s"\nverify_timeout = "0s"\n'
                          f'[[target]]\nname = "web"\nurl = "{broken.url("/")}"\nunit = "web"\n')
        actuator = HangingActuator()
        watcher = Watcher(lambda: loader(config), StateStore(str(tmp_path / "s.json")),
                          lambda: actuator, interval=0.01)
        deadline = watcher.config.run_deadline
        pings: list[float] = []

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            started = loop.time()
            run = asyncio.ensure_future(watcher._one_run(0.2))
            while loop.time() - started < deadline + 1.5:
                await asyncio.sleep(0.01)
                with contextlib.suppress(BlockingIOError):
                    if b"WATCHDOG=1" in sd.recv(4096):
                        pings.append(loop.time() - started)
            assert not run.done() and actuator.asked  # stuck in the restart
            watcher.stop()
            await run

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
            asyncio.run(scenario())
    assert len(pings) >= 5, pings  # fed every ping interval while on time
    assert max(pings) <= deadline, pings  # and not once past the deadline


def test_a_reload_that_only_removes_a_target_writes_it_out(tmp_path: Path, web: Server) -> None:
    """A reload that removes target `b`, and changes nothing else, drops `b` from the state
    file at the next cycle, though nothing else in the state changed."""
    config = tmp_path / "prober.toml"
    a, b = (f'name = "{name}"\nurl = "{web.url("/health")}"' for name in ("a", "b"))
    write_config(config, a, b)
    store = StateStore(str(tmp_path / "state.json"))
    watcher = Watcher(lambda: loader(config), store, None, interval=0.01)

    def remove_b() -> None:
        assert set(store.load().targets) == {"a", "b"}
        write_config(config, a)
        watcher.request_reload()

    in_one_loop(lambda: watcher.run(2), remove_b, lambda: watcher.run(2))
    assert watcher.config.names == ("a",)
    assert set(store.load().targets) == {"a"}


def test_a_watcher_started_without_a_target_drops_it_from_the_file(tmp_path: Path,
                                                                   web: Server) -> None:
    """Started on a config without target `b` (edited while it was stopped), the watcher
    drops `b` from the state file, though nothing else in the state changed."""
    config = tmp_path / "prober.toml"
    a, b = (f'name = "{name}"\nurl = "{web.url("/health")}"' for name in ("a", "b"))
    write_config(config, a, b)
    store = StateStore(str(tmp_path / "state.json"))
    in_one_loop(lambda: Watcher(lambda: loader(config), store, None, interval=0.01).run(2))
    assert set(store.load().targets) == {"a", "b"}
    write_config(config, a)
    in_one_loop(lambda: Watcher(lambda: loader(config), store, None, interval=0.01).run(2))
    assert set(store.load().targets) == {"a"}


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET: what it received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self.received: list[str] = []

    def close(self) -> None:
        self._sock.close()

    def until(self, wanted: str, within: float = 30.0) -> list[str]:
        """The messages received up to the first that contains `wanted` (it included)."""
        start = len(self.received)
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                message = self._sock.recv(65536).decode()
            except TimeoutError:
                break
            self.received.append(message)
            if wanted in message:
                return self.received[start:]
        raise AssertionError(f"no {wanted!r} on the notify socket; got {self.received[start:]}")


def watch_process(config: Path, state: Path, notify: Path, *args: str) -> subprocess.Popen[str]:
    """`prober watch` as a process of its own, telling `notify` what systemd would hear."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROBER_", "WATCHDOG_", "NOTIFY_"))}
    env.update({"PROBER_CONFIG": str(config), "PROBER_STATE": str(state),
                "NOTIFY_SOCKET": str(notify)})
    return subprocess.Popen([sys.executable, "-m", "prober", "watch", *args],
                            stderr=subprocess.PIPE, text=True, env=env)


def test_sighup_says_reloading_then_ready_on_the_notify_socket(tmp_path: Path,
                                                               web: Server) -> None:
    """On a real SIGHUP the watcher tells systemd RELOADING=1, then READY=1 with the new
    STATUS= line; a bad config gives RELOADING=1, then READY=1 with the error on STATUS=, and
    the previous config keeps running."""
    config = tmp_path / "prober.toml"
    one, two = (f'name = "{name}"\nurl = "{web.url("/health")}"' for name in ("web", "api"))
    write_config(config, one)
    systemd = NotifySocket(tmp_path / "notify")
    watcher = watch_process(config, tmp_path / "state.json", systemd.path, "--interval", "1s")
    try:
        assert systemd.until("READY=1")[-1] == "READY=1"
        systemd.until("STATUS=last run OK: 1 ok of 1 targets")
        write_config(config, one, two)
        os.kill(watcher.pid, signal.SIGHUP)
        told = [m for m in systemd.until("STATUS=reloaded") if "WATCHDOG=1" not in m]
        assert told == ["RELOADING=1", f"READY=1\nSTATUS=reloaded {config}: 2 targets"]
        systemd.until("STATUS=last run OK: 2 ok of 2 targets")

        config.write_text("[[target]]\nname = 'broken'\n")
        os.kill(watcher.pid, signal.SIGHUP)
        told = [m for m in systemd.until("STATUS=reload failed") if "WATCHDOG=1" not in m]
        assert told == ["RELOADING=1", "READY=1\nSTATUS=reload failed, running the previous "
                        f'config: {config}: target "broken": url: missing (set "url", '
                        '"unix_socket", "tcp", "command" or "unit_health")']
        systemd.until("STATUS=last run OK: 2 ok of 2 targets")  # the previous config's targets
        watcher.terminate()
        assert watcher.wait(timeout=10) == 0
        assert systemd.until("STOPPING=1")[-1] == "STOPPING=1"
    finally:
        if watcher.poll() is None:
            watcher.kill()
        _, err = watcher.communicate(timeout=10)
        systemd.close()
    assert err.count("reload: keeping the previous config") == 1, err


def _watch_tcp(tmp_path: Path, port: int, actuator: FakeActuator,
               reports: list[RunReport | Skipped]) -> Watcher:
    """A watcher of one tcp target with the default thresholds, cycles an hour apart."""
    config = tmp_path / "prober.toml"
    config.write_text('[defaults]\ntimeout = "1s"\nstartup_grace = "0s"\nverify_timeout = "0s"\n'
                      f'[[target]]\nname = "caddy"\ntcp = "127.0.0.1:{port}"\nunit = "caddy"\n')
    return Watcher(lambda: loader(config), StateStore(str(tmp_path / "state.json")),
                   lambda: actuator, interval=3600,
                   on_report=lambda result, _: reports.append(result))


def _actions(reports: list[RunReport | Skipped]) -> list[str]:
    return [item.decision.action.value for report in reports if isinstance(report, RunReport)
            for item in report.targets]


def test_watch_confirms_a_refused_target_at_confirm_interval(tmp_path: Path) -> None:
    """While a target nothing listens on is failing, the next cycle comes confirm_interval
    after the last, not interval: the third cycle restarts it, an hour's interval or not."""
    reports: list[RunReport | Skipped] = []
    actuator = FakeActuator()
    with Listening() as listening:
        listening.close()
        watcher = _watch_tcp(tmp_path, listening.port, actuator, reports)
        asyncio.run(asyncio.wait_for(watcher.run(3), timeout=30))
    assert _actions(reports) == ["none", "none", "restart"]
    assert actuator.restarted == ["caddy.service"]


def test_watch_never_restarts_a_target_that_refuses_for_a_second(tmp_path: Path) -> None:
    """A listener gone for a moment: the next cycle, confirm_interval later, finds it back."""
    reports: list[RunReport | Skipped] = []
    actuator = FakeActuator()
    with Listening() as listening:
        watcher = _watch_tcp(tmp_path, listening.port, actuator, reports)
        listening.refuse_for(1.0)
        asyncio.run(asyncio.wait_for(watcher.run(2), timeout=30))
    assert [report.targets[0].result.ok for report in reports
            if isinstance(report, RunReport)] == [False, True]
    assert _actions(reports) == ["none", "none"] and actuator.restarted == []
    assert watcher.state.get("caddy").health.value == "healthy"


def test_a_rejected_reload_is_on_metrics_until_a_reload_loads(tmp_path: Path,
                                                             web: Server) -> None:
    """The real watcher's /metrics says its last reload loaded (1, and when), a rejected one
    (0, the time of the last good load kept; its page has the banner), and a good one again
    (1, a later time)."""
    import httpx

    config = tmp_path / "prober.toml"
    port = free_port()
    good = (f'listen = "127.0.0.1:{port}"\n[[target]]\nname = "web"\n'
            f'url = "{web.url("/health")}"\n')
    config.write_text(good)
    systemd = NotifySocket(tmp_path / "notify")
    watcher = watch_process(config, tmp_path / "state.json", systemd.path, "--interval", "1s")

    def reload_series() -> tuple[float, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
        values = dict(line.split(" ") for line in text.splitlines()
                      if line.startswith("prober_config_last_reload_"))
        return (float(values["prober_config_last_reload_successful"]),
                float(values["prober_config_last_reload_success_timestamp_seconds"]))

    try:
        systemd.until("STATUS=last run OK")
        loaded, started = reload_series()
        config.write_text("[[target]]\nname = 'broken'\n")
        os.kill(watcher.pid, signal.SIGHUP)
        systemd.until("STATUS=reload failed")
        rejected, kept = reload_series()
        page = httpx.get(f"http://127.0.0.1:{port}/", trust_env=False).text
        config.write_text(good)
        os.kill(watcher.pid, signal.SIGHUP)
        systemd.until("STATUS=reloaded")
        again, later = reload_series()
        watcher.terminate()
        assert watcher.wait(timeout=10) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.communicate(timeout=10)
        systemd.close()
    assert (loaded, rejected, again) == (1.0, 0.0, 1.0)
    assert kept == started and later > started
    assert '<p id="reload" class="flag-critical">the config reload was rejected: ' in page
