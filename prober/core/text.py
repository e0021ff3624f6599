"""Wording shared by every module: one-line messages, OS errors, "did you mean", redaction,
UTC times.

One helper per job, so that every message prober prints reads the same way.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterable

REASON_MAX = 200
UTC_SECONDS = "%Y-%m-%d %H:%M:%S UTC"
# 2100-01-01 UTC: the latest time prober takes from a source or keeps in its state file.
LATEST_TIME = 4102444800.0
_USERINFO = re.compile(r"(//)[^/@\s]*@")
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#@]*@")


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped, so that a value quoted in
    a message can never break it over lines or forge a line of its own."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def reason(text: str) -> str:
    """What another program said (an exception, a command's stderr), as one short line: its
    whitespace collapsed, clipped, without any user:password@ a library put in it."""
    collapsed = _USERINFO.sub(r"\1", " ".join(text.split())).rstrip(".")
    return one_line(clip(collapsed, REASON_MAX))


def os_reason(exc: BaseException) -> str:
    """"connection refused", "no such file or directory": an error as it reads after a colon."""
    if isinstance(exc, OSError) and exc.strerror:
        return lower_first(exc.strerror)
    return lower_first(str(exc)) or type(exc).__name__


def lower_first(text: str) -> str:
    """"Server disconnected" -> "server disconnected", to sit after a colon; "TLS" stays."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest choice, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'did you mean "{close[0]}"?' if close else None


def redact_url(url: str) -> str:
    """The URL without its password: `http://user:secret@host/` -> `http://user:***@host/`."""
    return _URL_PASSWORD.sub(r"\1:***@", url)


def clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(text: str) -> str:
    return '"' + clip(text) + '"'


def size(count: int) -> str:
    """64 KiB, 1 MiB, 100 bytes."""
    for unit, bytes_ in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= bytes_ and count % bytes_ == 0:
            return f"{count // bytes_}{unit}"
    return f"{count} bytes"


def utc(at: float, layout: str = UTC_SECONDS) -> str:
    """A Unix time as UTC in `layout` (a strftime format): every time prober prints."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime(layout)
