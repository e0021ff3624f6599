"""Logging: plain lines on a terminal, sd-daemon priority prefixes when stderr is the journal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

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
    handler = logging.StreamHandler(sys.stderr)
    journal = stderr_is_journal(environ, sys.stderr.fileno()) if _has_fileno() else False
    handler.setFormatter(JournalFormatter() if journal else TerminalFormatter())
    logger.addHandler(handler)


def _has_fileno() -> bool:
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True
