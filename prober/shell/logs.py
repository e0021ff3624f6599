"""Logging: plain lines on a terminal, sd-daemon priority prefixes when stderr is the journal.

Output never stops a run. Under systemd, stdout and stderr are a stream socket to journald; when
journald dies (as it did in the 2018 outage) the next write fails with EPIPE. A run must still
restart what is down, save its state and exit with its own code: so the streams are wrapped
(guard_std_streams(), from the CLI's entry point) to swallow such errors, after which the lost
descriptor is pointed at /dev/null (children inheriting it, such as a notify command, are spared
SIGPIPE), and the log handler never prints logging's "--- Logging error ---" report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO, cast

# sd-daemon(3) priorities: journald reads a leading "<N>" as the line's syslog priority, so that
# `journalctl -p warning -u prober` shows just the warnings and errors.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal(environ: Mapping[str, str], stream_fd: int) -> bool:
    """True if `stream_fd` is the journal stream systemd announced in $JOURNAL_STREAM."""
    announced = environ.get("JOURNAL_STREAM", "")
    if ":" not in announced:
        return False
    try:
        device, inode = (int(x) for x in announced.split(":", 1))
        st = os.fstat(stream_fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """`<4>target=web: probe failed ...`: one line, its priority in front."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record).replace("\n", " ")
        return f"<{priority}>{text}"


class TerminalFormatter(logging.Formatter):
    """`prober: warning: target=web: probe failed ...`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " ")
        if record.levelno >= logging.WARNING:
            return f"prober: {record.levelname.lower()}: {text}"
        return f"prober: {text}"


class SafeStream:
    """A text stream whose write() and flush() never raise.

    The first OSError (EPIPE, EIO, ...) or ValueError (closed) marks the stream lost and points
    its descriptor at /dev/null, so that the text still buffered drains there and later writes
    succeed. Every other attribute is the wrapped stream's, but `buffer`: writers that look for
    it (click.echo) then write through this wrapper instead of around it, bytes included.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.lost = False

    def write(self, text: str | bytes) -> int:
        if isinstance(text, bytes):  # click.echo's bytes, given no buffer to write them to
            text = text.decode(self._stream.encoding or "utf-8", "replace")
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._lose()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._lose()

    def _lose(self) -> None:
        self.lost = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what was buffered goes to /dev/null now

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


def safe(stream: TextIO) -> TextIO:
    """`stream` wrapped in a SafeStream (once)."""
    if isinstance(stream, SafeStream):
        return cast(TextIO, stream)
    return cast(TextIO, SafeStream(stream))


def guard_std_streams() -> None:
    """Make sys.stdout and sys.stderr SafeStreams, for the whole process."""
    if sys.stdout is not None:
        sys.stdout = safe(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = safe(sys.stderr)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on a SafeStream; a record that cannot be formatted (a bug) is reported in
    one line on that stream, not as logging's multi-line "--- Logging error ---" on stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.stream.write(f"prober: logging error: {sys.exc_info()[1]!r} in a message "
                              f"from {record.module}:{record.lineno}\n")


def setup_logging(verbosity: int, environ: Mapping[str, str] = os.environ) -> None:
    """Route the "prober" logger to stderr.

    Verbosity 0 shows events (info: a healthy run logs nothing), -1 (-q) warnings and errors,
    -2 (-qq) errors only, 1 (-v) debug.
    """
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(
        max(-2, min(verbosity, 1)), logging.DEBUG
    )
    logger = logging.getLogger("prober")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _Handler(safe(sys.stderr))
    journal = stderr_is_journal(environ, sys.stderr.fileno()) if _has_fileno() else False
    handler.setFormatter(JournalFormatter() if journal else TerminalFormatter())
    logger.addHandler(handler)


def _has_fileno() -> bool:
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True
