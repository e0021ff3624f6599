"""What more than one probe kind takes or does, declared once: the `max_body` key, and matching
a regular expression within a probe's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import warnings
import weakref

from prober.core.keys import Key, Option, Shape, integer
from prober.core.results import Deadline

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


# Matches running at once, each a forked child: the units' TasksMax= counts them, beside the
# threads and the exec probes' commands.
_MATCHES_AT_ONCE = 8
_FORK_RETRY = 0.05  # after a failed fork (EAGAIN at TasksMax=), before trying again
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
    weakref.WeakKeyDictionary()


async def search(pattern: str, text: str, deadline: Deadline) -> bool | None:
    """Whether `pattern` matches somewhere in `text`, or None if that was not known by the
    deadline.

    Python's `re` holds the GIL for a whole match, and a pathological pattern (`(A+)+B`) can
    take for ever: run on the event loop, or in a thread, it would stall every other probe.
    The match runs in a forked child instead, which tells its answer through a pipe and is
    killed at the deadline; at most _MATCHES_AT_ONCE at a time, the others waiting their turn
    within their own deadline.
    """
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(_MATCHES_AT_ONCE)
    try:
        async with asyncio.timeout_at(deadline.at), slots:
            return await _match_in_child(loop, pattern, text)
    except TimeoutError:
        return None


async def _match_in_child(loop: asyncio.AbstractEventLoop, pattern: str, text: str) -> bool:
    """Fork a child that matches; its answer, read from a pipe; killed and reaped however this
    ends."""
    read, write = os.pipe()
    while True:
        try:
            pid = _fork()
            break
        except OSError:
            await _wait_or_close(_FORK_RETRY, read, write)
    if pid == 0:  # pragma: no cover (the child; it never returns)
        _match_and_exit(pattern, text, write)
    os.close(write)
    answer: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not answer.done():
            answer.set_result(os.read(read, 1))

    loop.add_reader(read, readable)
    try:
        return await answer == b"1"
    finally:
        loop.remove_reader(read)
        os.close(read)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # not yet reaped: the pid is still the child's
        _reap_when_gone(loop, pid)


def _reap_when_gone(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    """Reap the child once it has exited, without waiting for it here: a killed child takes a
    while to tear down its copy of prober, and a blocking waitpid would stall the loop."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # no pidfd (an old kernel, or a system-call filter): wait here
        os.waitpid(pid, 0)
        return

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    loop.add_reader(pidfd, reap)


def _fork() -> int:
    """os.fork(), without Python 3.12's warning that a child of a threaded process may
    deadlock: this child only matches and writes to a pipe, and is killed at the deadline if
    it ever hangs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


async def _wait_or_close(seconds: float, *fds: int) -> None:
    """Sleep; if cancelled meanwhile, close `fds` first."""
    try:
        await asyncio.sleep(seconds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


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
