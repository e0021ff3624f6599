"""Probing targets: the only module that knows httpx.

    probe_all(targets)        every target at once; one ProbeResult per target, in order
    probe_one(target, pool)   one target, with its quick retries
    probe_sync(targets)       probe_all from synchronous code

A failed target is data (`ok=False`, a FailureClass, a one-line reason), never an exception.
Each probe kind is one async function of one shape, registered in `PROBES`; the caller
(`_attempt`) owns the deadline, measures the latency and maps exceptions to failure classes.
Reasons never hold header values or URLs (either may carry secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
import socket
import ssl
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import httpcore
import httpx

from prober import __version__
from prober.config import Method, ProbeKind, Target, format_duration
from prober.results import FailureClass, ProbeResult

__all__ = [
    "PROBES",
    "ClientPool",
    "Finding",
    "Phase",
    "ProbeFn",
    "Progress",
    "probe_all",
    "probe_one",
    "probe_sync",
]

log = logging.getLogger("prober")


def _fail_sniffio_fast() -> None:
    """Make httpcore's `import sniffio` fail at once when sniffio is not installed.

    httpcore 1.0 runs `import sniffio` for every lock and event it sets up, six times a request.
    anyio 4 no longer brings sniffio, and Python caches no failed import: each of those imports
    searched all of sys.path again (0.17 ms here), a third of the CPU of a 200-target run.
    None in sys.modules is Python's way to make an import fail without a search; httpcore (and
    anyio) then take asyncio, which is what runs them.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


_fail_sniffio_fast()

MAX_REDIRECTS = 10
# Every probe opens a fresh connection: a kept-alive one could hide a server that no longer
# accepts. No cap on connections either: a cap would make targets queue behind hung ones.
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=0)
_DEFAULT_HEADERS = {
    "User-Agent": f"prober/{__version__}",
    # An uncompressed body keeps max_body a bound on memory, not on compressed bytes.
    "Accept-Encoding": "identity",
    "Connection": "close",
}
# The deadline is ours (see _attempt); httpx's timeouts restart with every read.
_NO_TIMEOUT = httpx.Timeout(None)
_TCP_CLOSE_BOUND = 0.2
_QUOTE_MAX = 40
_REASON_MAX = 200


class Phase(StrEnum):
    """How far one attempt got; a timeout names the phase it cut short."""

    CONNECT = "connect"
    TLS = "tls"
    HEADERS = "headers"
    BODY = "body"


_TIMEOUT_REASONS = {
    Phase.CONNECT: "no connection within {}",
    Phase.TLS: "no TLS handshake within {}",
    Phase.HEADERS: "no response headers within {}",
    Phase.BODY: "body incomplete after {}",
}
# httpcore trace events ("connection.start_tls.started", ...) -> the phase they begin.
_TRACE_PHASES = {
    "connect_tcp.started": Phase.CONNECT,
    "connect_unix_socket.started": Phase.CONNECT,
    "start_tls.started": Phase.TLS,
    "send_request_headers.started": Phase.HEADERS,
    "receive_response_headers.complete": Phase.BODY,
}


@dataclass
class Progress:
    """What one attempt has reached so far; the deadline's owner reads it when time runs out."""

    phase: Phase = Phase.CONNECT
    status_code: int | None = None
    _connected: httpcore.AsyncNetworkStream | None = None  # not yet owned by a connection

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx's `trace` extension: follow the request through its phases."""
        name = event.partition(".")[2]
        if name in ("connect_tcp.complete", "connect_unix_socket.complete"):
            self._connected = info.get("return_value")
        elif name in ("start_tls.complete", "send_request_headers.started"):
            self._connected = None
        phase = _TRACE_PHASES.get(name)
        if phase is not None:
            self.phase = phase

    async def close_orphan(self) -> None:
        """Close the socket of a TLS handshake the deadline cut short.

        httpcore 1.0 closes it on errors but not on cancellation, and nothing else holds it:
        without this, every timed-out handshake leaks a socket until garbage collection.
        """
        stream, self._connected = self._connected, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()


class Finding(NamedTuple):
    """What a probe found, before the caller adds latency and attempts."""

    reason: str
    failure: FailureClass | None = None
    status_code: int | None = None


class _Failed(Exception):
    """Raised inside a probe when setting it up already decided the outcome."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.reason)
        self.finding = finding


# --- clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """What makes two targets need different clients."""

    tls: bool  # whether the client may speak TLS at all
    verify: bool
    ca_file: str | None
    unix_socket: str | None

    @classmethod
    def of(cls, target: Target) -> _Setup:
        # A redirect may lead from http:// to https://, so following one may need TLS.
        tls = target.follow_redirects or target.url.lower().startswith("https:")
        verify = tls and target.tls_verify
        return cls(tls, verify, target.ca_file if verify else None, target.unix_socket)


class ClientPool:
    """The httpx clients of one run: one per distinct TLS/transport setup, closed together.

    Certificates are loaded only for a setup that may speak TLS, once per run:
    - default: the system trust store (`ssl.create_default_context()`, which honours
      SSL_CERT_FILE and SSL_CERT_DIR), plus certifi's bundle only if the system has none;
    - `ca_file`: that file *instead of* the defaults, like `curl --cacert`, so a target
      pinned to an internal CA cannot be passed by a certificate from a public one;
    - `tls_verify = false`: no verification at all.
    Proxies and other environment settings are ignored: a liveness probe goes straight there.
    """

    def __init__(self) -> None:
        self._clients: dict[_Setup, httpx.AsyncClient] = {}
        self._contexts: dict[_Setup, ssl.SSLContext] = {}
        self._stack = contextlib.AsyncExitStack()
        self._warmed = False

    async def prepare(self, targets: Sequence[Target]) -> None:
        """Create the clients `targets` need, and finish httpcore's lazy imports, right now.

        Both block the event loop for tens of milliseconds (certificates; anyio, on a fresh
        process's first request); done inside the probes, they would count against the
        latency of every target probed at the same time, and every run is a fresh process.
        """
        http = [t for t in targets if t.kind is ProbeKind.HTTP]
        if not http:
            return
        if not self._warmed:
            import anyio.streams.tls
            import anyio.to_thread  # both imported by the first connection otherwise

            await anyio.sleep(0)  # loads anyio's asyncio backend
            self._warmed = True
        for target in http:
            with contextlib.suppress(Exception):  # the probe will meet it again and report it
                self.client_for(target)

    def client_for(self, target: Target) -> httpx.AsyncClient:
        """The client for `target`'s setup, created on first use."""
        setup = _Setup.of(target)
        client = self._clients.get(setup)
        if client is None:
            transport = httpx.AsyncHTTPTransport(
                verify=self._context(setup), uds=setup.unix_socket, limits=_LIMITS,
                trust_env=False,
            )
            client = httpx.AsyncClient(
                transport=transport, timeout=_NO_TIMEOUT, trust_env=False,
                headers=_DEFAULT_HEADERS, max_redirects=MAX_REDIRECTS,
            )
            self._stack.push_async_callback(client.aclose)
            self._clients[setup] = client
        return client

    def _context(self, setup: _Setup) -> ssl.SSLContext:
        key = _Setup(setup.tls, setup.verify, setup.ca_file, None)
        context = self._contexts.get(key)
        if context is None:
            context = _ssl_context(setup)
            self._contexts[key] = context
        return context

    async def aclose(self) -> None:
        """Close every client (and so every connection) of the run."""
        await self._stack.aclose()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _ssl_context(setup: _Setup) -> ssl.SSLContext:
    if not setup.tls:
        # Never used (plain http, no redirects), so load nothing; it trusts no one if it ever is.
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not setup.verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if setup.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=setup.ca_file)
        except (OSError, ValueError) as exc:
            reason = f"cannot load ca_file {setup.ca_file}: {_os_reason(exc)}"
            raise _Failed(Finding(_one_line(reason), FailureClass.ERROR)) from None
    context = ssl.create_default_context()
    if not context.cert_store_stats()["x509_ca"]:
        with contextlib.suppress(ImportError, OSError):
            import certifi  # only for hosts without a system trust store

            context.load_verify_locations(cafile=certifi.where())
    return context


# --- probes -------------------------------------------------------------------------------

ProbeFn = Callable[[Target, ClientPool, Progress], Awaitable[Finding]]


async def _probe_http(target: Target, clients: ClientPool, progress: Progress) -> Finding:
    """One HTTP request; judged on status, then body. The caller judges latency."""
    client = clients.client_for(target)
    url = httpx.URL(target.url)
    headers = httpx.Headers(list(target.headers))
    extensions: dict[str, Any] = {"trace": progress.trace}
    if target.resolve and not target.unix_socket:
        # Like curl --resolve: connect to the IP, but Host, SNI and verification use the name.
        if "host" not in headers:
            headers["Host"] = url.netloc.decode("ascii")
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
        url = url.copy_with(host=target.resolve)
    async with client.stream(
        target.method.value, url, headers=headers, extensions=extensions,
        follow_redirects=target.follow_redirects,
    ) as response:
        progress.phase = Phase.BODY
        status = progress.status_code = response.status_code
        if not any(r.matches(status) for r in target.expect_status):
            return Finding(_status_reason(target, status), FailureClass.STATUS, status)
        if target.method is Method.HEAD:
            return Finding(f"status {status}", None, status)
        wants_body = bool(target.expect_body or target.expect_body_regex)
        body, over = await _read_body(response, target.max_body, keep=wants_body)
    if wants_body:
        failure = _judge_body(target, _decode(body, response.charset_encoding), over)
        if failure is not None:
            return Finding(failure[1], failure[0], status)
    return Finding(f"status {status}", None, status)


async def _read_body(response: httpx.Response, limit: int, *, keep: bool) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body (only counted unless `keep`), and whether there was more.

    Reading stops at the limit, so memory stays bounded whatever the server sends.
    """
    body = bytearray()
    seen = 0
    # An async generator, typed as an iterator: close it, as the loop may stop early.
    stream = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            room = limit - seen
            if keep:
                body += chunk[:room]
            seen += len(chunk)
            if seen > limit:
                return bytes(body), True
    return bytes(body), False


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _judge_body(target: Target, text: str, over: bool) -> tuple[FailureClass, str] | None:
    """The failure of a body expectation, if any.

    A body over max_body is judged on its first max_body bytes: it passes if the expectation
    is met there, and is TOO_LARGE if not. Without a body expectation it is not judged at all
    (reading just stops at max_body), so only the status counts.
    """
    missing = []
    if target.expect_body and target.expect_body not in text:
        missing.append(f"does not contain {_quote(target.expect_body)}")
    if target.expect_body_regex and not re.search(target.expect_body_regex, text):
        missing.append(f"does not match /{_clip(target.expect_body_regex)}/")
    if not missing:
        return None
    if over:
        size = _size(target.max_body)
        return FailureClass.TOO_LARGE, f"body over {size} and its first {size} " + missing[0]
    return FailureClass.BODY, "body " + missing[0]


def _status_reason(target: Target, status: int) -> str:
    expected = ", ".join(str(r) for r in target.expect_status)
    reason = f"status {status}, expected {expected}"
    if 300 <= status < 400 and not target.follow_redirects:
        reason += " (a redirect; follow_redirects is off)"
    return reason


async def _probe_tcp(target: Target, clients: ClientPool, progress: Progress) -> Finding:
    """A TCP connect, closed at once."""
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(target.tcp_host, target.tcp_port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for *_, address in addresses:
        try:
            _, writer = await asyncio.open_connection(str(address[0]), int(address[1]))
        except OSError as exc:
            errors.append(exc)
            continue
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_TCP_CLOSE_BOUND):
                await writer.wait_closed()
        return Finding("connected")
    # asyncio would merge several errors into one message; keep each for _classify.
    if len(errors) == 1:
        raise errors[0]
    raise OSError("all addresses failed") from ExceptionGroup("connect", errors)


PROBES: Mapping[ProbeKind, ProbeFn] = {
    ProbeKind.HTTP: _probe_http,
    ProbeKind.TCP: _probe_tcp,
}


# --- the caller: deadline, latency, retries -----------------------------------------------


async def probe_all(targets: Sequence[Target]) -> list[ProbeResult]:
    """Probe every target concurrently; one result per target, in the same order."""
    async with ClientPool() as clients:
        await clients.prepare(targets)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(probe_one(target, clients)) for target in targets]
    return [task.result() for task in tasks]


def probe_sync(targets: Sequence[Target]) -> list[ProbeResult]:
    """`probe_all` for synchronous callers."""
    return asyncio.run(probe_all(targets))


async def probe_one(target: Target, clients: ClientPool | None = None) -> ProbeResult:
    """Probe one target, with its quick retries; a failure is in the result, never raised.

    Without `clients`, the target gets clients of its own, closed before returning.
    """
    if clients is None:
        async with ClientPool() as own:
            return await probe_one(target, own)
    await clients.prepare([target])
    if target.policy.retries <= 0:
        return await _attempt(target, clients, 1)
    return await _with_retries(target, clients)


async def _with_retries(target: Target, clients: ClientPool) -> ProbeResult:
    # tenacity costs an import; most targets never retry.
    from tenacity import (
        AsyncRetrying,
        RetryCallState,
        retry_if_result,
        stop_after_attempt,
        wait_fixed,
    )

    attempts = 0

    async def attempt() -> ProbeResult:
        nonlocal attempts
        attempts += 1
        return await _attempt(target, clients, attempts)

    def last_result(state: RetryCallState) -> ProbeResult:
        assert state.outcome is not None
        result: ProbeResult = state.outcome.result()
        return result

    retrying = AsyncRetrying(
        stop=stop_after_attempt(target.policy.retries + 1),
        wait=wait_fixed(target.policy.retry_delay),
        retry=retry_if_result(lambda result: not result.ok),
        retry_error_callback=last_result,
    )
    result: ProbeResult = await retrying(attempt)
    return result


async def _attempt(target: Target, clients: ClientPool, number: int) -> ProbeResult:
    """One try, bounded as a whole (connect, TLS, headers, body) by the target's timeout.

    httpx's own read timeout restarts with every chunk, so a server trickling a byte a second
    would never trip it; asyncio.timeout bounds the sum.
    """
    timeout = target.policy.timeout
    progress = Progress()
    started = time.monotonic()
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            finding = await PROBES[target.kind](target, clients, progress)
    except _Failed as exc:
        finding = exc.finding
    except Exception as exc:
        if deadline.expired():
            await progress.close_orphan()
            reason = _TIMEOUT_REASONS[progress.phase].format(format_duration(timeout))
            finding = Finding(reason, FailureClass.TIMEOUT, progress.status_code)
        else:
            finding = _classify(exc, target, progress)
    latency = time.monotonic() - started
    if (
        finding.failure is None
        and target.max_latency is not None
        and latency > target.max_latency
    ):
        reason = f"slower than max_latency {format_duration(target.max_latency)}"
        finding = Finding(reason, FailureClass.SLOW, finding.status_code)
    return ProbeResult(
        name=target.name,
        ok=finding.failure is None,
        reason=finding.reason,
        failure=finding.failure,
        status_code=finding.status_code,
        latency=latency,
        attempts=number,
    )


# --- exceptions -> failure classes --------------------------------------------------------


def _classify(exc: Exception, target: Target, progress: Progress) -> Finding:
    """The failure class and one-line reason for what an attempt raised."""
    failure, reason = _failure_of(exc, target, progress)
    if failure is FailureClass.ERROR:
        log.debug("target=%s: unexpected %s", target.name, type(exc).__name__, exc_info=exc)
    return Finding(_one_line(reason), failure, progress.status_code)


def _failure_of(
    exc: Exception, target: Target, progress: Progress
) -> tuple[FailureClass, str]:
    if isinstance(exc, httpx.TooManyRedirects):
        return FailureClass.REDIRECT, f"more than {MAX_REDIRECTS} redirects"
    if isinstance(exc, httpx.TimeoutException):  # not expected: httpx's timeouts are off
        return FailureClass.TIMEOUT, f"timed out ({type(exc).__name__})"
    causes = list(_causes(exc))
    connecting = progress.phase in (Phase.CONNECT, Phase.TLS)
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return FailureClass.TLS, f"certificate verify failed: {cause.verify_message}"
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            what = (cause.reason or str(cause)).replace("_", " ").lower()
            if connecting:
                return FailureClass.TLS, f"TLS handshake failed: {what}"
            return FailureClass.PROTOCOL, f"TLS error mid-response: {what}"
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            host = target.tcp_host if target.kind is ProbeKind.TCP else _host(target.url)
            return FailureClass.DNS, f"cannot resolve {host}: {_os_reason(cause)}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return FailureClass.PROTOCOL, _lower_first(str(exc)) or "the server broke HTTP"
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return FailureClass.REFUSED, "connection refused"
        if isinstance(cause, FileNotFoundError) and target.unix_socket:
            return FailureClass.CONNECT, f"no such socket {target.unix_socket}"
    if isinstance(exc, httpx.ReadError | httpx.WriteError) and not connecting:
        return FailureClass.PROTOCOL, f"connection lost mid-response: {_os_reason(causes[-1])}"
    if isinstance(exc, httpx.DecodingError):
        return FailureClass.PROTOCOL, _lower_first(str(exc))
    for cause in causes:
        if isinstance(cause, ConnectionResetError):
            return FailureClass.REFUSED, "connection reset"
        if isinstance(cause, OSError) and cause.errno is not None:
            return FailureClass.CONNECT, f"cannot connect: {_os_reason(cause)}"
    if isinstance(exc, httpx.ConnectError):
        return FailureClass.CONNECT, f"cannot connect: {_os_reason(causes[-1])}"
    return FailureClass.ERROR, f"{type(exc).__name__}: {exc}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, what caused it and the members of any exception group on the way."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        # httpcore re-raises `from None`, hiding the OSError beneath: follow the context too.
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


# --- wording ------------------------------------------------------------------------------

_USERINFO = re.compile(r"(//)[^/@\s]*@")


def _one_line(text: str) -> str:
    """One short line, without any user:password@ a library put in its message."""
    text = _USERINFO.sub(r"\1", " ".join(text.split())).rstrip(".")
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return _lower_first(exc.strerror)
    return str(exc) or type(exc).__name__


def _lower_first(text: str) -> str:
    """"Server disconnected" -> "server disconnected", to sit after a colon; "TLS" stays."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def _clip(text: str) -> str:
    return text if len(text) <= _QUOTE_MAX else text[: _QUOTE_MAX - 3] + "..."


def _quote(text: str) -> str:
    return '"' + _clip(text) + '"'


def _size(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count} bytes"
