"""A small read-only HTTP/1.1 server for the watcher: `/metrics`, `/status.json` and `/`.

It runs inside the watcher's own event loop (`await serve(...)`), renders every answer from the
`Snapshot` its caller hands it at the time of the request, and changes nothing. HTTP is parsed
by h11, not by hand.

Binding: the caller passes the address. The default (`listen = "127.0.0.1:9813"`) is loopback;
a non-loopback address is the operator's explicit choice, and then anyone who can reach the
port can read what prober knows (no secret is ever in it; the README shows how to put
authentication in front with caddy or nginx).

What a client cannot do to the watcher: send a request larger than `max_request` bytes (431 or
413), take longer than `head_timeout` to send its request line and headers, hold a connection
open longer than `timeout` (it is dropped, whatever it has sent), or shut others out by holding
connections: at `max_connections`, a newcomer evicts the oldest connection still waiting for
(the rest of) its request, idle or trickling. Only one that has settled (the loop has gone
round since it came, so a request sent at once has been read) is evicted: a burst of newcomers
cannot evict one of its own, and may take the server over the cap for that moment, up to four
times it; beyond that, or when every connection is being answered, a newcomer is closed at once.
Each connection's buffers (the kernel's and the stream's) hold about one request before it is
read, and the soft limit on open files is raised to make room for them all. One request per
connection, answered with `Connection: close`. Nothing raises into the caller's loop: a
client's misbehaviour, leaving mid-request included, is logged once per connection at debug
level; a response that cannot be rendered (a bug) is a 500, logged once as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11

from prober.core.errors import ProberError
from prober.core.runs import Snapshot
from prober.core.text import os_reason
from prober.io.limits import USUAL_SOFT_LIMIT, raise_open_files

__all__ = ["Response", "WebServer", "route", "serve"]

log = logging.getLogger("prober")

MAX_REQUEST = 16 * 1024  # bytes of request line + headers, and of a body
HEAD_TIMEOUT = 2.0  # seconds a connection may take to send its request line and headers
TIMEOUT = 10.0  # seconds a connection may take to send its request and read the answer
MAX_CONNECTIONS = 256
_CHUNK = 4096
# Connections the kernel may hold for the server to accept: a flood of reconnecting clients
# must not fill the queue, or a scraper's connection waits for the kernel's SYN retry.
_BACKLOG = 1024
# Loop iterations from accepting a connection to its first step: each may accept a backlog more.
_ACCEPT_ROUNDS = 3
# Loop iterations after a connection's arrival before it may be evicted: by then the request of
# a client that sent it at once has been read, so a burst of arrivals cannot evict its own.
_SETTLE_ROUNDS = 3
_BURST = 4  # connections open at most, in max_connections, while newcomers settle
_LINGER, _LINGER_BYTES = 1.0, 1 << 20  # reading what follows a refused request: at most

_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    # No script may run, nothing loads from elsewhere, and no other site may frame the page.
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("Connection", "close"),
]


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    allow: str | None = None


def _text(status: int, message: str, allow: str | None = None) -> Response:
    return Response(status, "text/plain; charset=utf-8", f"{message}\n".encode(), allow)


def _metrics(snapshot: Snapshot, hostname: str | None) -> Response:
    from prober.outputs import metrics

    return Response(200, metrics.CONTENT_TYPE, metrics.exposition(snapshot))


def _status_json(snapshot: Snapshot, hostname: str | None) -> Response:
    from prober.outputs import report

    text = report.dumps(report.status_json(snapshot.config, snapshot.state, snapshot.now))
    return Response(200, "application/json", f"{text}\n".encode())


def _page(snapshot: Snapshot, hostname: str | None, query: str = "") -> Response:
    from prober.outputs import page

    return Response(200, "text/html; charset=utf-8", page.render(
        snapshot, hostname=hostname, window=page.window_of(query)).encode())


ROUTES: dict[str, Callable[[Snapshot, str | None], Response]] = {
    "/metrics": _metrics,
    "/status.json": _status_json,
    "/": _page,
}
_ALLOWED = "GET, HEAD"


def route(method: str, target: str) -> Callable[[Snapshot, str | None], Response] | Response:
    """The renderer of a request's document, or the answer to a request that has none."""
    path, _, query = target.partition("?")
    found = ROUTES.get(path)
    if found is None:
        return _text(404, f"not found: the endpoints are {', '.join(ROUTES)}")
    if method not in ("GET", "HEAD"):
        return _text(405, f"method not allowed: {_ALLOWED} only", _ALLOWED)
    if found is _page and query:
        return functools.partial(_page, query=query)
    return found


class _Dropped(Exception):
    """The connection ends without an answer: the client left or broke the protocol late."""


class _TooLarge(Exception):
    """The request is larger than allowed: its head (431) or its body (413)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class WebServer:
    """The running server: its bound `port`, and `close()`."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, head_timeout: float,
                 timeout: float, max_request: int, max_connections: int,
                 hostname: str | None) -> None:
        self._snapshot = snapshot
        self._hostname = hostname
        self._head_timeout = head_timeout
        self._timeout = timeout
        self._max_request = max_request
        self._max_connections = max_connections
        self._connections: set[asyncio.Task[None]] = set()
        # Those still waiting for (the rest of) their request, oldest first: peer, arrival round.
        self._waiting: dict[asyncio.Task[None], tuple[object, int]] = {}
        self._round = self._last_arrival = 0  # loop iterations, counted while connections arrive
        self._turning: asyncio.Handle | None = None
        self._evicted: set[asyncio.Task[None]] = set()  # cancelled, their task not yet ended
        self._rendering = asyncio.Semaphore(1)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        # The connections it holds, and those the kernel hands it before it has looked at them.
        _room_for(_BURST * self._max_connections + _ACCEPT_ROUNDS * _BACKLOG)
        try:
            self._server = await asyncio.start_server(self._connected, host, port,
                                                      backlog=_BACKLOG, limit=self._max_request)
        except OSError as exc:
            raise ProberError(f"cannot listen on {host}:{port}: {os_reason(exc)}",
                              "choose another address with listen = \"HOST:PORT\" or "
                              "--listen") from None
        # What a connection can make the server hold before it reads: the kernel's buffer
        # (inherited from the listening socket) and the stream's, each about a request.
        for sock in self._server.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._max_request)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop the connections still open."""
        if self._server is not None:
            self._server.close()
        if self._turning is not None:
            self._turning.cancel()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _arrive(self) -> int:
        """The round a connection arrives in; rounds go on while one has not settled."""
        self._last_arrival = self._round
        if self._turning is None:
            self._turning = asyncio.get_running_loop().call_soon(self._turn)
        return self._round

    def _turn(self) -> None:
        self._round += 1
        self._turning = None
        if self._round - self._last_arrival < _SETTLE_ROUNDS:
            self._turning = asyncio.get_running_loop().call_soon(self._turn)

    def _open(self) -> int:
        return len(self._connections) - len(self._evicted)

    def _make_room(self) -> None:
        """Evict the oldest connections still waiting for their request, settled ones only,
        until there is room for one more."""
        while self._open() >= self._max_connections and self._waiting:
            task, (peer, arrived) = next(iter(self._waiting.items()))
            if self._round - arrived < _SETTLE_ROUNDS:
                return
            del self._waiting[task]
            self._evicted.add(task)
            log.debug("web: %s: evicted, waiting for its request when the connections were "
                      "full", peer)
            task.cancel()

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        arrived = self._arrive()
        self._make_room()
        # Over the cap only while a burst of newcomers settles; refused beyond that.
        if self._open() >= _BURST * self._max_connections:
            log.debug("web: %s: too many connections, closed", peer)
            writer.transport.abort()
            return
        self._connections.add(task)
        self._waiting[task] = (peer, arrived)
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange(task, reader, writer)
                writer.close()  # after what is buffered has been sent
                await writer.wait_closed()
        except TimeoutError:
            log.debug("web: %s: dropped after %gs", peer, self._timeout)
        except (_Dropped, OSError, h11.ProtocolError) as exc:
            log.debug("web: %s: %s", peer, os_reason(exc))
        except asyncio.CancelledError:
            pass  # evicted, or close() is ending this connection; the loop keeps going
        except Exception:
            log.exception("web: %s: internal error", peer)
        finally:
            self._connections.discard(task)
            self._evicted.discard(task)
            self._waiting.pop(task, None)
            writer.transport.abort()  # at once, whatever is left: a no-op once closed

    async def _exchange(self, task: asyncio.Task[None], reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_request)
        try:
            request = await self._read_request(conn, reader)
        except h11.RemoteProtocolError as exc:
            await self._refuse(conn, reader, writer, _text(exc.error_status_hint, "bad request"))
            raise _Dropped(f"bad request: {exc}") from None
        except _TooLarge as exc:
            await self._refuse(conn, reader, writer, _text(exc.status, "request too large"))
            raise _Dropped("request too large") from None
        self._waiting.pop(task, None)  # the whole request is in: no longer evicted for others
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        response = route(method, target)
        if not isinstance(response, Response):
            response = await self._render(response, target)
        await self._send(conn, writer, response, head=method == "HEAD")

    async def _render(self, render: Callable[[Snapshot, str | None], Response],
                      target: str) -> Response:
        """Render in a worker thread, one request at a time: a big page must not stall the
        watcher's loop (its probes' timings), nor a burst of requests its CPU."""
        try:
            snapshot = self._snapshot()  # in the loop: the caller's data is the loop's
            async with self._rendering:
                return await asyncio.to_thread(render, snapshot, self._hostname)
        except Exception:
            log.exception("web: cannot render %s", target)
            return _text(500, "internal error: see the prober's log")

    async def _read_request(self, conn: h11.Connection,
                            reader: asyncio.StreamReader) -> h11.Request:
        try:
            async with asyncio.timeout(self._head_timeout):
                request = await self._read_head(conn, reader)
        except TimeoutError:
            raise _Dropped(f"no request head within {self._head_timeout:g}s") from None
        await self._read_body(conn, reader)
        return request

    async def _read_head(self, conn: h11.Connection,
                         reader: asyncio.StreamReader) -> h11.Request:
        head = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_CHUNK)
                head += len(data)
                if head > self._max_request:  # h11 only counts an incomplete head
                    raise _TooLarge(431)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                return event
            elif isinstance(event, h11.ConnectionClosed):
                raise _Dropped("closed before sending a request")

    async def _read_body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_CHUNK))
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > self._max_request:
                    raise _TooLarge(413)
            elif isinstance(event, h11.EndOfMessage):
                return

    async def _refuse(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, response: Response) -> None:
        """Answer a request that is not read to its end, then read and discard what the client
        still sends for a moment: closing with unread data would reset the connection, and
        the client might lose the answer."""
        await self._send(conn, writer, response, head=False)
        with contextlib.suppress(OSError):  # the client may be gone already
            if writer.can_write_eof():
                writer.write_eof()
        with contextlib.suppress(OSError):  # TimeoutError included
            async with asyncio.timeout(_LINGER):
                discarded = 0
                while discarded < _LINGER_BYTES and (chunk := await reader.read(_CHUNK)):
                    discarded += len(chunk)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                    response: Response, *, head: bool) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(response.body))), *_HEADERS]
        if response.allow is not None:
            headers.append(("Allow", response.allow))
        reason = HTTPStatus(response.status).phrase.encode()
        data = conn.send(h11.Response(status_code=response.status, headers=headers,
                                      reason=reason)) or b""
        if not head and response.body:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        with contextlib.suppress(OSError):  # the client may be gone: nothing more to tell it
            await writer.drain()


def _room_for(connections: int) -> None:
    """Raise the soft limit on open files (up to the hard one) to make room for `connections`
    on top of what a service usually has: else a flood of clients could take the descriptors
    a run's probes need, or make the server stop accepting for a while."""
    wanted = USUAL_SOFT_LIMIT + connections
    try:
        raise_open_files(wanted)
    except (OSError, ValueError) as exc:
        log.debug("web: cannot raise the open-files limit to %d: %s", wanted, os_reason(exc))


async def serve(host: str, port: int, snapshot: Callable[[], Snapshot], *,
                head_timeout: float = HEAD_TIMEOUT, timeout: float = TIMEOUT,
                max_request: int = MAX_REQUEST, max_connections: int = MAX_CONNECTIONS,
                hostname: str | None = None) -> WebServer:
    """Listen on `host`:`port` (0: any free port, see `.port`) in the running loop, answering
    from `snapshot()` at each request. The page names `hostname` (default: this host's name).
    ProberError if the address cannot be bound."""
    server = WebServer(snapshot, head_timeout=head_timeout, timeout=timeout,
                       max_request=max_request, max_connections=max_connections,
                       hostname=hostname)
    await server.start(host, port)
    return server
