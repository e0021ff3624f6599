"""The config's keys, declared once: name, what value it takes, its default and its meaning. Pure.

Every table of the config (top level, `[defaults]`, `[[target]]`, `[notify]`) and every probe
kind lists its keys as `Key`s. Unknown-key errors and their "did you mean", `prober validate`,
`prober probe`'s options, the key tables of docs/configuration.md (checked by a test),
prober.toml(5) and the fuzzer's schema are all derived from these declarations, so no key list
is written twice.

A key's `parse` turns the TOML value into the Python value or raises ValueError with a message
that reads after "<file>: <where>: <key>: ".
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prober.core.text import redact_url

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

Parse = Callable[[object], Any]


class Shape(StrEnum):
    """The kind of value a key takes; the fuzzer draws good and bad values by shape."""

    DURATION = "duration"
    INTEGER = "integer"
    PERCENT = "percent"
    BOOLEAN = "boolean"
    STRING = "string"
    PATH = "path"
    CREDENTIAL = "credential"  # an absolute path or a name in $CREDENTIALS_DIRECTORY
    URL = "url"
    HOST_PORT = "host-port"
    ADDRESS = "address"  # a mail address
    ADDRESSES = "addresses"  # a list of mail addresses
    IP = "ip"
    REGEX = "regex"
    CHOICE = "choice"
    STATUSES = "statuses"
    HEADERS = "headers"
    ARGV = "argv"
    ENV = "env"
    UNIT = "unit"
    NAME = "name"
    NAMES = "names"
    SIGNAL = "signal"
    CHOICES = "choices"  # a list of choices
    TABLE = "table"
    TABLES = "tables"


@dataclass(frozen=True)
class Option:
    """How `prober probe` takes a key on its command line."""

    flag: str  # "--expect-status"
    metavar: str = ""
    help: str = ""
    multiple: bool = False
    is_flag: bool = False
    convert: Callable[[Any], Any] | None = None  # the option's value -> the key's TOML value


@dataclass(frozen=True)
class Key:
    """One config key."""

    name: str
    shape: Shape
    parse: Parse
    help: str  # one line, the docs table's "meaning"
    default: str = ""  # as the docs show it; "" when there is none
    in_defaults: bool = False  # may also be set in [defaults]
    choices: tuple[str, ...] = ()  # for CHOICE / CHOICES
    minimum: float | None = None  # for INTEGER / DURATION / PERCENT
    option: Option | None = None
    # A file that must exist when the config is loaded (parsing stays pure: load_config looks).
    existing_file: bool = False
    # A CREDENTIAL key's file, read at run time (prober/io/configfiles.py): its text -> its value,
    # or ValueError saying what is wrong with it. `prober validate` reads the file with it too.
    file_parse: Callable[[str], object] | None = None

    def read(self, value: object) -> Any:
        return self.parse(value)


def by_name(keys: tuple[Key, ...]) -> dict[str, Key]:
    return {key.name: key for key in keys}


def as_typed_after_a_flag(default: str) -> str:
    """A default as the key table writes it (TOML where it is a list, a table or a quoted
    string), as a user types it after the key's flag: `["2xx"]` -> `2xx`, `"x"` -> `x`; "" for
    an empty list or table, which a flag has nothing to say about."""
    try:
        value = tomllib.loads(f"value = {default}")["value"]
    except tomllib.TOMLDecodeError:
        return default
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{name}={item}" for name, item in value.items())
    return value if isinstance(value, str) else default


# --- values -----------------------------------------------------------------------------------

MAX_DURATION = 10 * 31557600.0  # ten of systemd's years
# systemd.time(7)'s time spans: its units, spelt as systemd spells them ("m" minutes, "M" months).
_UNIT_SECONDS = {
    **dict.fromkeys(("us", "usec", "\u00b5s"), 1e-6),
    **dict.fromkeys(("ms", "msec"), 1e-3),
    **dict.fromkeys(("", "s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400.0),
    **dict.fromkeys(("M", "month", "months"), 2629800.0),
    **dict.fromkeys(("y", "year", "years"), 31557600.0),
}
_DURATION_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z\u00b5]*)")
_DURATION_EXAMPLES = 'e.g. "30", "500ms", "30s", "5min", "1h 30min", "2w"'
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
          list: "a list", dict: "a table"}


def describe(value: object) -> str:
    """"a string", "an integer": what a TOML value is, for error messages."""
    return _NAMES.get(type(value), type(value).__name__)


def typed(value: object, kind: type[T], what: str) -> T:
    """`value` if it is a `kind` (booleans are not integers here), else ValueError."""
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"expected {what}, got a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"expected {what}, got {describe(value)}")
    return value


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a systemd time span: `"30"`, `"500ms"`, `"5min"`,
    `"1h 30min"`, `"2min5s"`, `"2w"`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({_DURATION_EXAMPLES}), not a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("is too long a duration") from None
    elif isinstance(value, str):
        seconds = _time_span(value)
    else:
        raise ValueError(f"expected a duration ({_DURATION_EXAMPLES}), got {describe(value)}")
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"{value!r} is not a valid duration")
    if seconds > MAX_DURATION:
        raise ValueError("is too long a duration (at most 10 years)")
    return seconds


def _time_span(text: str) -> float:
    """A systemd time span's seconds: numbers each followed by a unit (none: seconds)."""
    if len(text) > 100:
        raise ValueError(f'"{text[:100]}..." is too long for a duration')
    seconds, at = 0.0, 0
    rest = text.rstrip()
    while at < len(rest):
        part = _DURATION_PART.match(rest, at)
        if part is None or part.group(2) not in _UNIT_SECONDS:
            break
        seconds += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        at = part.end()
    if not rest.strip() or at < len(rest):
        raise ValueError(f'"{text}" is not a duration ({_DURATION_EXAMPLES})')
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable spelling of a duration: 0.5 -> "500ms", 90 -> "1m30s"."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if abs(seconds - whole) > 0.001:
        return f"{seconds:.1f}s"
    out = ""
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            out += f"{whole // size}{suffix}"
            whole %= size
    return out + (f"{whole}s" if whole or not out else "")


def duration(minimum: float = 0.0, *, above: bool = False) -> Parse:
    """A duration of at least `minimum` (more than it, with `above`)."""
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if above and seconds <= minimum:
            raise ValueError(f"must be more than {format_duration(minimum)}")
        if seconds < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}")
        return seconds
    return parse


def integer(minimum: int, maximum: int | None = None) -> Parse:
    def parse(value: object) -> int:
        number = typed(value, int, "an integer")
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}, got {number}")
        return number
    return parse


def percent(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a percentage (0-100), got {describe(value)}")
    if not 0 <= value <= 100:  # also refuses NaN
        raise ValueError(f"must be between 0 and 100, got {value}")
    return float(value)


def boolean(value: object) -> bool:
    return typed(value, bool, "true or false")


def string(value: object) -> str:
    return typed(value, str, "a string")


def absolute_path(value: object) -> str:
    path = typed(value, str, "a path")
    if not os.path.isabs(path):
        raise ValueError(f'"{path}" must be an absolute path')
    return path


def credential(value: object) -> str:
    """An absolute path, or the name of a file in $CREDENTIALS_DIRECTORY (LoadCredential=)."""
    text = typed(value, str, "a path or a credential name")
    if not text or text in (".", "..") or (not os.path.isabs(text) and "/" in text):
        raise ValueError(f'"{text}" must be an absolute path or a credential name')
    return text


def choice(enum: type[E]) -> Callable[[object], E]:
    def parse(value: object) -> E:
        text = typed(value, str, "a string")
        for member in enum:
            if member.value.lower() == text.lower():
                return member
        choices = ", ".join(f'"{m.value}"' for m in enum)
        raise ValueError(f'"{text}" is not one of {choices}')
    return parse


def choices(enum: type[E]) -> Callable[[object], frozenset[E]]:
    one = choice(enum)

    def parse(value: object) -> frozenset[E]:
        items = typed(value, list, "a list")
        return frozenset(one(item) for item in items)
    return parse


def url(value: object) -> str:
    text = typed(value, str, "an http:// or https:// URL")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ValueError(f'"{redact_url(text)}" is not a valid URL: {exc}') from None
    shown = redact_url(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f'"{shown}" must start with http:// or https://')
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f'"{shown}" has an invalid port') from None
    if not parts.hostname:
        raise ValueError(f'"{shown}" has no host')
    return text


def parse_host_port(text: str) -> tuple[str, int]:
    """`"127.0.0.1:80"`, `"[::1]:80"` or `"localhost:80"` -> (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", text)
    if not match:
        raise ValueError(f'"{text}" is not host:port (e.g. "127.0.0.1:443" or "[::1]:443")')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f'"{text}" has a port outside 1-65535')
    return host, port


def host_port(value: object) -> tuple[str, int]:
    return parse_host_port(typed(value, str, 'a "host:port" string'))


def ip_address(value: object) -> str:
    text = typed(value, str, "an IP address")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ValueError(f'"{text}" is not an IP address') from None


def regex(value: object) -> str:
    text = typed(value, str, "a regular expression")
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    except (OverflowError, RecursionError):
        raise ValueError("regular expression too large") from None
    return text


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def headers(value: object) -> tuple[tuple[str, str], ...]:
    table = typed(value, dict, "a table of header names to values")
    out = []
    for name, text in table.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f'"{name}" is not a valid header name')
        if not isinstance(text, str) or "\n" in text or "\r" in text:
            raise ValueError(f'value of "{name}" must be a one-line string')
        out.append((name, text))
    return tuple(out)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f'"{name}" is not an environment variable name')
    return name


def env(value: object) -> tuple[tuple[str, str], ...]:
    table = typed(value, dict, "a table of variable names to values")
    out = []
    for name, text in table.items():
        env_name(name)
        if not isinstance(text, str) or "\0" in text:
            raise ValueError(f'value of "{name}" must be a string')
        out.append((name, text))
    return tuple(out)


def argv(value: object) -> tuple[str, ...]:
    items = typed(value, list, 'a list like ["/usr/bin/redis-cli", "ping"] (no shell is used)')
    if not items or not all(isinstance(a, str) for a in items) or not items[0]:
        raise ValueError("expected a non-empty list of strings")
    if any("\0" in a for a in items):
        raise ValueError("arguments cannot contain NUL characters")
    if not os.path.isabs(items[0]):
        raise ValueError(f'"{items[0]}" must be an absolute path')
    return tuple(items)


def signal_name(value: object) -> str:
    text = typed(value, str, 'a signal name like "SIGABRT"').upper()
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in signal.Signals.__members__:
        raise ValueError(f'"{value}" is not a signal name (e.g. "SIGABRT", "SIGQUIT")')
    return name


_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def target_name(value: object) -> str:
    name = typed(value, str, "a string")
    if not _TARGET_NAME.match(name):
        raise ValueError(f'"{name}" must be letters, digits, "-", "_" or ".", at most 63 long')
    return name


def target_names(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    items = typed(items, list, "a list of target names")
    if not all(isinstance(d, str) for d in items):
        raise ValueError("expected a list of target names")
    return tuple(dict.fromkeys(items))


# Deliberately narrower than RFC 5322: no display names, quoting, comments or line breaks,
# nothing that could smuggle a second header or recipient into the message.
_MAIL_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
MAX_MAIL_RECIPIENTS = 20


def mail_address(value: object) -> str:
    text = typed(value, str, 'a mail address like "admin@example.org"')
    if not _MAIL_ADDRESS.fullmatch(text) or len(text) > 254:
        raise ValueError(f'"{text}" is not a mail address (expected e.g. "admin@example.org")')
    return text


def mail_addresses(value: object) -> tuple[str, ...]:
    items = typed(value, list, 'a list of mail addresses like ["admin@example.org"]')
    if not items:
        raise ValueError("expected at least one mail address")
    if len(items) > MAX_MAIL_RECIPIENTS:
        raise ValueError(f"at most {MAX_MAIL_RECIPIENTS} addresses, got {len(items)}")
    return tuple(dict.fromkeys(mail_address(item) for item in items))


def login_name(value: object) -> str:
    text = typed(value, str, "a user name")
    if not text or len(text) > 256 or not text.isprintable():
        raise ValueError("expected a user name on one line")
    return text


def one_line_secret(text: str) -> str:
    """A secret file's text (a token, a password): one line, its surrounding blanks dropped."""
    secret = text.strip()
    if not secret or any(c in secret for c in "\r\n\0"):
        raise ValueError("expected one line, the secret")
    return secret


def table(value: object) -> Mapping[str, Any]:
    return typed(value, dict, "a table")


def describe_value(key: Key, value: object) -> str:
    """A key's value as `prober validate` shows it: durations spelt out, secrets hidden."""
    if key.shape is Shape.DURATION and isinstance(value, int | float):
        return format_duration(value)
    if key.shape in (Shape.HEADERS, Shape.ENV) and isinstance(value, tuple):
        return "{" + ", ".join(f"{name} = ***" for name, _ in value) + "}"
    if isinstance(value, tuple | list | frozenset):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
