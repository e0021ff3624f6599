"""The read-only web server, for real: prober.outputs.web on 127.0.0.1:0 in the test's own event
loop,
spoken to over real sockets by httpx and by hand-written bytes (for what clients get wrong)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from prober.core.errors import ProberError
from prober.core.runs import Snapshot
from prober.core.tracker import Event, Health, State, TargetState, Transition
from prober.io.configfiles import load_config
from prober.outputs import metrics, page, report
from prober.outputs.web import MAX_REQUEST, WebServer, serve
from prober.shell.state import StateStore
from tests.support import snapshots
from tests.support.flood import enough_files, flood
from tests.support.processes import stop_process
from tests.support.programs import CADDY, HTPASSWD, NGINX, PROMETHEUS, PROMTOOL, require_program
from tests.support.servers import health
from tests.support.servers import serve as serve_target

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
HOST = "test-host.example"
PATHS = ("/metrics", "/status.json", "/")


def run(coroutine: Coroutine[Any, Any, T], deadline: float = 30.0) -> T:
    """Run one async test body in a fresh loop, within `deadline` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, deadline))


async def with_server(body: Callable[[WebServer], Awaitable[T]],
                      snapshot: Callable[[], Snapshot] = snapshots.snapshot,
                      **options: Any) -> T:
    server = await serve("127.0.0.1", 0, snapshot, hostname=HOST, **options)
    try:
        return await body(server)
    finally:
        await server.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body, raw)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (b"" if it closes without a word, even by RST)."""
    chunks = []
    try:
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_all(reader)
    finally:
        writer.close()


def request(method: str, path: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


async def get(port: int, path: str, method: str = "GET") -> Answer:
    return parse(await raw_exchange(port, request(method, path)))


# --- the endpoints ------------------------------------------------------------------------


def _expected(path: str, snapshot: Snapshot) -> tuple[str, bytes]:
    if path == "/metrics":
        return CONTENT_TYPE_LATEST, metrics.exposition(snapshot)
    if path == "/status.json":
        text = report.dumps(report.status_json(snapshot.config, snapshot.state, snapshot.now))
        return "application/json", f"{text}\n".encode()
    return "text/html; charset=utf-8", page.render(snapshot, hostname=HOST).encode()


@pytest.mark.parametrize("path", PATHS)
def test_each_endpoint_answers_get_with_its_document(path: str) -> None:
    """GET of each endpoint (with httpx, a real client) gives 200, its content type, and the
    document rendered from the snapshot current at the request, then the connection closes."""
    snapshot = snapshots.snapshot()

    async def body(server: WebServer) -> httpx.Response:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            return await client.get(path)

    answer = run(with_server(body, lambda: snapshot))
    content_type, document = _expected(path, snapshot)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == content_type
    assert answer.content == document
    assert answer.headers["connection"] == "close"
    assert answer.headers["cache-control"] == "no-store"
    assert "script-src" not in answer.headers["content-security-policy"]  # none may run
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")


def test_each_request_sees_the_snapshot_of_its_moment() -> None:
    """The server asks for the snapshot at every request: a new run shows at once."""
    current = [snapshots.snapshot(with_report=False)]

    async def body(server: WebServer) -> tuple[Answer, Answer]:
        before = await get(server.port, "/metrics")
        current[0] = snapshots.snapshot()
        return before, await get(server.port, "/metrics")

    before, after = run(with_server(body, lambda: current[0]))
    assert b"prober_run_status" not in before.body
    assert b"prober_run_status 2.0" in after.body


def test_metrics_endpoint_passes_promtool() -> None:
    """What /metrics serves is valid for Prometheus' own linter."""
    promtool = require_program(PROMTOOL, "prometheus")

    async def body(server: WebServer) -> Answer:
        return await get(server.port, "/metrics")

    answer = run(with_server(body))
    done = subprocess.run([promtool, "check", "metrics"], input=answer.body,
                          capture_output=True, check=False, timeout=30)
    assert (answer.status, done.returncode, done.stdout, done.stderr) == (200, 0, b"", b"")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _query(client: httpx.AsyncClient, expression: str) -> list[Any]:
    answer = await client.get("/api/v1/query", params={"query": expression})
    result: list[Any] = answer.json()["data"]["result"]
    return result


def test_prometheus_scrapes_metrics(tmp_path: Path) -> None:
    """A real Prometheus server scrapes /metrics: the target is up and the series are
    queryable with their labels and values."""
    prometheus = require_program(PROMETHEUS, "prometheus")
    port = _free_port()

    async def body(server: WebServer) -> dict[str, list[Any]]:
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                          "  - job_name: prober\n    static_configs:\n"
                          f'      - targets: ["127.0.0.1:{server.port}"]\n')
        with (tmp_path / "prometheus.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/data",
                f"--web.listen-address=127.0.0.1:{port}", stdout=log, stderr=log,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                while True:
                    with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                        if await _query(client, "prober_run_status"):
                            break
                    await asyncio.sleep(0.2)
                return {expression: await _query(client, expression) for expression in (
                    'up{job="prober"}', "prober_run_status",
                    'prober_restarts_total{target="web",unit="mastodon-web.service"}',
                    "prober_memory_pressure_some_avg10")}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    found = run(with_server(body), deadline=40)
    values = {expression: [sample["value"][1] for sample in result]
              for expression, result in found.items()}
    assert values == {'up{job="prober"}': ["1"], "prober_run_status": ["2"],
                      'prober_restarts_total{target="web",unit="mastodon-web.service"}': ["9"],
                      "prober_memory_pressure_some_avg10": ["23.4"]}


def test_status_json_is_what_prober_status_json_prints(tmp_path: Path) -> None:
    """/status.json is byte for byte what `prober status --json` prints for the same config
    and state file (the real command, in its own process)."""
    config_file = tmp_path / "prober.toml"
    config_file.write_text('[[target]]\nname = "web"\nurl = "http://u:pw@127.0.0.1:9/"\n'
                           'unit = "web"\n[[target]]\nname = "db"\ntcp = "127.0.0.1:5432"\n')
    os.chmod(config_file, 0o644)
    long_ago = time.time() - 10 * 86400
    state = State(targets={"web": TargetState(
        health=Health.HEALTHY, since=long_ago, last_checked_at=long_ago, last_ok=True,
        last_reason="status 200", restarts=(long_ago,), restarts_total=1,
        last_restart_at=long_ago,
        history=(Transition(long_ago, Event.RESTART, "restarted (job done)"),))},
        updated_at=long_ago)
    store = StateStore(str(tmp_path / "state.json"))
    store.save(state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBER_")}
    printed = subprocess.run(
        [sys.executable, "-m", "prober", "status", "--json", "--config", str(config_file),
         "--state", str(store.path)], capture_output=True, env=env, check=False, timeout=60)
    assert printed.returncode == 3, printed.stderr  # its last run, ten days ago, is too old
    snapshot = Snapshot(load_config(str(config_file)), store.load(), None, time.time())

    async def body(server: WebServer) -> Answer:
        return await get(server.port, "/status.json")

    answer = run(with_server(body, lambda: snapshot))
    assert answer.status == 200
    assert answer.body == printed.stdout
    assert json.loads(answer.body)["targets"][0]["endpoint"] == "http://u:***@127.0.0.1:9/"


@pytest.mark.parametrize("path", PATHS)
def test_head_has_the_headers_of_get_and_no_body(path: str) -> None:
    """HEAD answers like GET, Content-Length included, without the body."""
    async def body(server: WebServer) -> tuple[Answer, Answer]:
        return await get(server.port, path), await get(server.port, path, "HEAD")

    got, head = run(with_server(body))
    assert (head.status, head.body) == (200, b"")
    assert head.headers == got.headers
    assert int(head.headers["content-length"]) == len(got.body) > 0


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404),
    ("GET", "/metrics/", 404),
    ("GET", "/../etc/passwd", 404),
    ("POST", "/metrics", 405),
    ("PUT", "/", 405),
    ("DELETE", "/status.json", 405),
    ("OPTIONS", "/", 405),
    ("GET", "/metrics?name[]=prober_up", 200),
], ids=["unknown", "trailing-slash", "traversal", "post", "put", "delete", "options", "query"])
def test_paths_and_methods(method: str, path: str, status: int) -> None:
    """Only the three paths exist (a query string is ignored), and only GET and HEAD; a 405
    says which methods are allowed."""
    async def body(server: WebServer) -> Answer:
        return await get(server.port, path, method)

    answer = run(with_server(body))
    assert answer.status == status
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD"


# --- what clients get wrong ---------------------------------------------------------------


@pytest.mark.parametrize(("data", "status"), [
    (request("GET", "/", f"Cookie: {'x' * (MAX_REQUEST + 1)}\r\n"), 431),
    (request("POST", "/metrics", f"Content-Length: {4 * MAX_REQUEST}\r\n")
     + b"x" * (4 * MAX_REQUEST), 413),
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
], ids=["headers-too-large", "body-too-large", "garbage", "no-host"])
def test_bad_or_oversized_requests_are_refused_and_the_server_goes_on(
        data: bytes, status: int) -> None:
    """An oversized or malformed request gets its 4xx and the connection is closed; the next
    client is served as usual."""
    async def body(server: WebServer) -> tuple[Answer, Answer]:
        return parse(await raw_exchange(server.port, data)), await get(server.port, "/")

    refused, after = run(with_server(body))
    assert refused.status == status
    assert refused.headers["connection"] == "close"
    assert after.status == 200


def test_a_stalled_client_is_dropped_while_others_are_served(
        caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends half a request and stalls pins nothing: other requests are answered
    meanwhile, and it is dropped after the timeout without an answer, logged once at debug."""
    caplog.set_level(logging.DEBUG, logger="prober")

    async def body(server: WebServer) -> tuple[list[int], bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow")
        await writer.drain()
        statuses = [(await get(server.port, path)).status for path in PATHS]
        assert not reader.at_eof()  # still open while the others were served
        left = await read_all(reader)
        writer.close()
        return statuses, left, time.monotonic() - started

    statuses, left, lasted = run(with_server(body, timeout=1.0))
    assert statuses == [200, 200, 200]
    assert left == b""
    assert lasted >= 1.0
    dropped = [r for r in caplog.records if "dropped after" in r.getMessage()]
    assert [r.levelno for r in dropped] == [logging.DEBUG]


def test_a_newcomer_evicts_the_oldest_connection_still_waiting_for_its_request() -> None:
    """At max_connections, each newcomer is served: the oldest connection still waiting for
    its request, idle or trickling its head, is closed unanswered to make room, the younger
    ones stay open."""
    async def opened(server: WebServer, start: bytes) -> tuple[asyncio.StreamReader,
                                                                 asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(start)
        await asyncio.sleep(0.1)  # let the server accept it before the next one
        return reader, writer

    async def body(server: WebServer) -> list[object]:
        idle = await opened(server, b"")
        trickling = await opened(server, b"GET / HTTP/1.1\r\n")
        seen: list[object] = [(await get(server.port, "/metrics")).status,
                              await read_all(idle[0]), trickling[0].at_eof()]
        younger = await opened(server, b"")
        seen += [(await get(server.port, "/metrics")).status, await read_all(trickling[0]),
                 younger[0].at_eof()]
        for _, writer in (idle, trickling, younger):
            writer.close()
        return seen

    seen = run(with_server(body, head_timeout=30.0, timeout=30.0, max_connections=2))
    assert seen == [200, b"", False, 200, b"", False]


def test_a_burst_of_newcomers_cannot_evict_a_request_among_them() -> None:
    """Connections accepted all at once, a request first and three times max_connections idle
    ones after it: the request is answered, not evicted by those that came with it."""
    async def body(server: WebServer) -> bytes:
        # Connected while the loop does not run: the server accepts them all in one go.
        scraper = socket.create_connection(("127.0.0.1", server.port))
        scraper.sendall(request("GET", "/metrics"))
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
        scraper.setblocking(False)
        loop = asyncio.get_running_loop()
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := await loop.sock_recv(scraper, 65536):
                chunks.append(chunk)
        for sock in (scraper, *idle):
            sock.close()
        return b"".join(chunks)

    answer = run(with_server(body, head_timeout=30.0, timeout=30.0, max_connections=4))
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_head_trickled_past_the_head_deadline_is_closed(
        caplog: pytest.LogCaptureFixture) -> None:
    """A client that keeps sending its head a byte at a time is closed unanswered at the head
    deadline, long before the whole request's, and that is one debug line."""
    caplog.set_level(logging.DEBUG, logger="prober")

    async def body(server: WebServer) -> tuple[bytes, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        left, sent = None, 0
        while left is None:
            try:
                async with asyncio.timeout(0.05):
                    left = await read_all(reader)
            except TimeoutError:
                writer.write(b"a")
                sent += 1
        writer.close()
        return left, sent

    left, sent = run(with_server(body, head_timeout=0.5, timeout=60.0))
    assert left == b""
    assert sent > 1  # it was still trickling when it was closed
    closed = [r for r in caplog.records if "no request head within 0.5s" in r.getMessage()]
    assert [r.levelno for r in closed] == [logging.DEBUG]


LEAVING = [
    request("POST", "/metrics", "Content-Length: 100\r\n"),
    request("POST", "/metrics", "Content-Length: 100\r\n") + b"x" * 50,
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n",
]
LEAVING_IDS = ["head-then-close", "half-a-body", "half-a-head"]


async def leave_mid_request(port: int, data: bytes) -> None:
    """Send `data` and close the connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@pytest.mark.parametrize("data", LEAVING, ids=LEAVING_IDS)
def test_a_client_that_leaves_mid_request_is_one_debug_line(
        data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends part of a request and closes is one debug line per connection,
    never a traceback, nothing logged above debug (by prober or asyncio); the next client is
    served."""
    caplog.set_level(logging.DEBUG)
    clients = 5

    def said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("web: ")]

    async def body(server: WebServer) -> Answer:
        for _ in range(clients):
            await leave_mid_request(server.port, data)
        while len(said()) < clients:
            await asyncio.sleep(0.02)
        return await get(server.port, "/metrics")

    after = run(with_server(body))
    assert after.status == 200
    assert [(r.levelno, r.exc_info) for r in said()] == [(logging.DEBUG, None)] * clients
    assert [r.getMessage() for r in caplog.records
            if r.levelno > logging.DEBUG or r.exc_info] == []


SLOWLORIS, IDLE, SCRAPES = 300, 2_000, 20


def test_a_scraper_is_answered_while_slowloris_and_idle_connections_are_held_open() -> None:
    """With 300 slowloris connections and 2,000 idle ones held open (each opened again when
    dropped), every one of 20 scrapes of /metrics in a row gets its 200."""
    enough_files(2 * (SLOWLORIS + IDLE))  # the server's ends are in this process too

    async def body(server: WebServer) -> list[bytes]:
        async with flood(server.port, slowloris=SLOWLORIS, idle=IDLE):
            return [(await raw_exchange(server.port, request("GET", "/metrics")))[:12]
                    for _ in range(SCRAPES)]

    assert run(with_server(body), deadline=50) == [b"HTTP/1.1 200"] * SCRAPES


@contextlib.contextmanager
def watching(tmp_path: Path, *options: str, files: int | None = None
             ) -> Iterator[tuple[int, Path]]:
    """The real `prober watch --listen 127.0.0.1:PORT` (every 200 ms, one healthy target),
    started with a soft limit of `files` open files if given, until its page answers: its
    port and the file its stderr goes to, whole once it is stopped (by PID) at the end."""
    limited = [] if files is None else [require_program("/usr/bin/prlimit", "util-linux"),
                                        f"--nofile={files}:"]

    port = _free_port()
    with serve_target(health()) as target:
        config = tmp_path / "prober.toml"
        config.write_text(f'[[target]]\nname = "web"\nurl = "{target.url("/health")}"\n')
        os.chmod(config, 0o644)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROBER_", "NOTIFY_", "WATCHDOG_"))}
        env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={tmp_path}/no-bus"
        err = tmp_path / "watch.err"
        with err.open("wb") as out:
            proc = subprocess.Popen(
                [*limited, sys.executable, "-m", "prober", *options, "watch", "--config",
                 str(config), "--state", str(tmp_path / "state.json"), "--interval", "200ms",
                 "--listen", f"127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out, env=env)
        try:
            while b"prober_probe_success{" not in scrape(port):
                assert proc.poll() is None, err.read_text()
                time.sleep(0.1)
            yield port, err
        finally:
            stop_process(proc)


def scrape(port: int) -> bytes:
    """GET /metrics as a scraper does, by hand; what came back (b"" if nothing did)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(request("GET", "/metrics"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    return b""


def test_the_watcher_logs_a_client_that_leaves_mid_request_at_debug_only(
        tmp_path: Path) -> None:
    """`prober -v watch --listen`, the real command: clients that send a request head and
    close before its body are one debug line each in its log, no traceback, no warning or
    error; /metrics is served after them."""
    clients = 10
    with watching(tmp_path, "-v") as (port, err):
        for _ in range(clients):
            with socket.create_connection(("127.0.0.1", port), 10) as sock:
                sock.sendall(LEAVING[0])
        while err.read_text().count("without sending complete message body") < clients:
            time.sleep(0.05)
        after = scrape(port)
    logged = err.read_text()
    assert after.startswith(b"HTTP/1.1 200 ")
    assert "Traceback" not in logged
    assert [line for line in logged.splitlines()
            if line.startswith(("prober: error:", "prober: warning:"))] == []
    assert logged.count("without sending complete message body") == clients


@pytest.mark.parametrize("files", [None, 256], ids=["usual-limit", "low-open-files-limit"])
def test_the_watcher_answers_every_scrape_while_slowloris_and_idle_connections_are_held(
        tmp_path: Path, files: int | None) -> None:
    """`prober watch --listen`, the real command, with 300 slowloris connections and 2,000
    idle ones held open by another process: every one of 20 scrapes of /metrics in a row gets
    its 200, and the watcher goes on running its probes meanwhile. Started under a soft limit
    of 256 open files (systemd's default is 1024), it raises its own: it never runs out of
    descriptors, and nothing is logged above info."""
    with watching(tmp_path, files=files) as (port, err):
        hostile = subprocess.Popen(
            [sys.executable, "-m", "tests.support.flood", str(port), "--slowloris", str(SLOWLORIS),
             "--idle", str(IDLE)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent)
        try:
            assert hostile.stdout is not None and hostile.stdout.readline() == b"open\n"
            before = last_run(port)
            answers = [scrape(port)[:12] for _ in range(SCRAPES)]
            while last_run(port) <= before:
                time.sleep(0.1)
        finally:
            stop_process(hostile)
    logged = err.read_text()
    assert answers == [b"HTTP/1.1 200"] * SCRAPES
    assert "Traceback" not in logged
    assert [line for line in logged.splitlines()
            if not line.startswith("prober: ") or line.startswith(("prober: error:",
                                                                   "prober: warning:"))] == []


def last_run(port: int) -> float:
    """When the watcher's last run ended, from /metrics."""
    found = re.search(rb"^prober_last_run_timestamp_seconds (\S+)$", scrape(port), re.MULTILINE)
    assert found is not None
    return float(found.group(1))


def test_no_secret_in_any_response() -> None:
    """No URL password, header value or exec env value appears in anything the server says,
    for any path or method; the page escapes the markup in a reason."""
    async def body(server: WebServer) -> list[bytes]:
        said = []
        for path in (*PATHS, "/nope", "/status.json?x"):
            for method in ("GET", "HEAD", "POST"):
                said.append(await raw_exchange(server.port, request(method, path)))
        return said

    said = run(with_server(body))
    everything = b"\n".join(said)
    for secret in snapshots.SECRETS:
        assert secret.encode() not in everything
    assert b"prober:***@127.0.0.1:3000" in everything  # the endpoint is there, redacted
    html = parse(said[PATHS.index("/") * 3]).body
    assert snapshots.MARKUP.encode() not in html
    assert b"&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


def test_a_page_that_cannot_be_rendered_is_a_500_and_the_server_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """A failure to render (a bug) answers 500, is logged once as an error, and the next
    request is served."""
    calls = [0]

    def flaky() -> Snapshot:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("no snapshot")
        return snapshots.snapshot()

    async def body(server: WebServer) -> tuple[Answer, Answer]:
        return await get(server.port, "/"), await get(server.port, "/")

    failed, after = run(with_server(body, flaky))
    assert (failed.status, after.status) == (500, 200)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot render" in errors[0].getMessage()


def test_close_stops_listening_and_drops_open_connections() -> None:
    """close() ends the connections still open and frees the port."""
    async def body() -> tuple[bytes, int]:
        server = await serve("127.0.0.1", 0, snapshots.snapshot, timeout=30.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        await server.close()
        left = await asyncio.wait_for(read_all(reader), 5)
        writer.close()
        return left, server.port

    left, port = run(body())
    assert left == b""
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_an_address_in_use_is_one_prober_error() -> None:
    """Binding a port already taken raises a ProberError naming the address, nothing else."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ProberError, match=f"cannot listen on 127.0.0.1:{port}: "):
            run(serve("127.0.0.1", port, snapshots.snapshot))


OPERATING = Path(__file__).resolve().parent.parent / "docs" / "operating.md"
DOCS_HASH = "$2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG"
DOCS_HTPASSWD = "/etc/nginx/prober.htpasswd"
USER = "ops"


def docs_block(language: str) -> str:
    """docs/operating.md's first fenced block of `language`."""
    block = re.search(rf"```{language}\n(.*?)```", OPERATING.read_text(), re.DOTALL)
    assert block is not None, f"docs/operating.md has no ```{language} block"
    return block.group(1)


async def ask_through_proxy(argv: list[str], env: dict[str, str], log: Path, base_url: str,
                            password: str) -> dict[str, tuple[int, str]]:
    """Start the proxy `argv`, then ask it at `base_url` for the page: without a password, with
    a wrong one, with the right one; and, with the right one, for every link on the page, as
    the browser would resolve it. Each answer as (status, text), by what was asked."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL, env=env,
            start_new_session=True)
    try:
        async with httpx.AsyncClient(base_url=base_url, trust_env=False) as client:
            while True:
                assert proc.returncode is None, f"{argv[0]} exited: {log.read_text()[-2000:]}"
                with contextlib.suppress(httpx.TransportError):
                    anonymous = await client.get("")
                    break
                await asyncio.sleep(0.1)
            right = (USER, password)
            answers = {"anonymous": anonymous,
                       "wrong": await client.get("", auth=(USER, "wrong")),
                       "page": await client.get("", auth=right)}
            for link in re.findall(r'href="([^"]+)"', answers["page"].text):
                answers[link] = await client.get(link, auth=right)
        return {asked: (answer.status_code, answer.text) for asked, answer in answers.items()}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def check_password_asked(answers: dict[str, tuple[int, str]]) -> None:
    """Nothing of prober's without the password; the page and what it links to with it."""
    assert (answers["anonymous"][0], answers["wrong"][0]) == (401, 401)
    assert "prober on" not in answers["anonymous"][1] + answers["wrong"][1]
    page = answers["page"]
    assert page[0] == 200 and "<title>CRITICAL - prober on test-host.example" in page[1]
    links = {asked: answer[0] for asked, answer in answers.items()
             if asked not in ("anonymous", "wrong", "page")}
    assert links == {"metrics": 200, "status.json": 200, "?range=1h": 200, "?range=24h": 200,
                     "?range=7d": 200}
    assert "prober_run_status 2.0" in answers["metrics"][1]
    assert "targets" in json.loads(answers["status.json"][1])


def test_the_docs_caddy_example_asks_for_the_password(tmp_path: Path) -> None:
    """The Caddyfile of docs/operating.md, run by Debian's caddy in front of the server, refuses
    a client without the password (401) and passes one with it to the page and what it links
    to."""
    caddy = require_program(CADDY, "caddy")
    password = uuid.uuid4().hex  # a fresh one for each run
    hashed = subprocess.run([caddy, "hash-password", "--plaintext", password],
                            capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    port = _free_port()
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data")}

    async def body(server: WebServer) -> dict[str, tuple[int, str]]:
        caddyfile = tmp_path / "Caddyfile"
        caddyfile.write_text("{\n\tadmin off\n}\n" + docs_block("caddyfile")
                             .replace("status.mastodon.example.org", f"http://127.0.0.1:{port}")
                             .replace(DOCS_HASH, hashed)
                             .replace("127.0.0.1:9813", f"127.0.0.1:{server.port}"))
        return await ask_through_proxy(
            [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"], env,
            tmp_path / "caddy.log", f"http://127.0.0.1:{port}/", password)

    check_password_asked(run(with_server(body), deadline=50))


def test_the_docs_nginx_example_asks_for_the_password(tmp_path: Path) -> None:
    """The nginx location of docs/operating.md, in a server block of Debian's nginx, with the
    password file `htpasswd` makes: 401 without the password, and with it the page at the
    sub-path, whose relative links reach /metrics and /status.json through the same location."""
    nginx = require_program(NGINX, "nginx")
    htpasswd = require_program(HTPASSWD, "apache2-utils")
    password = uuid.uuid4().hex
    users = tmp_path / "prober.htpasswd"
    subprocess.run([htpasswd, "-c", "-b", "-B", str(users), USER, password],
                   capture_output=True, check=True, timeout=60)
    port = _free_port()

    async def body(server: WebServer) -> dict[str, tuple[int, str]]:
        location = (docs_block("nginx").replace(DOCS_HTPASSWD, str(users))
                    .replace("127.0.0.1:9813", f"127.0.0.1:{server.port}"))
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"daemon off;\nmaster_process off;\nuser root;\npid {tmp_path}/nginx.pid;\n"
            f"error_log {tmp_path}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  server {{\n    listen 127.0.0.1:{port};\n{location}  }}\n}}\n")
        return await ask_through_proxy([nginx, "-p", str(tmp_path), "-c", str(conf)],
                                       dict(os.environ), tmp_path / "nginx.log",
                                       f"http://127.0.0.1:{port}/prober/", password)

    check_password_asked(run(with_server(body), deadline=50))
