"""Hostile clients of the watcher's page, for tests and `make bench`: slowloris connections,
which send the start of a request head and then one byte of it at a time, never its end, and
idle connections, which send nothing. Each one that the server drops is opened again after a
pause (as slowloris tools re-open theirs on a cycle), so that as many stay open as asked.

    python -m tests.support.flood PORT [--slowloris N] [--idle N]      (until SIGTERM)

In a test's own loop: `async with flood(port, slowloris=300, idle=2_000) as opened: ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

__all__ = ["SLOWLORIS_HEAD", "Opened", "enough_files", "flood", "hold"]

SLOWLORIS_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: "
TRICKLE = 0.5  # seconds between two bytes of a slowloris head, and before opening one again
_FILES_RESERVED = 256


@dataclass
class Opened:
    """How many connections the flood has opened so far, of each kind."""

    slowloris: int = 0
    idle: int = 0


def enough_files(connections: int) -> None:
    """Raise this process's soft limit on open files so that `connections` sockets fit, as
    prober raises its own (up to the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + _FILES_RESERVED
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard))


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        trickle: bool) -> None:
    """Hold one connection open until the server closes it, trickling if asked."""
    if trickle:
        writer.write(SLOWLORIS_HEAD)
    while True:
        try:
            async with asyncio.timeout(TRICKLE):
                await reader.read(1)  # the server never answers: b"" or an error is its close
            return
        except TimeoutError:
            if trickle:
                writer.write(b"a")


async def hold(port: int, trickle: bool, opened: Opened) -> None:
    """One hostile client, for ever: a connection held open, and opened again once dropped."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(TRICKLE)
            continue
        if trickle:
            opened.slowloris += 1
        else:
            opened.idle += 1
        try:
            await _until_closed(reader, writer, trickle)
        except OSError:
            pass
        finally:
            writer.transport.abort()
        await asyncio.sleep(TRICKLE)


@contextlib.asynccontextmanager
async def flood(port: int, *, slowloris: int, idle: int) -> AsyncIterator[Opened]:
    """Run `slowloris` + `idle` hostile clients against 127.0.0.1:`port` in this loop, all
    each connected once when this enters; stopped (every socket closed) when it leaves."""
    enough_files(slowloris + idle)
    opened = Opened()
    tasks = [asyncio.create_task(hold(port, trickle, opened))
             for trickle in [True] * slowloris + [False] * idle]
    try:
        while opened.slowloris < slowloris or opened.idle < idle:
            await asyncio.sleep(0.05)
        yield opened
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _main(port: int, slowloris: int, idle: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with flood(port, slowloris=slowloris, idle=idle):
        print("open", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--slowloris", type=int, default=300)
    parser.add_argument("--idle", type=int, default=2_000)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.port, args.slowloris, args.idle))


if __name__ == "__main__":
    main()
