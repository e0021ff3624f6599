"""A loopback HTTP server for a thousand simultaneous connections, in a process of its own.

    with mass_server(answering=8, hanging=2) as (answer_ports, hang_ports):
        url = f"http://127.0.0.1:{answer_ports[0]}/health"

tests/support/servers.py starts a thread per connection and listens with a backlog of 128: right for
one test's few requests, but at a thousand connections at once its accept loop and the full
backlog (dropped SYNs, retried a second later) would be what is measured. This one is one
asyncio loop in a child process (so it takes none of the measuring process's time, and none of
the measured one's), listening with a backlog of 4096 (the kernel caps it at somaxconn). Ports
that answer send `200 OK` to /health and 404 elsewhere; ports that hang read the request and
never answer, until the server is stopped. Stopped by PID (SIGTERM) when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

from tests.support.processes import stop_process

BACKLOG = 4096
_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
       b"Connection: close\r\n\r\nOK")
_NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
              b"Not Found")


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        writer.write(_OK if path.split(b"?")[0] == b"/health" else _NOT_FOUND)
        await writer.drain()
    writer.close()


async def _hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # until the client gives up and closes
    writer.close()


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    return sock


async def _serve(answering: int, hanging: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    servers = []
    ports: list[list[int]] = [[], []]
    for handler, count, found in ((_answer, answering, ports[0]), (_hang, hanging, ports[1])):
        for _ in range(count):
            sock = _listener()
            servers.append(await asyncio.start_server(handler, sock=sock, backlog=BACKLOG))
            found.append(sock.getsockname()[1])
    print(" ".join(map(str, ports[0])), "|", " ".join(map(str, ports[1])), flush=True)
    await stop
    for server in servers:
        server.close()


@contextlib.contextmanager
def mass_server(answering: int, hanging: int) -> Iterator[tuple[list[int], list[int]]]:
    """Ports that answer and ports that hang, served by a child process for the block."""
    child = subprocess.Popen([sys.executable, "-m", "tests.support.mass_server", str(answering),
                              str(hanging)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if "|" not in line:
            raise RuntimeError(f"the mass server did not start (exit {child.poll()})")
        left, right = line.split("|")
        yield [int(p) for p in left.split()], [int(p) for p in right.split()]
    finally:
        stop_process(child)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
