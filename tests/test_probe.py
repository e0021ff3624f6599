"""probe.py against real loopback servers: each case a server, a target and the result expected."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gc
import os
import socket
import ssl
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from prober.core.config import RestartRules, Target
from prober.core.results import FailureClass, ProbeResult
from prober.probes.http_spec import HttpProbe, Method, StatusRange
from prober.probes.probing import Probing, probe_all, probe_one, probe_sync
from prober.probes.tcp import TcpProbe
from tests.support.servers import (
    Certs,
    Exchange,
    Handler,
    Server,
    answer,
    chunked,
    close_mid_response,
    disconnect,
    flaky,
    full_backlog,
    hang,
    health,
    http10,
    huge,
    redirect,
    redirect_loop,
    refused_port,
    serve,
    slow,
    trickle,
)

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 1.0
MARGIN = 0.5  # how far past its timeout a probe may end: scheduling, closing sockets
CA = "<the test CA's file>"  # in Case.fields: replaced by the path of the CA's PEM
MIB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Unclosed sockets warn when collected: collect now, so the test that leaked one fails."""
    yield
    gc.collect()


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def http_target(url: str, **fields: Any) -> Target:
    """An HTTP target with a short timeout unless `policy` says otherwise."""
    policy = fields.pop("policy", RestartRules(timeout=TIMEOUT))
    if "max_latency" in fields:
        policy = replace(policy, max_latency=fields.pop("max_latency"))
    return Target(name=fields.pop("name", "web"), probe=HttpProbe(url=url, **fields),
                  policy=policy)


def tcp_target(host: str, port: int) -> Target:
    return Target(name="db", probe=TcpProbe(host, port), policy=RestartRules(timeout=TIMEOUT))


async def timed_probe(target: Target) -> tuple[ProbeResult, float]:
    """The result and how long it took, under a deadline of the target's whole budget."""
    started = time.monotonic()
    async with asyncio.timeout(target.run_budget + 5):
        result = await probe_one(target)
    return result, time.monotonic() - started


@dataclass(frozen=True)
class Case:
    """A server behaviour, the target's settings and what the probe must conclude."""

    handler: Handler | None  # None: a server that accepts and then stays silent
    ok: bool
    failure: FailureClass | None = None
    status: int | None = None
    reason: str = ""  # a part of the reason
    url: str = "{base}/health"  # {base}: scheme://127.0.0.1:port, {port}: the port
    tls: str | None = None  # "ca" (issued by the test CA), "expired", "self-signed"
    fields: Mapping[str, Any] = field(default_factory=dict)


def check(result: ProbeResult, case: Case, elapsed: float, target: Target) -> None:
    assert (result.ok, result.failure, result.status_code) == (case.ok, case.failure,
                                                               case.status), result.reason
    assert case.reason in result.reason
    assert "\n" not in result.reason
    assert result.name == target.name
    assert result.latency is not None and result.latency <= elapsed
    assert elapsed < target.run_budget + MARGIN
    if result.failure is FailureClass.TIMEOUT:  # and not a failure that came early
        assert elapsed >= target.policy.timeout


def server_context(kind: str | None, certs: Certs) -> ssl.SSLContext | None:
    if kind is None:
        return None
    if kind == "self-signed":
        return certs.self_signed_context()
    return certs.server_context(expired=kind == "expired")


def build_target(case: Case, server: Server, certs: Certs) -> Target:
    url = case.url.format(base=server.url("").rstrip("/"), port=server.port)
    fields = {k: certs.ca_file if v == CA else v for k, v in case.fields.items()}
    return http_target(url, **fields)


HTTP_CASES = [
    pytest.param(Case(health(), True, status=200, reason="status 200",
                      fields={"expect_body": "OK"}), id="health-ok"),
    pytest.param(Case(answer(500, b"boom"), False, FailureClass.STATUS, 500,
                      "status 500, expected 2xx"), id="500-status"),
    pytest.param(Case(answer(500, b"boom"), True, status=500,
                      fields={"expect_status": (StatusRange(500, 599),)}), id="500-expected-5xx"),
    pytest.param(Case(health(), False, FailureClass.STATUS, 404, "expected 200, 204",
                      url="{base}/other",
                      fields={"expect_status": (StatusRange(200, 200), StatusRange(204, 204))}),
                 id="404-not-in-list"),
    pytest.param(Case(health(), False, FailureClass.BODY, 200, 'body does not contain "healthy"',
                      fields={"expect_body": "healthy"}), id="body-mismatch"),
    pytest.param(Case(answer(200, b'{"status": "up"}'), True, status=200,
                      fields={"expect_body_regex": r'"status":\s*"up"'}), id="regex-match"),
    pytest.param(Case(answer(200, b'{"status": "down"}'), False, FailureClass.BODY, 200,
                      "does not match", fields={"expect_body_regex": r'"status":\s*"up"'}),
                 id="regex-mismatch"),
    pytest.param(Case(hang(), False, FailureClass.TIMEOUT, None,
                      "no response headers within 1s"), id="hang-timeout"),
    # One byte every 0.5s: a per-read timeout of 1s (httpx's kind) would never fire.
    pytest.param(Case(trickle(0.5), False, FailureClass.TIMEOUT, None,
                      "no response headers within 1s"), id="trickle-headers-timeout"),
    pytest.param(Case(trickle(0.5, headers_first=True), False, FailureClass.TIMEOUT, 200,
                      "body incomplete after 1s"), id="trickle-body-timeout"),
    pytest.param(Case(huge(), False, FailureClass.TOO_LARGE, 200,
                      'body over 64KiB and its first 64KiB does not contain "healthy"',
                      fields={"expect_body": "healthy"}), id="huge-too-large"),
    pytest.param(Case(huge(), True, status=200), id="huge-no-expectation-ok"),
    pytest.param(Case(huge(fill=b"OK"), True, status=200, fields={"expect_body": "OK"}),
                 id="huge-expectation-in-first-bytes"),
    pytest.param(Case(redirect_loop(), False, FailureClass.REDIRECT, None, "more than 10 redirects",
                      fields={"follow_redirects": True}), id="redirect-loop-followed"),
    pytest.param(Case(redirect("/health", health()), True, status=200, url="{base}/old",
                      fields={"follow_redirects": True, "expect_body": "OK"}),
                 id="redirect-followed"),
    pytest.param(Case(redirect_loop(), False, FailureClass.STATUS, 302,
                      "status 302, expected 2xx (a redirect; follow_redirects is off)"),
                 id="redirect-not-followed"),
    pytest.param(Case(answer(302, b"", [("Location", "ftp://127.0.0.1/")]), False,
                      FailureClass.REDIRECT, None, "a redirect to ftp:, not http or https",
                      fields={"follow_redirects": True}), id="redirect-to-ftp"),
    pytest.param(Case(answer(200, zlib.compress(b"all OK"), [("Content-Encoding", "deflate")]),
                      True, status=200, fields={"expect_body": "all OK"}),
                 id="deflated-anyway"),
    pytest.param(Case(answer(200, b"not gzip", [("Content-Encoding", "gzip")]), False,
                      FailureClass.PROTOCOL, 200, "body not decodable",
                      fields={"expect_body": "OK"}), id="gzip-corrupt"),
    pytest.param(Case(close_mid_response(), False, FailureClass.PROTOCOL, 200,
                      "peer closed connection"), id="closed-mid-response"),
    pytest.param(Case(disconnect(), False, FailureClass.PROTOCOL, None, "disconnected"),
                 id="closed-before-response"),
    pytest.param(Case(http10(b"OK"), True, status=200, fields={"expect_body": "OK"}),
                 id="http10-no-content-length"),
    pytest.param(Case(chunked(), True, status=200, fields={"expect_body": "OK, all good"}),
                 id="chunked"),
    pytest.param(Case(slow(0.3), False, FailureClass.SLOW, 200, "slower than max_latency 100ms",
                      fields={"max_latency": 0.1}), id="slow"),
    pytest.param(Case(slow(0.05), True, status=200, fields={"max_latency": 0.5}),
                 id="fast-enough"),
    pytest.param(Case(health(), True, status=200, fields={"method": Method.HEAD}), id="head"),
    # TLS
    pytest.param(Case(None, False, FailureClass.TIMEOUT, None, "no TLS handshake within 1s",
                      url="https://127.0.0.1:{port}/health"), id="tls-handshake-timeout"),
    pytest.param(Case(health(), False, FailureClass.TLS, None,
                      "certificate verify failed: self-signed certificate", tls="self-signed"),
                 id="tls-self-signed"),
    pytest.param(Case(health(), True, status=200, tls="self-signed",
                      fields={"tls_verify": False}), id="tls-self-signed-unverified"),
    pytest.param(Case(health(), False, FailureClass.TLS, None,
                      "certificate verify failed: unable to get local issuer certificate",
                      tls="ca"), id="tls-unknown-ca"),
    pytest.param(Case(health(), True, status=200, tls="ca", fields={"ca_file": CA}),
                 id="tls-ca-file"),
    pytest.param(Case(health(), False, FailureClass.TLS, None,
                      "certificate verify failed: certificate has expired", tls="expired",
                      fields={"ca_file": CA}), id="tls-expired"),
    pytest.param(Case(health(), True, status=200, tls="ca", url="https://example.test:{port}/health",
                      fields={"ca_file": CA, "resolve": "127.0.0.1"}), id="tls-resolve"),
    pytest.param(Case(health(), False, FailureClass.TLS, None,
                      "certificate verify failed: Hostname mismatch", tls="ca",
                      url="https://other.test:{port}/health",
                      fields={"ca_file": CA, "resolve": "127.0.0.1"}),
                 id="tls-resolve-wrong-name"),
    pytest.param(Case(health(), False, FailureClass.TLS, None, "TLS handshake failed",
                      url="https://127.0.0.1:{port}/health", fields={"ca_file": CA}),
                 id="tls-to-plain-http"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("case", HTTP_CASES)
async def test_http(case: Case, certs: Certs) -> None:
    """Each HTTP server behaviour ends in the result the table expects, within the timeout."""
    with serve(case.handler, tls=server_context(case.tls, certs)) as server:
        target = build_target(case, server, certs)
        result, elapsed = await timed_probe(target)
    check(result, case, elapsed, target)


@pytest.mark.anyio
async def test_resolve_keeps_host_and_sni(certs: Certs) -> None:
    """With resolve, the server sees the URL's name in both the Host header and SNI."""
    with serve(health(), tls=certs.server_context()) as server:
        url = f"https://example.test:{server.port}/health"
        target = http_target(url, resolve="127.0.0.1", ca_file=certs.ca_file)
        result, _ = await timed_probe(target)
    assert result.ok, result.reason
    assert [r.header("Host") for r in server.requests] == [f"example.test:{server.port}"]
    assert server.server_names == ["example.test"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("settings", "read"),
    [({}, True), ({"tls_verify": False}, False)],
    ids=["verified", "unverified"],
)
async def test_certificate_expiry_is_read(certs: Certs, settings: dict[str, Any],
                                          read: bool) -> None:
    """A verified peer certificate's expiry and name come back with the result; an unverified
    one is not read (only a verified certificate can be, without an X.509 parser)."""
    valid_for = datetime.timedelta(days=5)
    expected = time.time() + valid_for.total_seconds()
    with serve(health(), tls=certs.server_context(valid_for=valid_for)) as server:
        target = http_target(f"https://example.test:{server.port}/health",
                             resolve="127.0.0.1", ca_file=certs.ca_file, **settings)
        result, _ = await timed_probe(target)
    assert result.ok, result.reason
    if not read:
        assert result.certificate is None
        return
    assert result.certificate is not None
    assert abs(result.certificate.not_after - expected) < 120
    assert "example.test" in result.certificate.subject


# --- no HTTP server, or not a normal one ---------------------------------------------------


@contextlib.contextmanager
def nothing() -> Iterator[tuple[str, int]]:
    yield "127.0.0.1", refused_port()


@contextlib.contextmanager
def backlogged() -> Iterator[tuple[str, int]]:
    with full_backlog() as port:
        yield "127.0.0.1", port


@contextlib.contextmanager
def unknown_name() -> Iterator[tuple[str, int]]:
    yield "nothing.invalid", 80


@contextlib.contextmanager
def listening() -> Iterator[tuple[str, int]]:
    with serve(hang()) as server:
        yield server.host, server.port


Endpoint = Callable[[], contextlib.AbstractContextManager[tuple[str, int]]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("endpoint", "ok", "failure", "reason"),
    [
        pytest.param(nothing, False, FailureClass.REFUSED, "connection refused", id="refused"),
        pytest.param(backlogged, False, FailureClass.TIMEOUT, "no connection within 1s",
                     id="connect-timeout"),
        pytest.param(unknown_name, False, FailureClass.DNS, "cannot resolve nothing.invalid",
                     id="dns"),
    ],
)
async def test_http_connect(endpoint: Endpoint, ok: bool, failure: FailureClass,
                            reason: str) -> None:
    """An HTTP target that cannot be reached fails with the class of what went wrong."""
    with endpoint() as (host, port):
        target = http_target(f"http://{host}:{port}/health")
        result, elapsed = await timed_probe(target)
    check(result, Case(hang(), ok, failure, None, reason), elapsed, target)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("endpoint", "ok", "failure", "reason"),
    [
        pytest.param(listening, True, None, "connected", id="ok"),
        pytest.param(nothing, False, FailureClass.REFUSED, "connection refused", id="refused"),
        # Linux drops SYNs to a listener whose accept queue is full: a hang on loopback.
        pytest.param(backlogged, False, FailureClass.TIMEOUT, "no connection within 1s",
                     id="timeout"),
        pytest.param(unknown_name, False, FailureClass.DNS, "cannot resolve nothing.invalid",
                     id="dns"),
    ],
)
async def test_tcp(endpoint: Endpoint, ok: bool, failure: FailureClass | None,
                   reason: str) -> None:
    """A TCP target passes when a connect succeeds and fails with the class of why not."""
    with endpoint() as (host, port):
        target = tcp_target(host, port)
        result, elapsed = await timed_probe(target)
    check(result, Case(hang(), ok, failure, None, reason), elapsed, target)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("socket_state", "ok", "failure", "reason"),
    [
        pytest.param("listening", True, None, "status 200", id="ok"),
        pytest.param("missing", False, FailureClass.REFUSED, "no such socket", id="missing"),
        pytest.param("stale", False, FailureClass.REFUSED, "connection refused", id="stale"),
    ],
)
async def test_unix_socket(tmp_path: Path, socket_state: str, ok: bool,
                           failure: FailureClass | None, reason: str) -> None:
    """HTTP over a Unix socket: the URL gives path and Host, the socket file the peer."""
    path = tmp_path / "web.sock"
    if socket_state == "stale":  # the file of a server that died without removing it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(os.fspath(path))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve(health(), unix_path=path)) \
            if socket_state == "listening" else None
        target = http_target("http://mastodon.local/health", unix_socket=os.fspath(path),
                             expect_body="OK")
        result, elapsed = await timed_probe(target)
    check(result, Case(hang(), ok, failure, 200 if ok else None, reason), elapsed, target)
    if server is not None:
        assert [r.header("Host") for r in server.requests] == ["mastodon.local"]


# --- what is sent, and what is never said ---------------------------------------------------


@pytest.mark.anyio
async def test_sends_method_and_headers() -> None:
    """The method and configured headers reach the server, beside prober's User-Agent."""
    headers = (("Authorization", "Bearer s3cret-token"), ("X-Probe", "1"))
    with serve(answer(401, b"no")) as server:
        target = http_target(server.url("/health"), method=Method.HEAD, headers=headers)
        result, _ = await timed_probe(target)
    (request,) = server.requests
    assert (request.method, request.path) == ("HEAD", "/health")
    assert request.header("Authorization") == "Bearer s3cret-token"
    assert request.header("X-Probe") == "1"
    assert (request.header("User-Agent") or "").startswith("prober/")
    assert request.header("Accept-Encoding") == "identity"
    assert request.header("Connection") == "close"
    assert request.header("Accept") == "*/*"
    assert result.failure is FailureClass.STATUS
    assert "s3cret" not in result.reason


@pytest.mark.anyio
async def test_url_credentials_are_sent_as_basic_auth() -> None:
    """A user:password in the URL reaches the server as HTTP Basic auth."""
    with serve(answer()) as server:
        target = http_target(server.url("/health").replace("://", "://admin:hunter2@"))
        result, _ = await timed_probe(target)
    assert result.ok, result.reason
    (request,) = server.requests
    assert request.header("Authorization") == "Basic " + base64.b64encode(
        b"admin:hunter2").decode()


def sets_cookie(exchange: Exchange) -> None:
    """Redirect / to /in with a cookie; answer /in (and anything else) with one too."""
    cookie = ("Set-Cookie", "session=abc; Path=/")
    if exchange.request.path == "/":
        exchange.respond(302, b"", [("Location", "/in"), cookie])
    else:
        exchange.respond(200, b"OK", [cookie])


@pytest.mark.anyio
async def test_no_cookie_is_kept_from_one_probe_to_the_next() -> None:
    """A cookie a target sets is not sent back by the next probe of the same pool, nor one set
    by a redirect to where it leads: prober keeps no cookie jar at all."""
    with serve(sets_cookie) as server:
        plain = http_target(server.url("/in"))
        redirected = http_target(server.url("/"), follow_redirects=True)
        async with Probing() as probing:
            for target in (plain, plain, redirected):
                assert (await probing.probe(target)).ok
    cookies = [(r.path, r.header("Cookie")) for r in server.requests]
    assert cookies == [("/in", None), ("/in", None), ("/", None), ("/in", None)]


@pytest.mark.anyio
async def test_reason_never_shows_url_password() -> None:
    """A password in the URL is sent as basic auth but never shows in a reason."""
    target = http_target(f"http://admin:hunter2@127.0.0.1:{refused_port()}/health")
    result, _ = await timed_probe(target)
    assert result.failure is FailureClass.REFUSED
    assert "hunter2" not in result.reason


# --- retries --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failures", "ok", "status"),
    [
        pytest.param(2, True, 200, id="passes-on-third"),
        pytest.param(5, False, 500, id="fails-all-three"),
    ],
)
async def test_retries(failures: int, ok: bool, status: int) -> None:
    """retries=2 makes up to three attempts, stops at the first pass and counts them."""
    policy = RestartRules(timeout=TIMEOUT, retries=2, retry_delay=0.05)
    with serve(flaky(failures)) as server:
        target = http_target(server.url("/health"), policy=policy)
        result, elapsed = await timed_probe(target)
    assert (result.ok, result.status_code, result.attempts) == (ok, status, 3)
    assert len(server.requests) == 3
    assert elapsed < target.run_budget + MARGIN


def test_no_tenacity_without_retries() -> None:
    """A run without retries does not pay for importing tenacity."""
    code = (
        "import sys\n"
        "from prober.core.config import RestartRules, Target\n"
        "from prober.probes.http import HttpProbe\n"
        "from prober.probes.probing import probe_sync\n"
        f"t = Target(name='a', probe=HttpProbe(url='http://127.0.0.1:{refused_port()}/'),"
        " policy=RestartRules(timeout=1.0))\n"
        "(r,) = probe_sync([t])\n"
        "assert r.failure == 'refused', r\n"
        "assert 'tenacity' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=20)


# --- clients and certificates ------------------------------------------------------------


@pytest.mark.anyio
async def test_plain_http_loads_no_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain http targets never load CA certificates (they cost time every run)."""

    def forbidden(*args: object, **kwargs: object) -> ssl.SSLContext:
        raise AssertionError("CA certificates loaded for plain http")

    monkeypatch.setattr(ssl, "create_default_context", forbidden)
    with serve(health()) as server:
        results = await probe_all([http_target(server.url("/health"), name=f"t{i}")
                                   for i in range(3)])
    assert [r.ok for r in results] == [True, True, True]


@pytest.mark.anyio
async def test_one_context_per_tls_setup(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets sharing a TLS setup share one client, so the CA file is loaded once per run."""
    loads: list[str | None] = []
    real = ssl.create_default_context

    def counting(purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile: str | None = None,
                 capath: str | None = None, cadata: str | bytes | None = None
                 ) -> ssl.SSLContext:
        loads.append(cafile)
        return real(purpose, cafile=cafile, capath=capath, cadata=cadata)

    with serve(health(), tls=certs.server_context()) as server:
        monkeypatch.setattr(ssl, "create_default_context", counting)
        targets = [http_target(server.url("/health"), name=f"t{i}", ca_file=certs.ca_file)
                   for i in range(3)]
        results = await probe_all(targets)
    assert [r.ok for r in results] == [True, True, True]
    assert loads == [certs.ca_file]


@pytest.mark.anyio
async def test_missing_ca_file_is_a_result(tmp_path: Path) -> None:
    """A ca_file that vanished after the config was checked fails the target, not the run."""
    with serve(health()) as server:
        target = http_target(server.url("/health").replace("http:", "https:"),
                             ca_file=os.fspath(tmp_path / "gone.pem"))
        result, _ = await timed_probe(target)
    assert (result.ok, result.failure) == (False, FailureClass.ERROR)
    assert "cannot load ca_file" in result.reason


# --- memory and concurrency -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "failure"),
    [
        pytest.param({}, None, id="no-expectation"),
        pytest.param({"expect_body": "healthy"}, FailureClass.TOO_LARGE, id="too-large"),
        pytest.param({"expect_body": "healthy", "max_body": MIB}, FailureClass.TOO_LARGE,
                     id="too-large-1MiB"),
    ],
)
async def test_huge_body_memory_is_bounded(fields: dict[str, Any],
                                           failure: FailureClass | None) -> None:
    """A 1 GiB body is read only up to max_body: memory stays far below its size."""
    with serve(huge()) as server:
        target = http_target(server.url("/health"), **fields)
        tracemalloc.start()
        try:
            result, elapsed = await timed_probe(target)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (result.failure, result.status_code) == (failure, 200), result.reason
    assert peak < 20 * MIB
    assert elapsed < TIMEOUT


@pytest.mark.anyio
async def test_probe_all_is_concurrent_and_ordered() -> None:
    """50 targets, half of them hanging, take about one timeout and come back in order."""
    with serve(health()) as good, serve(hang()) as bad:
        targets = [
            http_target((bad if i % 2 else good).url("/health"), name=f"t{i:02}")
            for i in range(50)
        ]
        started = time.monotonic()
        async with asyncio.timeout(10):
            results = await probe_all(targets)
        elapsed = time.monotonic() - started
    assert [r.name for r in results] == [t.name for t in targets]
    assert [r.failure for r in results] == [FailureClass.TIMEOUT if i % 2 else None
                                            for i in range(50)]
    assert elapsed < TIMEOUT + MARGIN * 2


def test_probe_sync() -> None:
    """probe_sync gives probe_all's results to synchronous callers."""
    with serve(health()) as server:
        results = probe_sync([
            http_target(server.url("/health"), name="up"),
            tcp_target("127.0.0.1", refused_port()),
        ])
    assert [(r.name, r.ok, r.failure) for r in results] == [
        ("up", True, None), ("db", False, FailureClass.REFUSED)]
