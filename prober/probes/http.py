"""The HTTP probe kind: one request (over TCP, TLS or a Unix socket), judged on status and body.

httpx is imported when the first client is made, not with this module: the config, `validate`
and `status` read the spec and keys below without paying for it. Reasons never hold header
values or URLs (either may carry secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import importlib.util
import logging
import re
import socket
import ssl
import sys
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from prober import __version__
from prober.keys import (
    Key,
    Option,
    Shape,
    absolute_path,
    boolean,
    choice,
    duration,
    format_duration,
    ip_address,
    regex,
    string,
    url,
)
from prober.keys import headers as headers_value
from prober.probes.base import Argument, Invalid, ProbeKind
from prober.probes.shared import DEFAULT_MAX_BODY, MAX_BODY
from prober.results import Certificate, Deadline, FailureClass, Finding, ProbeResult
from prober.text import clip, lower_first, os_reason, quote, reason, redact_url, size

if TYPE_CHECKING:
    import httpcore
    import httpx

log = logging.getLogger("prober")

MAX_REDIRECTS = 10
_PER_SHARD = 32  # specs whose requests share one transport (one httpcore connection pool)
_DEFAULT_HEADERS = {
    "User-Agent": f"prober/{__version__}",
    # An uncompressed body keeps max_body a bound on memory, not on compressed bytes.
    "Accept-Encoding": "identity",
    "Connection": "close",
}


class Method(StrEnum):
    GET = "GET"
    HEAD = "HEAD"


@dataclass(frozen=True)
class StatusRange:
    """An accepted status: one code (`low == high`) or a class like 2xx."""

    low: int
    high: int

    def matches(self, code: int) -> bool:
        return self.low <= code <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low // 100}xx"


def parse_statuses(value: object) -> tuple[StatusRange, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must list at least one status")
    ranges = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            ranges.append(StatusRange(item, item))
        elif isinstance(item, str) and re.fullmatch(r"[1-5]xx", item.lower()):
            low = int(item[0]) * 100
            ranges.append(StatusRange(low, low + 99))
        elif isinstance(item, str) and item.isascii() and item.isdigit() and \
                100 <= int(item) <= 599:
            ranges.append(StatusRange(int(item), int(item)))
        else:
            raise ValueError(f'{item!r} is not a status code (100-599) or a class like "2xx"')
    return tuple(ranges)


@dataclass(frozen=True)
class HttpProbe:
    """One HTTP(S) request, and what its answer must be."""

    url: str = "http://localhost/"
    unix_socket: str | None = None
    method: Method = Method.GET
    headers: tuple[tuple[str, str], ...] = ()
    resolve: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    follow_redirects: bool = False
    expect_status: tuple[StatusRange, ...] = (StatusRange(200, 299),)
    expect_body: str | None = None
    expect_body_regex: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    tls_expiry_warning: float = 14 * 86400.0

    @property
    def endpoint(self) -> str:
        shown = redact_url(self.url)
        return f"{shown} via unix:{self.unix_socket}" if self.unix_socket else shown

    @property
    def reads_certificate(self) -> bool:
        """Whether the peer certificate is read: only a verified one can be, without a
        compiled X.509 parser."""
        return self.tls_verify and self.url.lower().startswith("https:")


def _header_option(values: Sequence[str]) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for text in values:
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise ValueError(f'"{text}": expected "Name: value"')
        out[name.strip()] = value.strip()
    return out


KEYS = (
    Key("url", Shape.URL, url, "`http://` or `https://` URL to probe"),
    Key("unix_socket", Shape.PATH, absolute_path,
        "HTTP over this Unix socket (as puma can listen); `url` then gives path and Host "
        "(default `http://localhost/`)", option=Option("--unix-socket", "PATH")),
    Key("method", Shape.CHOICE, choice(Method), "`GET` or `HEAD`", default="GET",
        in_defaults=True, choices=tuple(Method),
        option=Option("--method", "GET|HEAD")),
    Key("headers", Shape.HEADERS, headers_value,
        "table of extra request headers; values never appear in output", default="{}",
        in_defaults=True,
        option=Option("--header", "'NAME: VALUE'", multiple=True, convert=_header_option)),
    Key("resolve", Shape.IP, ip_address,
        "connect to this IP but keep the URL's host for Host and TLS SNI/verification "
        "(like `curl --resolve`)",
        option=Option("--resolve", "IP", "Connect to IP, keep the URL's host (curl-style).")),
    Key("tls_verify", Shape.BOOLEAN, boolean, "verify certificates", default="true",
        in_defaults=True,
        option=Option("--insecure", help="Do not verify TLS certificates.", is_flag=True,
                      convert=lambda on: False if on else None)),
    Key("ca_file", Shape.PATH, absolute_path,
        "PEM file of CA certificates to trust for this target (instead of the system's)",
        in_defaults=True, option=Option("--ca-file", "PATH"), existing_file=True),
    Key("follow_redirects", Shape.BOOLEAN, boolean, "follow redirects (a loop fails as "
        "`redirect`)", default="false", in_defaults=True,
        option=Option("--follow-redirects", is_flag=True, convert=lambda on: True if on else None)),
    Key("expect_status", Shape.STATUSES, parse_statuses,
        'list of codes and classes: `[200, "3xx"]`', default='["2xx"]', in_defaults=True,
        option=Option("--expect-status", "CODE|NXX", multiple=True,
                      convert=lambda values: list(values) or None)),
    Key("expect_body", Shape.STRING, string, "substring the body must contain",
        option=Option("--expect-body", "TEXT")),
    Key("expect_body_regex", Shape.REGEX, regex, "regular expression the body must match",
        option=Option("--expect-body-regex", "REGEX")),
    MAX_BODY,
    Key("tls_expiry_warning", Shape.DURATION, duration(),
        "an HTTPS target whose certificate expires within this long is *warning* (exit 1); "
        'never a restart; `"0s"` disables; only with `tls_verify`', default="14d",
        in_defaults=True, option=Option("--tls-expiry-warning", "DURATION")),
)


def build(values: Mapping[str, Any]) -> HttpProbe:
    spec = HttpProbe(**values)
    if spec.method is Method.HEAD and (spec.expect_body or spec.expect_body_regex):
        key = "expect_body" if spec.expect_body else "expect_body_regex"
        raise Invalid(key, "cannot be checked with method HEAD (no body)")
    return spec


def argument(args: Sequence[str]) -> Mapping[str, Any] | None:
    if len(args) == 1 and args[0].lower().startswith(("http://", "https://")):
        return {"url": args[0]}
    return None


def certificate_notice(spec: HttpProbe, result: ProbeResult, now: float) -> str | None:
    """Why the target is warning because its certificate expires within tls_expiry_warning,
    or None. An expired certificate is already a `tls` failure; this only ever warns."""
    window = spec.tls_expiry_warning
    certificate = result.certificate
    if not window or certificate is None or not result.ok:
        return None
    left = certificate.not_after - now
    if left > window:
        return None
    date = dt.datetime.fromtimestamp(certificate.not_after, dt.UTC).strftime("%Y-%m-%d")
    days = max(0, int(left // 86400))
    return (f"certificate of {certificate.subject} expires on {date}, in {days} "
            f"day{'' if days == 1 else 's'} (tls_expiry_warning "
            f"{format_duration(window)})")


# --- how far a request got ------------------------------------------------------------------


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
    """What one request has reached so far; read when its deadline cuts it short."""

    spec: HttpProbe
    phase: Phase = Phase.CONNECT
    status_code: int | None = None
    certificate: Certificate | None = None
    _connected: httpcore.AsyncNetworkStream | None = None  # not yet owned by a connection

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx's `trace` extension: follow the request through its phases."""
        name = event.partition(".")[2]
        if name in ("connect_tcp.complete", "connect_unix_socket.complete"):
            self._connected = info.get("return_value")
        elif name == "start_tls.complete":
            self._connected = None
            if self.certificate is None and self.spec.reads_certificate:
                self.certificate = _peer_certificate(info.get("return_value"))
        elif name == "send_request_headers.started":
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

    def finding(self, text: str, failure: FailureClass | None = None) -> Finding:
        return Finding(text, failure, self.status_code, self.certificate)


def _peer_certificate(stream: object) -> Certificate | None:
    """The verified peer certificate's subject and expiry, from a TLS stream's SSL object."""
    get_extra_info = getattr(stream, "get_extra_info", None)
    if get_extra_info is None:
        return None
    ssl_object = get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert or "notAfter" not in cert:
        return None
    subject = dict(pair[0] for pair in cert.get("subject", ()) if pair)
    name = subject.get("commonName") or ", ".join(
        value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS") or "?"
    return Certificate(subject=str(name), not_after=float(ssl.cert_time_to_seconds(
        cert["notAfter"])))


# --- clients ------------------------------------------------------------------------------


def _fail_sniffio_fast() -> None:
    """Make httpcore's `import sniffio` fail at once when sniffio is not installed.

    httpcore 1.0 runs `import sniffio` for every lock and event it sets up, six times a request.
    anyio 4 no longer brings sniffio, and Python caches no failed import: each of those imports
    searched all of sys.path again, a third of the CPU of a big run. None in sys.modules is
    Python's way to make an import fail without a search; httpcore (and anyio) then take
    asyncio, which is what runs them.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


@dataclass(frozen=True)
class _Setup:
    """What makes two specs need different clients."""

    tls: bool  # whether the client may speak TLS at all
    verify: bool
    ca_file: str | None
    unix_socket: str | None
    redirects: bool  # follows them: keeps the cookies they set, for the next hop

    @classmethod
    def of(cls, spec: HttpProbe) -> _Setup:
        # A redirect may lead from http:// to https://, so following one may need TLS.
        tls = spec.follow_redirects or spec.url.lower().startswith("https:")
        verify = tls and spec.tls_verify
        return cls(tls, verify, spec.ca_file if verify else None, spec.unix_socket,
                   spec.follow_redirects)


@dataclass(frozen=True)
class _Prepared:
    """What every request of one spec reuses: its client, its parsed URL and headers (the
    client's merged with the spec's, as the client would), and, for a spec the client would
    add nothing to, the transport to send straight to."""

    client: httpx.AsyncClient
    url: httpx.URL
    headers: httpx.Headers  # never changed after this: httpx copies it into each request
    sni_hostname: str | None
    direct: httpx.AsyncBaseTransport | None  # None: through the client


class ClientPool:
    """The httpx clients of a run (or of the watcher's life): one per TLS/transport setup.

    Certificates are loaded only for a setup that may speak TLS, once per pool:
    - default: the system trust store (`ssl.create_default_context()`, which honours
      SSL_CERT_FILE and SSL_CERT_DIR), plus certifi's bundle only if the system has none;
    - `ca_file`: that file *instead of* the defaults, like `curl --cacert`, so a target
      pinned to an internal CA cannot be passed by a certificate from a public one;
    - `tls_verify = false`: no verification at all.
    Every probe still opens a fresh connection (no keep-alive: a kept-alive connection could
    hide a server that no longer accepts), so a pool kept across runs holds no sockets. No
    cookie is kept from one probe to the next (one that follows redirects keeps those set on
    the way, as a browser would). Proxies and other environment settings are ignored: a
    liveness probe goes straight there.

    What a spec's requests share (client, parsed URL, headers) is worked out once, in
    `prepare`, for the specs of the run; the watcher prepares the same specs every cycle, and
    that finds them ready.

    A request the client would only pass on (no redirects to follow, no user:password in the
    URL) goes straight to a transport, one per _PER_SHARD specs of a setup: httpcore's
    connection pool looks through all its connections and waiting requests whenever one comes
    or goes, so a thousand probes through one pool would cost a million such looks.
    """

    def __init__(self) -> None:
        self._clients: dict[_Setup, httpx.AsyncClient] = {}
        self._shards: dict[_Setup, list[httpx.AsyncHTTPTransport]] = {}
        self._contexts: dict[_Setup, ssl.SSLContext] = {}
        self._specs: tuple[HttpProbe, ...] = ()  # those of the last prepare()
        self._prepared: dict[int, tuple[HttpProbe, _Prepared]] = {}  # by id(spec)
        self._warmed = False

    async def prepare(self, specs: Sequence[Any]) -> None:
        """Create the clients `specs` need, and finish httpcore's lazy imports, right now.

        Both block the event loop (certificates; anyio, on a fresh process's first request);
        done inside the probes, they would count against the latency of every target probed
        at the same time. Forgets the specs of earlier runs that are not among `specs` (a
        reloaded config's).
        """
        if not specs:
            return
        if not self._warmed:
            _fail_sniffio_fast()
            import anyio
            import anyio.streams.tls
            import anyio.to_thread

            await anyio.sleep(0)  # loads anyio's asyncio backend
            self._warmed = True
        if len(specs) == len(self._specs) and all(
                spec is known for spec, known in zip(specs, self._specs, strict=True)):
            return
        self._specs, self._prepared = tuple(specs), {}
        seen: dict[_Setup, int] = {}  # specs so far of each setup
        for spec in specs:
            setup = _Setup.of(spec)
            index = seen[setup] = seen.get(setup, -1) + 1
            with contextlib.suppress(Exception):  # the probe will meet it again and report it
                self._prepared[id(spec)] = (spec, self._prepare(spec, index))

    def prepared(self, spec: HttpProbe) -> _Prepared:
        """What `spec`'s requests share: as prepared, or worked out now (not kept)."""
        found = self._prepared.get(id(spec))
        if found is not None and found[0] is spec:
            return found[1]
        return self._prepare(spec, 0)

    def _prepare(self, spec: HttpProbe, index: int) -> _Prepared:
        """`index`: how many specs of the same setup come before it in the run."""
        import httpx

        client = self.client_for(spec)
        url = httpx.URL(spec.url)
        headers = httpx.Headers(client.headers)
        headers.update(list(spec.headers))
        sni_hostname = None
        if spec.resolve and not spec.unix_socket:
            # Like curl --resolve: connect to the IP, but Host, SNI and verification use the name.
            if "host" not in headers:
                headers["Host"] = url.netloc.decode("ascii")
            sni_hostname = url.raw_host.decode("ascii")
            url = url.copy_with(host=spec.resolve)
        # The client adds redirects and the Basic auth of a URL's user:password; without
        # either, it would only pass the request on to its transport.
        direct = None if spec.follow_redirects or url.userinfo else \
            self._transport(_Setup.of(spec), index)
        return _Prepared(client, url, headers, sni_hostname, direct)

    def client_for(self, spec: HttpProbe) -> httpx.AsyncClient:
        """The client for `spec`'s setup, created on first use."""
        setup = _Setup.of(spec)
        client = self._clients.get(setup)
        if client is None:
            import httpx

            kind = httpx.AsyncClient if setup.redirects else _client_without_cookies()
            client = kind(
                transport=self._transport(setup, 0), timeout=httpx.Timeout(None),
                trust_env=False, headers=_DEFAULT_HEADERS, max_redirects=MAX_REDIRECTS,
            )
            self._clients[setup] = client
        return client

    def _transport(self, setup: _Setup, index: int) -> httpx.AsyncHTTPTransport:
        """The transport of the `index`th spec of `setup`'s, created on first use."""
        shards = self._shards.setdefault(setup, [])
        index //= _PER_SHARD
        while len(shards) <= index:
            _fail_sniffio_fast()
            import httpx

            shards.append(httpx.AsyncHTTPTransport(
                verify=self._context(setup), uds=setup.unix_socket, trust_env=False,
                # No cap: a cap would make targets queue behind hung ones.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            ))
        return shards[index]

    def _context(self, setup: _Setup) -> ssl.SSLContext:
        key = _Setup(setup.tls, setup.verify, setup.ca_file, None, False)
        context = self._contexts.get(key)
        if context is None:
            context = _ssl_context(setup)
            self._contexts[key] = context
        return context

    async def aclose(self) -> None:
        """Close every client and transport (and so every connection) of the pool."""
        clients, self._clients = list(self._clients.values()), {}
        shards, self._shards = [t for ts in self._shards.values() for t in ts[1:]], {}
        self._specs, self._prepared = (), {}
        for client in clients:
            await client.aclose()  # and its transport, a setup's shard 0
        for transport in shards:
            await transport.aclose()


@functools.cache
def _client_without_cookies() -> type[httpx.AsyncClient]:
    """An httpx.AsyncClient that keeps no cookie: nothing from one probe leaks into the next,
    and no response pays for parsing its cookies into a jar."""
    import httpx

    class NoCookies(httpx.Cookies):
        def extract_cookies(self, response: httpx.Response) -> None:
            return None

    empty = NoCookies()

    class Client(httpx.AsyncClient):
        @property
        def cookies(self) -> httpx.Cookies:
            return empty

        @cookies.setter
        def cookies(self, cookies: Any) -> None:
            return None

    return Client


class _Failed(Exception):
    """Raised inside a probe when setting it up already decided the outcome."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.reason)
        self.finding = finding


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
            text = f"cannot load ca_file {setup.ca_file}: {os_reason(exc)}"
            raise _Failed(Finding(reason(text), FailureClass.ERROR)) from None
    context = ssl.create_default_context()
    if not context.cert_store_stats()["x509_ca"]:
        with contextlib.suppress(ImportError, OSError):
            import certifi  # only for hosts without a system trust store

            context.load_verify_locations(cafile=certifi.where())
    return context


# --- the probe ------------------------------------------------------------------------------


async def probe(spec: HttpProbe, deadline: Deadline, clients: ClientPool) -> Finding:
    """One request, bounded as a whole (connect, TLS, headers, body) by `deadline`.

    httpx's own read timeout restarts with every chunk, so a server trickling a byte a second
    would never trip it; the deadline bounds the sum.
    """
    progress = Progress(spec)
    timeout = asyncio.timeout_at(deadline.at)
    try:
        async with timeout:
            return await _request(spec, clients, progress)
    except _Failed as exc:
        return exc.finding
    except Exception as exc:
        if timeout.expired():
            await progress.close_orphan()
            text = _TIMEOUT_REASONS[progress.phase].format(format_duration(deadline.seconds))
            return progress.finding(text, FailureClass.TIMEOUT)
        return _classify(exc, spec, progress)


async def _request(spec: HttpProbe, clients: ClientPool, progress: Progress) -> Finding:
    import httpx

    prepared = clients.prepared(spec)
    extensions: dict[str, Any] = {"trace": progress.trace}
    if prepared.sni_hostname is not None:
        extensions["sni_hostname"] = prepared.sni_hostname
    request = httpx.Request(spec.method.value, prepared.url, headers=prepared.headers,
                            extensions=extensions)
    if prepared.direct is not None:
        response = await prepared.direct.handle_async_request(request)
    else:
        response = await prepared.client.send(request, stream=True,
                                              follow_redirects=spec.follow_redirects)
    try:
        progress.phase = Phase.BODY
        status = progress.status_code = response.status_code
        if not any(r.matches(status) for r in spec.expect_status):
            return progress.finding(_status_reason(spec, status), FailureClass.STATUS)
        if spec.method is Method.HEAD:
            return progress.finding(f"status {status}")
        wants_body = bool(spec.expect_body or spec.expect_body_regex)
        body, over = await _read_body(response, spec.max_body, keep=wants_body)
    finally:
        await response.aclose()
    if wants_body:
        failure = _judge_body(spec, _decode(body, response.charset_encoding), over)
        if failure is not None:
            return progress.finding(failure[1], failure[0])
    return progress.finding(f"status {status}")


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


def _judge_body(spec: HttpProbe, text: str, over: bool) -> tuple[FailureClass, str] | None:
    """The failure of a body expectation, if any.

    A body over max_body is judged on its first max_body bytes: it passes if the expectation
    is met there, and is TOO_LARGE if not. Without a body expectation it is not judged at all
    (reading just stops at max_body), so only the status counts.
    """
    missing = []
    if spec.expect_body and spec.expect_body not in text:
        missing.append(f"does not contain {quote(spec.expect_body)}")
    if spec.expect_body_regex and not re.search(spec.expect_body_regex, text):
        missing.append(f"does not match /{clip(spec.expect_body_regex)}/")
    if not missing:
        return None
    if over:
        limit = size(spec.max_body)
        return FailureClass.TOO_LARGE, f"body over {limit} and its first {limit} " + missing[0]
    return FailureClass.BODY, "body " + missing[0]


def _status_reason(spec: HttpProbe, status: int) -> str:
    expected = ", ".join(str(r) for r in spec.expect_status)
    text = f"status {status}, expected {expected}"
    if 300 <= status < 400 and not spec.follow_redirects:
        text += " (a redirect; follow_redirects is off)"
    return text


# --- exceptions -> failure classes --------------------------------------------------------


def _classify(exc: Exception, spec: HttpProbe, progress: Progress) -> Finding:
    """The failure class and one-line reason for what a request raised."""
    failure, text = _failure_of(exc, spec, progress)
    if failure is FailureClass.ERROR:
        log.debug("url=%s: unexpected %s", redact_url(spec.url), type(exc).__name__,
                  exc_info=exc)
    return progress.finding(reason(text), failure)


def _failure_of(exc: Exception, spec: HttpProbe, progress: Progress) -> tuple[FailureClass, str]:
    import httpx

    if isinstance(exc, httpx.TooManyRedirects):
        return FailureClass.REDIRECT, f"more than {MAX_REDIRECTS} redirects"
    if isinstance(exc, httpx.TimeoutException):  # not expected: httpx's timeouts are off
        return FailureClass.TIMEOUT, f"timed out ({type(exc).__name__})"
    causes = list(causes_of(exc))
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
            return FailureClass.DNS, f"cannot resolve {_host(spec.url)}: {os_reason(cause)}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return FailureClass.PROTOCOL, lower_first(str(exc)) or "the server broke HTTP"
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return FailureClass.REFUSED, "connection refused"
        if isinstance(cause, FileNotFoundError) and spec.unix_socket:
            return FailureClass.REFUSED, f"no such socket {spec.unix_socket}"
    if isinstance(exc, httpx.ReadError | httpx.WriteError) and not connecting:
        return FailureClass.PROTOCOL, f"connection lost mid-response: {os_reason(causes[-1])}"
    if isinstance(exc, httpx.DecodingError):
        return FailureClass.PROTOCOL, lower_first(str(exc))
    for cause in causes:
        if isinstance(cause, ConnectionResetError):
            return FailureClass.REFUSED, "connection reset"
        if isinstance(cause, OSError) and cause.errno is not None:
            return FailureClass.CONNECT, f"cannot connect: {os_reason(cause)}"
    if isinstance(exc, httpx.ConnectError):
        return FailureClass.CONNECT, f"cannot connect: {os_reason(causes[-1])}"
    return FailureClass.ERROR, f"{type(exc).__name__}: {exc}"


def causes_of(exc: BaseException) -> Iterator[BaseException]:
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


def _host(target_url: str) -> str:
    try:
        return urlsplit(target_url).hostname or "?"
    except ValueError:
        return "?"


KIND: ProbeKind[HttpProbe, ClientPool] = ProbeKind(
    name="http",
    spec=HttpProbe,
    keys=KEYS,
    selectors=("url", "unix_socket"),
    build=build,
    probe=probe,
    context=ClientPool,
    argument=Argument("URL", "an http:// or https:// URL", argument),
    notice=certificate_notice,
)
