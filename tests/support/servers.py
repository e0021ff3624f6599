"""Real servers for tests: HTTP/1.x over loopback TCP (port 0) or a Unix socket, one per test.

    with serve(answer(200, b"OK")) as server:
        target = Target(name="web", probe=HttpProbe(url=server.url("/health")))

A `Server` runs one thread to accept and one per connection; each connection reads one
request, records it in `server.requests` and hands it to a `Handler`, a plain function of an
`Exchange`. Closing the server (leaving the `with`) stops every handler within a tick, even
one that hangs or streams a gibibyte, and closes every socket.

Behaviours: answer, health, hang, trickle, huge, redirect, redirect_loop, close_mid_response,
disconnect, http10, chunked, flaky, slow. Also: Certs (a trustme CA, certificates for
example.test/127.0.0.1/localhost, expired and self-signed ones), refused_port, full_backlog,
Listening (a port that stops listening and listens again).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TypeVar

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "GIB",
    "SERVER_NAMES",
    "TICK",
    "Certs",
    "Exchange",
    "Handler",
    "Listening",
    "Request",
    "Server",
    "answer",
    "chunked",
    "close_mid_response",
    "disconnect",
    "flaky",
    "full_backlog",
    "hang",
    "head",
    "health",
    "http10",
    "huge",
    "redirect",
    "redirect_loop",
    "refused_port",
    "serve",
    "slow",
    "trickle",
]

GIB = 1 << 30
TICK = 0.05  # how often blocked server threads look whether the server is closing
_MAX_HEAD = 64 * 1024
_HANDSHAKE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Request:
    """One request as the server read it (its body, if any, is not read)."""

    method: str
    path: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class Exchange:
    """One request on one connection, as a handler sees it."""

    def __init__(self, conn: socket.socket, request: Request, stop: threading.Event) -> None:
        self.request = request
        self._conn = conn
        self._stop = stop

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float | None = None) -> bool:
        """Sleep `seconds` (None: until the server closes); True if it is still running."""
        return not self._stop.wait(seconds)

    def send(self, data: bytes) -> bool:
        """Send all of `data`; False if the client went away or the server is closing."""
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                return False
            try:
                sent = self._conn.send(view)
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
        return True

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        *,
        version: str = "HTTP/1.1",
        length: bool = True,
    ) -> bool:
        """Send a whole response; `length=False` leaves out Content-Length."""
        extra = [*headers, ("Connection", "close")]
        if length:
            extra.append(("Content-Length", str(len(body))))
        payload = b"" if self.request.method == "HEAD" else body
        return self.send(head(status, extra, version=version) + payload)


Handler = Callable[[Exchange], None]


def head(status: int, headers: Sequence[tuple[str, str]] = (), *, version: str = "HTTP/1.1"
         ) -> bytes:
    """A status line and headers, up to and including the blank line."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"{version} {status} {phrase}", *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


class Server:
    """A threaded HTTP/1.x server on 127.0.0.1:0 (TLS with `tls`) or on the Unix socket `unix_path`
    (or on `host`, "::1" or another loopback address, and `port`, for a test of which one a
    client reached).

    With `handler=None` it accepts connections and then neither reads nor writes a byte, not
    even a TLS handshake. A client that does not speak HTTP gets a 400, as from nginx. With
    `tls`, the SNI of each handshake is recorded through the context's `sni_callback`, so give
    each server a context of its own. Use it as a context manager (`serve` does); `close` is
    idempotent.
    """

    def __init__(
        self,
        handler: Handler | None,
        *,
        tls: ssl.SSLContext | None = None,
        unix_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[Request] = []
        self.server_names: list[str | None] = []  # the SNI of each TLS handshake
        self.unix_path = None if unix_path is None else os.fspath(unix_path)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        if tls is not None:
            tls.sni_callback = self._record_sni
        if self.unix_path is not None:
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(self.unix_path)
            self.host, self.port = "localhost", 0
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._listener = socket.socket(family, socket.SOCK_STREAM)
            self._listener.bind((host, port))
            self.host, self.port = self._listener.getsockname()[:2]
        self._listener.listen(128)
        self._acceptor = threading.Thread(target=self._accept_loop, name="server-accept")
        self._acceptor.start()

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def url(self, path: str = "/", host: str | None = None) -> str:
        """The URL of `path` here; `host` replaces 127.0.0.1 (the port stays)."""
        if self.unix_path is not None:
            return f"http://{host or 'localhost'}{path}"
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        """Stop every handler, join every thread, close every socket."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
        if self.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record_sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
                    context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._listener], [], [], TICK)
            if not readable:
                continue
            conn, _ = self._listener.accept()
            thread = threading.Thread(target=self._serve, args=(conn,), name="server-conn")
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(conn)
            if self.handler is None:
                self._stop.wait()
                return
            try:
                if self.tls is not None:
                    conn.settimeout(_HANDSHAKE_TIMEOUT)
                    conn = stack.enter_context(self.tls.wrap_socket(conn, server_side=True))
                conn.settimeout(TICK)
                request = _read_request(conn, self._stop)
            except OSError:  # a client that rejected our certificate, went away, ...
                return
            if request is None:
                return
            if not request.method.isalpha():  # not HTTP (a TLS handshake?): answer like nginx
                Exchange(conn, request, self._stop).respond(400, b"Bad Request")
                return
            self.requests.append(request)
            self.handler(Exchange(conn, request, self._stop))


def _read_request(conn: socket.socket, stop: threading.Event) -> Request | None:
    """The request's head; a garbage Request (method "?") if the client does not speak HTTP."""
    data = b""
    while b"\r\n\r\n" not in data:
        if data[:1] and not data[:1].isalpha():
            return Request("?", "", "", ())
        if stop.is_set() or len(data) > _MAX_HEAD:
            return None
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            return None
        data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, path, version = ([*lines[0].split(" ", 2), "", ""])[:3]
    headers = tuple(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    )
    return Request(method, path, version, headers)


@contextlib.contextmanager
def serve(
    handler: Handler | None,
    *,
    tls: ssl.SSLContext | None = None,
    unix_path: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[Server]:
    """A running `Server`, closed when the block ends."""
    with Server(handler, tls=tls, unix_path=unix_path, host=host, port=port) as server:
        yield server


S = TypeVar("S", bound=socketserver.BaseServer)


@contextlib.contextmanager
def serving(server: S) -> Iterator[S]:
    """A standard-library server (http.server's, for a protocol `Server` does not speak) served
    from a thread for the block, then shut down, joined and closed."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=type(server).__name__)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


# --- behaviours ---------------------------------------------------------------------------


def answer(status: int = 200, body: bytes = b"OK",
           headers: Sequence[tuple[str, str]] = (("Content-Type", "text/plain"),)) -> Handler:
    """Answer every request with `status` and `body`."""

    def handle(exchange: Exchange) -> None:
        exchange.respond(status, body, headers)

    return handle


def health() -> Handler:
    """Mastodon-like: /health answers 200 "OK", anything else 404."""

    def handle(exchange: Exchange) -> None:
        if exchange.request.path.split("?")[0] == "/health":
            exchange.respond(200, b"OK", [("Content-Type", "text/plain; charset=utf-8")])
        else:
            exchange.respond(404, b"Not Found")

    return handle


def hang() -> Handler:
    """Accept and read the request, then never answer."""

    def handle(exchange: Exchange) -> None:
        exchange.wait()

    return handle


def trickle(interval: float = 0.5, body: bytes = b"OK" * 16, *,
            headers_first: bool = False) -> Handler:
    """Send the response one byte every `interval` (after the headers, with `headers_first`)."""

    def handle(exchange: Exchange) -> None:
        start = head(200, [("Content-Length", str(len(body))), ("Connection", "close")])
        if headers_first:
            if not exchange.send(start):
                return
            start = b""
        for byte in start + body:
            if not (exchange.send(bytes([byte])) and exchange.wait(interval)):
                return

    return handle


def huge(size: int = GIB, chunk: int = 64 * 1024, fill: bytes = b"x") -> Handler:
    """Stream `size` bytes of `fill` (never all in memory); stop when the client goes away."""

    def handle(exchange: Exchange) -> None:
        if not exchange.send(head(200, [("Content-Length", str(size)), ("Connection", "close")])):
            return
        block = memoryview(fill * (chunk // len(fill) or 1))
        left = size
        while left > 0:
            part = block[: min(left, len(block))]
            if not exchange.send(bytes(part)):
                return
            left -= len(part)

    return handle


def redirect(location: str, then: Handler | None = None) -> Handler:
    """Redirect every path but `location` there; serve `location` like `then` (default: 200)."""
    target = then or answer()

    def handle(exchange: Exchange) -> None:
        if exchange.request.path == location:
            target(exchange)
        else:
            exchange.respond(302, b"", [("Location", location)])

    return handle


def redirect_loop() -> Handler:
    """Redirect every request to itself, forever."""

    def handle(exchange: Exchange) -> None:
        exchange.respond(302, b"", [("Location", exchange.request.path)])

    return handle


def close_mid_response() -> Handler:
    """Promise 100 bytes, send the headers and 10 of them, then drop the connection."""

    def handle(exchange: Exchange) -> None:
        exchange.send(head(200, [("Content-Length", "100")]) + b"0123456789")

    return handle


def disconnect() -> Handler:
    """Read the request, then close without a word."""

    def handle(exchange: Exchange) -> None:
        return None

    return handle


def http10(body: bytes = b"OK") -> Handler:
    """An HTTP/1.0 answer without Content-Length: the body ends when the connection does."""

    def handle(exchange: Exchange) -> None:
        exchange.respond(200, body, version="HTTP/1.0", length=False)

    return handle


def chunked(parts: Sequence[bytes] = (b"O", b"K", b", all good")) -> Handler:
    """A chunked body, one chunk per part."""

    def handle(exchange: Exchange) -> None:
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
        exchange.send(head(200, [("Transfer-Encoding", "chunked"), ("Connection", "close")])
                      + payload)

    return handle


def flaky(failures: int, then: Handler | None = None) -> Handler:
    """Answer 500 to the first `failures` requests, then behave like `then` (default: 200 OK)."""
    lock = threading.Lock()
    seen = 0
    healthy = then or answer()

    def handle(exchange: Exchange) -> None:
        nonlocal seen
        with lock:
            seen += 1
            failing = seen <= failures
        if failing:
            exchange.respond(500, b"not yet")
        else:
            healthy(exchange)

    return handle


def slow(delay: float, then: Handler | None = None) -> Handler:
    """Wait `delay` seconds, then behave like `then` (default: 200 OK)."""
    healthy = then or answer()

    def handle(exchange: Exchange) -> None:
        if exchange.wait(delay):
            healthy(exchange)

    return handle


# --- sockets that refuse or never connect -------------------------------------------------


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed: free, unless raced)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a new connect hangs (SYNs are dropped)."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(2):  # Linux queues backlog + 1 connections
            filler = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port


class Listening:
    """A loopback port that takes connections (a `tcp` probe passes; nothing is ever read)
    until `close`, and refuses them until `reopen` listens on the same port again. Use it as a
    context manager."""

    def __init__(self) -> None:
        self.port = 0
        self._listener: socket.socket | None = None
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        self.reopen()

    def reopen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        with self._lock:
            self.port, self._listener = listener.getsockname()[1], listener

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def refuse_for(self, seconds: float) -> None:
        """Stop listening now, and listen again `seconds` later, from a thread."""
        self.close()
        timer = threading.Timer(seconds, self.reopen)
        self._timers.append(timer)
        timer.start()

    def __enter__(self) -> Listening:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for timer in self._timers:
            timer.cancel()
            timer.join()
        self.close()


# --- certificates -------------------------------------------------------------------------

SERVER_NAMES = ("example.test", "127.0.0.1", "localhost")


class Certs:
    """A trustme CA (its PEM in `ca_file`) and server certificates for `SERVER_NAMES`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_file = str(directory / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self, *names: str, expired: bool = False,
                       valid_for: datetime.timedelta | None = None) -> ssl.SSLContext:
        """A server context with a CA-issued certificate for `names` (default SERVER_NAMES),
        expired, or expiring `valid_for` from now."""
        now = datetime.datetime.now(datetime.UTC)
        not_before = now - datetime.timedelta(days=30) if expired or valid_for else None
        not_after = now - datetime.timedelta(days=1) if expired else None
        if valid_for is not None:
            not_after = now + valid_for
        cert = self.ca.issue_cert(*(names or SERVER_NAMES), not_before=not_before,
                                  not_after=not_after)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    def self_signed_context(self, *names: str) -> ssl.SSLContext:
        """A server context with a self-signed certificate (issuer = subject) for `names`."""
        names = names or SERVER_NAMES
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_file = self.directory / "self-signed.pem"
        key_file = self.directory / "self-signed.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        return context


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
