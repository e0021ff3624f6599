"""The HTTP probe kind: one request (over TCP, TLS or a Unix socket), and its redirects if it
follows them, judged on status and body.

httpx is imported when the first transport is made, not with this module: the config, `validate`
and `status` read the spec and keys below without paying for it. Reasons never hold header
values or URLs (either may carry secrets).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import importlib.util
import logging
import re
import socket
import ssl
import sys
import zlib
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from prober import __version__
from prober.core.keys import (
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
from prober.core.keys import headers as headers_value
from prober.core.kinds import Argument, Invalid, ProbeKind
from prober.core.results import Certificate, Deadline, FailureClass, Finding, ProbeResult
from prober.core.text import clip, lower_first, os_reason, quote, reason, redact_url, size
from prober.probes.shared import DEFAULT_MAX_BODY, MAX_BODY, search

if TYPE_CHECKING:
    import httpcore
    import httpx

log = logging.getLogger("prober")

MAX_REDIRECTS = 10
_PER_SHARD = 32  # specs whose requests share one transport (one httpcore connection pool)
_DEFAULT_HEADERS = {
    "Accept": "*/*",
    "User-Agent": f"prober/{__version__}",
    # Asked, not relied on: a body compressed anyway is decoded only up to max_body.
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
        option=Option("--header", "'NAME: VALUE'", "an extra request header, the flag again "
                      "for more; values never appear in output", multiple=True,
                      convert=_header_option)),
    Key("resolve", Shape.IP, ip_address,
        "connect to this IP but keep the URL's host for Host and TLS SNI/verification "
        "(like `curl --resolve`), for every redirect to that same host too",
        option=Option("--resolve", "IP", "Connect to IP, keep the URL's host (curl-style).")),
    Key("tls_verify", Shape.BOOLEAN, boolean, "verify certificates", default="true",
        in_defaults=True,
        option=Option("--insecure", help="Do not verify TLS certificates.", is_flag=True,
                      convert=lambda on: False if on else None)),
    Key("ca_file", Shape.PATH, absolute_path,
        "PEM file of CA certificates to trust for this target (instead of the system's)",
        in_defaults=True, option=Option("--ca-file", "PATH"), existing_file=True),
    Key("follow_redirects", Shape.BOOLEAN, boolean, "follow redirects, at most 10 (more, or "
        "a loop, fail as `redirect`), never reading their bodies, keeping no cookie; the URL's "
        "user:password and `headers` go to the target's own host only", default="false",
        in_defaults=True,
        option=Option("--follow-redirects", is_flag=True, convert=lambda on: True if on else None)),
    Key("expect_status", Shape.STATUSES, parse_statuses,
        'list of codes and classes: `[200, "3xx"]`', default='["2xx"]', in_defaults=True,
        option=Option("--expect-status", "CODE|NXX", "a code or class the status must be "
                      "(200, 3xx); the flag again for more", multiple=True,
                      convert=lambda values: list(values) or None)),
    Key("expect_body", Shape.STRING, string, "substring the body must contain",
        option=Option("--expect-body", "TEXT")),
    Key("expect_body_regex", Shape.REGEX, regex, "regular expression (Python's `re`) the body "
        "must match; matched in a child process, killed (failing as `timeout`) at the target's "
        "`timeout`",
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
    MATCH = "match"  # of expect_body_regex, once the body is in


_TIMEOUT_REASONS = {
    Phase.CONNECT: "no connection within {}",
    Phase.TLS: "no TLS handshake within {}",
    Phase.HEADERS: "no response headers within {}",
    Phase.BODY: "body incomplete after {}",
    Phase.MATCH: "expect_body_regex did not finish within {}",
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
    """What makes two specs need different transports."""

    tls: bool  # whether the transport may speak TLS at all
    verify: bool
    ca_file: str | None
    unix_socket: str | None

    @classmethod
    def of(cls, spec: HttpProbe) -> _Setup:
        # A redirect may lead from http:// to https://, so following one may need TLS.
        tls = spec.follow_redirects or spec.url.lower().startswith("https:")
        verify = tls and spec.tls_verify
        return cls(tls, verify, spec.ca_file if verify else None, spec.unix_socket)


@dataclass(frozen=True)
class _Hop:
    """One request of a probe: the URL it names (a redirect's Location is resolved against it),
    the URL connected to (`resolve`'s IP in place of the host, while on the target's host), its
    headers and its TLS server name."""

    url: httpx.URL
    connect: httpx.URL
    headers: httpx.Headers  # never changed after this: httpx copies it into each request
    sni_hostname: str | None


@dataclass(frozen=True)
class _Prepared:
    """What every request of one spec reuses: its transport and its first hop."""

    transport: httpx.AsyncBaseTransport
    first: _Hop


class ClientPool:
    """The httpx transports of a run (or of the watcher's life): per TLS/transport setup.

    Certificates are loaded only for a setup that may speak TLS, once per pool:
    - default: the system trust store (`ssl.create_default_context()`, which honours
      SSL_CERT_FILE and SSL_CERT_DIR), plus certifi's bundle only if the system has none;
    - `ca_file`: that file *instead of* the defaults, like `curl --cacert`, so a target
      pinned to an internal CA cannot be passed by a certificate from a public one;
    - `tls_verify = false`: no verification at all.
    Every probe still opens a fresh connection (no keep-alive: a kept-alive connection could
    hide a server that no longer accepts), so a pool kept across runs holds no sockets.
    Requests go straight to a transport, never through an httpx client: prober follows
    redirects itself, hop by hop (see `_next_hop`), and keeps no cookie at all, not even from
    one hop to the next. Proxies and other environment settings are ignored: a liveness probe
    goes straight there.

    What a spec's requests share (transport, first hop) is worked out once, in `prepare`, for
    the specs of the run; the watcher prepares the same specs every cycle, and that finds them
    ready.

    There is one transport per _PER_SHARD specs of a setup: httpcore's connection pool looks
    through all its connections and waiting requests whenever one comes or goes, so a
    thousand probes through one pool would cost a million such looks.
    """

    def __init__(self) -> None:
        self._shards: dict[_Setup, list[httpx.AsyncHTTPTransport]] = {}
        self._contexts: dict[_Setup, ssl.SSLContext] = {}
        self._specs: tuple[HttpProbe, ...] = ()  # those of the last prepare()
        self._prepared: dict[int, tuple[HttpProbe, _Prepared]] = {}  # by id(spec)
        self._warmed = False

    async def prepare(self, specs: Sequence[Any]) -> None:
        """Create the transports `specs` need, and finish httpcore's lazy imports, right now.

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

        transport = self._transport(_Setup.of(spec), index)
        return _Prepared(transport, _hop(spec, httpx.URL(spec.url)))

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
        key = _Setup(setup.tls, setup.verify, setup.ca_file, None)
        context = self._contexts.get(key)
        if context is None:
            context = _ssl_context(setup)
            self._contexts[key] = context
        return context

    async def aclose(self) -> None:
        """Close every transport (and so every connection) of the pool."""
        shards, self._shards = [t for ts in self._shards.values() for t in ts], {}
        self._specs, self._prepared = (), {}
        for transport in shards:
            await transport.aclose()


def _hop(spec: HttpProbe, url: httpx.URL) -> _Hop:
    """The request of `spec` to `url`, the target's own URL or where a redirect led.

    On the target's host it is pinned to `resolve` (like `curl --resolve`: connect to the IP,
    but Host, SNI and verification use the name) and carries the credentials of the URL's
    user:password and the spec's `headers`. On another host, or on the same one over plain
    http after https, it carries neither and goes where the name resolves.
    """
    import httpx

    own = httpx.URL(spec.url)
    headers = httpx.Headers(_DEFAULT_HEADERS)
    same_host = url.host == own.host
    if same_host and not (own.scheme == "https" and url.scheme == "http"):
        headers.update(list(spec.headers))
        if own.userinfo:
            credentials = f"{own.username}:{own.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    if not (spec.resolve and same_host and not spec.unix_socket):
        return _Hop(url, url, headers, None)
    if "host" not in headers:
        headers["Host"] = url.netloc.decode("ascii")
    return _Hop(url, url.copy_with(host=spec.resolve), headers, url.raw_host.decode("ascii"))


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
    """One request (and its redirects), bounded as a whole (connect, TLS, headers, body, the
    match of `expect_body_regex`) by `deadline`.

    httpx's own read timeout restarts with every chunk, so a server trickling a byte a second
    would never trip it; the deadline bounds the sum.
    """
    progress = Progress(spec)
    timeout = asyncio.timeout_at(deadline.at)
    try:
        async with timeout:
            return await _request(spec, clients, progress, deadline)
    except _Failed as exc:
        return exc.finding
    except Exception as exc:
        if timeout.expired():
            await progress.close_orphan()
            return progress.finding(_timeout_reason(progress.phase, deadline),
                                    FailureClass.TIMEOUT)
        return _classify(exc, spec, progress)


def _timeout_reason(phase: Phase, deadline: Deadline) -> str:
    return _TIMEOUT_REASONS[phase].format(format_duration(deadline.seconds))


async def _request(spec: HttpProbe, clients: ClientPool, progress: Progress,
                   deadline: Deadline) -> Finding:
    response = await _follow(spec, clients, progress)
    try:
        progress.phase = Phase.BODY
        status = progress.status_code = response.status_code
        if not any(r.matches(status) for r in spec.expect_status):
            return progress.finding(_status_reason(spec, status), FailureClass.STATUS)
        if spec.method is Method.HEAD:
            return progress.finding(f"status {status}")
        wants_body = bool(spec.expect_body or spec.expect_body_regex)
        try:
            body, over = await _read_body(response, spec.max_body, keep=wants_body)
        except zlib.error as exc:
            return progress.finding(reason(f"body not decodable: {exc}"), FailureClass.PROTOCOL)
    finally:
        await response.aclose()
    if wants_body:
        text = _decode(body, response.charset_encoding)
        failure = await _judge_body(spec, text, over, progress, deadline)
        if failure is not None:
            return progress.finding(failure[1], failure[0])
    return progress.finding(f"status {status}")


_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def _follow(spec: HttpProbe, clients: ClientPool, progress: Progress) -> httpx.Response:
    """The response to the spec's request, after its redirects if it follows them.

    prober follows them itself, hop by hop: a redirect's body is never read (only its head),
    at most MAX_REDIRECTS are followed, and each hop is pinned, and carries the spec's
    credentials and headers, as `_hop` decides.
    """
    prepared = clients.prepared(spec)
    hop = prepared.first
    for _ in range(MAX_REDIRECTS + 1):
        response = await _send(prepared.transport, spec, hop, progress)
        location = response.headers.get("Location")
        if not (spec.follow_redirects and response.status_code in _REDIRECT_STATUSES
                and location):
            return response
        await response.aclose()
        hop = _next_hop(spec, hop, location, progress)
    raise _Failed(progress.finding(f"more than {MAX_REDIRECTS} redirects",
                                   FailureClass.REDIRECT))


async def _send(transport: httpx.AsyncBaseTransport, spec: HttpProbe, hop: _Hop,
                progress: Progress) -> httpx.Response:
    import httpx

    extensions: dict[str, Any] = {"trace": progress.trace}
    if hop.sni_hostname is not None:
        extensions["sni_hostname"] = hop.sni_hostname
    request = httpx.Request(spec.method.value, hop.connect, headers=hop.headers,
                            extensions=extensions)
    return await transport.handle_async_request(request)


def _next_hop(spec: HttpProbe, hop: _Hop, location: str, progress: Progress) -> _Hop:
    """The hop a redirect from `hop` to `location` leads to."""
    import httpx

    try:
        url = hop.url.join(location)
    except httpx.InvalidURL:
        raise _Failed(progress.finding("a redirect to an invalid URL",
                                       FailureClass.REDIRECT)) from None
    if url.scheme not in ("http", "https"):
        text = f"a redirect to {clip(url.scheme, 16)}:, not http or https"
        raise _Failed(progress.finding(reason(text), FailureClass.REDIRECT))
    if not url.host:
        raise _Failed(progress.finding("a redirect to a URL without a host",
                                       FailureClass.REDIRECT))
    return _hop(spec, url)


async def _read_body(response: httpx.Response, limit: int, *, keep: bool) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body, decoded (only counted, not decoded, unless `keep`),
    and whether there was more.

    Reading stops once more than `limit` bytes came, as sent or once decoded: memory stays
    bounded whatever the server sends, a gzip bomb included. A body compressed although
    prober asked for none (a proxy that compresses anyway) is decoded as it streams in.
    """
    decoder = _Decoder.of(response.headers) if keep else None
    body = bytearray()
    seen = 0
    # An async generator, typed as an iterator: close it, as the loop may stop early.
    stream = cast(AsyncGenerator[bytes, None], response.aiter_raw())
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            seen += len(chunk)
            if decoder is not None:
                body += decoder.decode(chunk, limit + 1 - len(body))
            if seen > limit or len(body) > limit:
                return bytes(body[:limit]), True
    return bytes(body), False


_CHUNK = 64 * 1024  # what one inner layer of a body's codings passes on to the next at most


class _Decoder:
    """A body's content codings (gzip, deflate, or several), undone as it streams in, never
    making more than asked for: each layer's output is bounded, so no layer can blow up."""

    def __init__(self, layers: int) -> None:
        # zlib's automatic header detection: gzip, or zlib-wrapped deflate.
        self._layers = [zlib.decompressobj(zlib.MAX_WBITS | 32) for _ in range(layers)]
        self._pending = [b""] * layers  # each layer's input, not yet decompressed

    @classmethod
    def of(cls, headers: httpx.Headers) -> _Decoder:
        """The decoder of the response's Content-Encoding; none for a coding it does not
        know (the body is then judged as it came)."""
        codings = [coding.strip().lower() for value in headers.get_list("Content-Encoding")
                   for coding in value.split(",")]
        codings = [coding for coding in codings if coding not in ("", "identity")]
        if not all(coding in ("gzip", "x-gzip", "deflate") for coding in codings):
            return cls(0)
        return cls(len(codings))

    def decode(self, data: bytes, wanted: int) -> bytes:
        """Up to `wanted` more bytes of the decoded body, now that `data` came."""
        if not self._layers:
            return data[:wanted]
        self._pending[0] += data
        return self._pull(len(self._layers) - 1, wanted)

    def _pull(self, index: int, wanted: int) -> bytes:
        """Up to `wanted` bytes out of layer `index`, fed from the layer before it."""
        layer = self._layers[index]
        out = bytearray()
        while len(out) < wanted and not layer.eof:
            if not self._pending[index]:
                if index == 0:
                    break
                self._pending[index] = self._pull(index - 1, _CHUNK)
                if not self._pending[index]:
                    break
            out += layer.decompress(self._pending[index], wanted - len(out))
            self._pending[index] = layer.unconsumed_tail
        return bytes(out)


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


async def _judge_body(spec: HttpProbe, text: str, over: bool, progress: Progress,
                      deadline: Deadline) -> tuple[FailureClass, str] | None:
    """The failure of a body expectation, if any.

    A body over max_body is judged on its first max_body bytes: it passes if the expectation
    is met there, and is TOO_LARGE if not. Without a body expectation it is not judged at all
    (reading just stops at max_body), so only the status counts.
    """
    missing = []
    if spec.expect_body and spec.expect_body not in text:
        missing.append(f"does not contain {quote(spec.expect_body)}")
    if spec.expect_body_regex:
        progress.phase = Phase.MATCH
        found = await search(spec.expect_body_regex, text, deadline)
        if found is None:
            return FailureClass.TIMEOUT, _timeout_reason(Phase.MATCH, deadline)
        if not found:
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
