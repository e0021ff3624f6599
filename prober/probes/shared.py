"""What more than one probe kind takes or does, declared once: the `max_body` key, and matching
a regular expression within a probe's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal

from prober.keys import Key, Option, Shape, integer
from prober.results import Deadline

DEFAULT_MAX_BODY = 64 * 1024
# A body, its text and a regex's work on it all live in prober, whose units cap it at
# MemoryMax=128M; a little over prober's own peak plus a few times this still fits.
MAX_BODY_LIMIT = 8 * 1024 * 1024

MAX_BODY = Key(
    "max_body", Shape.INTEGER, integer(1, MAX_BODY_LIMIT),
    "bytes held at most of a body (as sent and once decoded, if it came compressed anyway) or "
    "of a command's output. Reading stops there; if an expectation is set and not found in "
    "those bytes of a longer body, the probe fails as `too-large`. At most 8 MiB (8388608), "
    "so that a body, its text and prober fit the units' `MemoryMax=128M`",
    default="65536", in_defaults=True, minimum=1,
    option=Option("--max-body", "BYTES"),
)


async def search(pattern: str, text: str, deadline: Deadline) -> bool | None:
    """Whether `pattern` matches somewhere in `text`, or None if that was not known by the
    deadline.

    Python's `re` holds the GIL for a whole match, and a pathological pattern (`(A+)+B`) can
    take for ever: run on the event loop, or in a thread, it would stall every other probe.
    The match runs in a forked child instead, which tells its answer through a pipe and is
    killed at the deadline.
    """
    loop = asyncio.get_running_loop()
    read, write = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        raise
    if pid == 0:  # pragma: no cover (the child; it never returns)
        _match_and_exit(pattern, text, write)
    os.close(write)
    answer: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not answer.done():
            answer.set_result(os.read(read, 1))

    loop.add_reader(read, readable)
    try:
        async with asyncio.timeout_at(deadline.at):
            return await answer == b"1"
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(read)
        os.close(read)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # not yet reaped: the pid is still the child's
        os.waitpid(pid, 0)


def _match_and_exit(pattern: str, text: str, write: int) -> None:  # pragma: no cover
    """The forked child: match, write b"1" or b"0", exit without running the parent's cleanup
    (its atexit handlers, its buffered streams, its event loop)."""
    code = 0
    try:
        with contextlib.suppress(ValueError):  # a signal here must not wake the parent's loop
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(number, signal.SIG_DFL)
        os.write(write, b"1" if re.search(pattern, text) else b"0")
    except BaseException:
        code = 1
    finally:
        os._exit(code)
