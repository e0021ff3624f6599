"""The config file: TOML in, a validated, frozen `Config` out.

`parse_config` is pure (a dict in, a Config or a ConfigError out); `load_config` reads the file.
Every error names the file, the target and the key, in one line.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import signal
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prober.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/prober/prober.toml"
DEFAULT_MAX_BODY = 64 * 1024

T = TypeVar("T")


class Bus(StrEnum):
    """Which systemd manager owns a target's unit."""

    SYSTEM = "system"
    USER = "user"


class Method(StrEnum):
    GET = "GET"
    HEAD = "HEAD"


class ProbeKind(StrEnum):
    """How a target is probed; the value is what reports show."""

    HTTP = "http"
    TCP = "tcp"


@dataclass(frozen=True)
class StatusRange:
    """An accepted status: one code (`low == high`) or a class like 2xx."""

    low: int
    high: int

    def matches(self, code: int) -> bool:
        return self.low <= code <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low // 100}xx"


@dataclass(frozen=True)
class Policy:
    """When a target counts as down, and what may be done about it. Durations in seconds."""

    timeout: float = 5.0
    retries: int = 0
    retry_delay: float = 0.5
    failure_threshold: int = 3
    success_threshold: int = 1
    startup_grace: float = 60.0
    cooldown: float = 60.0
    max_cooldown: float = 900.0
    max_restarts: int = 3
    restart_window: float = 3600.0
    restart_timeout: float = 60.0
    verify_timeout: float = 30.0
    signal_before_restart: str | None = None
    bus: Bus = Bus.SYSTEM


@dataclass(frozen=True)
class Target:
    """One endpoint to probe and, optionally, the unit that serves it."""

    name: str
    kind: ProbeKind
    url: str = ""
    tcp_host: str = ""
    tcp_port: int = 0
    unix_socket: str | None = None
    method: Method = Method.GET
    headers: tuple[tuple[str, str], ...] = ()
    resolve: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    follow_redirects: bool = False
    expect_status: tuple[StatusRange, ...] = (StatusRange(200, 299),)
    expect_body: str | None = None
    expect_body_regex: str | None = None
    max_latency: float | None = None
    max_body: int = DEFAULT_MAX_BODY
    unit: str | None = None
    depends_on: tuple[str, ...] = ()
    policy: Policy = field(default_factory=Policy)

    @property
    def endpoint(self) -> str:
        """Where the probe goes, for humans."""
        if self.kind is ProbeKind.TCP:
            host = f"[{self.tcp_host}]" if ":" in self.tcp_host else self.tcp_host
            return f"tcp://{host}:{self.tcp_port}"
        if self.unix_socket:
            return f"{self.url} via unix:{self.unix_socket}"
        return self.url

    @property
    def run_budget(self) -> float:
        """The longest one probe of this target may take, retries included."""
        attempts = self.policy.retries + 1
        return attempts * self.policy.timeout + self.policy.retries * self.policy.retry_delay


DEFAULT_INTERVAL = 30.0
DEFAULT_HISTORY = 500


class NotifyEvent(StrEnum):
    """Events that reach [notify]; the values are the JSON `event` field."""

    RESTART = "restart"
    RESTART_FAILED = "restart-failed"
    GIVEN_UP = "given-up"
    RECOVERED = "recovered"


@dataclass(frozen=True)
class Notify:
    """Where events go: a command (event JSON on stdin) and/or a webhook (POSTed JSON)."""

    command: tuple[str, ...] = ()
    webhook: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    token_file: str | None = None  # an absolute path, or a name in $CREDENTIALS_DIRECTORY
    timeout: float = 5.0
    events: frozenset[NotifyEvent] = frozenset(NotifyEvent)


@dataclass(frozen=True)
class Config:
    path: str
    targets: tuple[Target, ...]
    interval: float = DEFAULT_INTERVAL  # between runs of `prober watch`
    textfile: str | None = None  # Prometheus textfile-collector output, written every run
    notify: Notify | None = None
    history: int = DEFAULT_HISTORY  # transitions kept per target in the state

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)


def redact_url(url: str) -> str:
    """The URL without its password: `http://user:secret@host/` -> `http://user:***@host/`."""
    return _URL_PASSWORD.sub(r"\1:***@", url)


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#@]*@")


# --- durations ------------------------------------------------------------------------------

MAX_DURATION = 10 * 365 * 86400.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `"500ms"`, `"30s"`, `"5m"`, `"1h30m"` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"30s\", not a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("is too long a duration") from None
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f'"{value}" is not a duration (use e.g. "500ms", "30s", "5m", "1h")')
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration like \"30s\", got {type(value).__name__}")
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"{value!r} is not a valid duration")
    if seconds > MAX_DURATION:
        raise ValueError("is too long a duration (at most 10 years)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable spelling of a duration: 0.5 -> "500ms", 90 -> "1m30s"."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if abs(seconds - whole) > 0.001:
        return f"{seconds:.1f}s"
    out = ""
    for suffix, size in (("h", 3600), ("m", 60)):
        if whole >= size:
            out += f"{whole // size}{suffix}"
            whole %= size
    return out + (f"{whole}s" if whole or not out else "")


# --- unit names ------------------------------------------------------------------------------

_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service$")
# Restarting any of these would take down the prober itself, the bus it talks over, the logs
# that explain what happened, or the manager; none of them is a "layer" of a web stack.
_FORBIDDEN_UNITS = {
    "prober.service": "it is the prober itself",
    "prober-watch.service": "it is the prober itself",
    "dbus.service": "it is the system bus the prober talks to systemd over",
    "dbus-broker.service": "it is the system bus the prober talks to systemd over",
    "systemd-journald.service": "it is the journal that records what the prober did",
    "systemd-logind.service": "it manages user sessions, not a web service",
    "polkit.service": "it decides what the prober may restart",
}


def normalize_unit(value: str) -> str:
    """`caddy` -> `caddy.service`; refuses names systemd would not accept or must never restart."""
    name = value if "." in value.rsplit("@", 1)[-1] else f"{value}.service"
    if not _UNIT_NAME.match(name) or len(name) > 255:
        raise ValueError(
            f'"{value}" is not a service unit name (expected something like "caddy.service")'
        )
    if name in _FORBIDDEN_UNITS or name.startswith("systemd-journald"):
        reason = _FORBIDDEN_UNITS.get(name, "it is the journal")
        raise ValueError(f'refusing to restart "{name}": {reason}')
    return name


# --- parsing ---------------------------------------------------------------------------------

_TOP_KEYS = ("defaults", "target", "interval", "textfile", "notify", "history")
_NOTIFY_KEYS = ("command", "webhook", "headers", "token_file", "timeout", "events")
_POLICY_KEYS = tuple(f.name for f in fields(Policy))
_SHARED_TARGET_KEYS = (
    "method",
    "headers",
    "tls_verify",
    "ca_file",
    "follow_redirects",
    "expect_status",
    "max_latency",
    "max_body",
)
_DEFAULT_KEYS = _POLICY_KEYS + _SHARED_TARGET_KEYS
_TARGET_KEYS = (
    "name",
    "url",
    "tcp",
    "unix_socket",
    "resolve",
    "expect_body",
    "expect_body_regex",
    "unit",
    "depends_on",
    *_DEFAULT_KEYS,
)
_HTTP_ONLY_KEYS = (
    "method",
    "headers",
    "resolve",
    "tls_verify",
    "ca_file",
    "follow_redirects",
    "expect_status",
    "expect_body",
    "expect_body_regex",
    "max_body",
    "unix_socket",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class _Where:
    """Builds the 'where' part of error messages."""

    def __init__(self, path: str, scope: str) -> None:
        self.path = path
        self.scope = scope

    def error(self, key: str | None, message: str, hint: str | None = None) -> ConfigError:
        where = self.path + (f": {self.scope}" if self.scope else "")
        if key is not None:
            where += f": {key}"
        return ConfigError(f"{where}: {message}", hint)


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: _Where) -> None:
    for key in table:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f'did you mean "{close[0]}"?' if close else None
        raise where.error(key, "unknown key", hint)


def _typed(value: object, kind: type[T], key: str, where: _Where, what: str) -> T:
    if isinstance(value, bool) and kind is not bool:
        raise where.error(key, f"expected {what}, got a boolean")
    if not isinstance(value, kind):
        raise where.error(key, f"expected {what}, got {_describe(value)}")
    return value


def _describe(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _duration(table: Mapping[str, Any], key: str, where: _Where) -> float:
    try:
        return parse_duration(table[key])
    except ValueError as exc:
        raise where.error(key, str(exc)) from None


def _absolute_path(table: Mapping[str, Any], key: str, where: _Where) -> str:
    path = _typed(table[key], str, key, where, "a path")
    if not os.path.isabs(path):
        raise where.error(key, f'"{path}" must be an absolute path')
    return path


def _int(table: Mapping[str, Any], key: str, where: _Where, minimum: int) -> int:
    value = _typed(table[key], int, key, where, "an integer")
    if value < minimum:
        raise where.error(key, f"must be at least {minimum}, got {value}")
    return value


def _parse_policy(table: Mapping[str, Any], base: Policy, where: _Where) -> Policy:
    changes: dict[str, Any] = {}
    for key in table:
        if key not in _POLICY_KEYS:
            continue
        if key in ("retries", "max_restarts"):
            changes[key] = _int(table, key, where, 0)
        elif key in ("failure_threshold", "success_threshold"):
            changes[key] = _int(table, key, where, 1)
        elif key == "signal_before_restart":
            changes[key] = _parse_signal(table[key], key, where)
        elif key == "bus":
            changes[key] = _parse_enum(table[key], Bus, key, where)
        else:
            changes[key] = _duration(table, key, where)
    policy = replace(base, **changes)
    _check_policy(policy, where)
    return policy


def _check_policy(policy: Policy, where: _Where) -> None:
    if policy.timeout <= 0:
        raise where.error("timeout", "must be more than 0s")
    if policy.max_cooldown < policy.cooldown:
        raise where.error(
            "max_cooldown",
            f"{format_duration(policy.max_cooldown)} is shorter than cooldown "
            f"{format_duration(policy.cooldown)}",
        )
    if policy.restart_timeout <= 0:
        raise where.error("restart_timeout", "must be more than 0s")
    if policy.max_restarts > 0 and policy.restart_window <= 0:
        raise where.error("restart_window", "must be more than 0s when max_restarts is set")


def _parse_signal(value: object, key: str, where: _Where) -> str:
    text = _typed(value, str, key, where, 'a signal name like "SIGABRT"').upper()
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in signal.Signals.__members__:
        raise where.error(key, f'"{value}" is not a signal name (e.g. "SIGABRT", "SIGQUIT")')
    return name


E = TypeVar("E", bound=StrEnum)


def _parse_enum(value: object, enum: type[E], key: str, where: _Where) -> E:
    text = _typed(value, str, key, where, "a string")
    for member in enum:
        if member.value.lower() == text.lower():
            return member
    choices = ", ".join(f'"{m.value}"' for m in enum)
    raise where.error(key, f'"{text}" is not one of {choices}')


def _parse_status(value: object, where: _Where) -> tuple[StatusRange, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise where.error("expect_status", "must list at least one status")
    ranges = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            ranges.append(StatusRange(item, item))
        elif isinstance(item, str) and re.fullmatch(r"[1-5]xx", item.lower()):
            low = int(item[0]) * 100
            ranges.append(StatusRange(low, low + 99))
        elif isinstance(item, str) and item.isascii() and item.isdigit() and \
                100 <= int(item) <= 599:
            ranges.append(StatusRange(int(item), int(item)))
        else:
            raise where.error(
                "expect_status", f"{item!r} is not a status code (100-599) or a class like \"2xx\""
            )
    return tuple(ranges)


def _parse_headers(value: object, where: _Where) -> tuple[tuple[str, str], ...]:
    table = _typed(value, dict, "headers", where, "a table of header names to values")
    headers = []
    for name, text in table.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise where.error("headers", f'"{name}" is not a valid header name')
        if not isinstance(text, str) or "\n" in text or "\r" in text:
            raise where.error("headers", f'value of "{name}" must be a one-line string')
        headers.append((name, text))
    return tuple(headers)


def _parse_shared(table: Mapping[str, Any], where: _Where) -> dict[str, Any]:
    """The target keys that may also be set in [defaults]."""
    out: dict[str, Any] = {}
    if "method" in table:
        out["method"] = _parse_enum(table["method"], Method, "method", where)
    if "headers" in table:
        out["headers"] = _parse_headers(table["headers"], where)
    for key in ("tls_verify", "follow_redirects"):
        if key in table:
            out[key] = _typed(table[key], bool, key, where, "true or false")
    if "ca_file" in table:
        out["ca_file"] = _absolute_path(table, "ca_file", where)
    if "expect_status" in table:
        out["expect_status"] = _parse_status(table["expect_status"], where)
    if "max_latency" in table:
        out["max_latency"] = _duration(table, "max_latency", where)
    if "max_body" in table:
        out["max_body"] = _int(table, "max_body", where, 1)
    return out


def _parse_url(value: object, where: _Where, key: str = "url") -> str:
    url = _typed(value, str, key, where, "an http:// or https:// URL")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise where.error(key, f'"{redact_url(url)}" is not a valid URL: {exc}') from None
    url_text = redact_url(url)
    if parts.scheme not in ("http", "https"):
        raise where.error(key, f'"{url_text}" must start with http:// or https://')
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise where.error(key, f'"{url_text}" has an invalid port') from None
    if not parts.hostname:
        raise where.error(key, f'"{url_text}" has no host')
    return url


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


def _parse_target(
    table: Mapping[str, Any], defaults: dict[str, Any], policy: Policy, where: _Where
) -> Target:
    if "name" not in table:
        _reject_unknown(table, _TARGET_KEYS, where)
        raise where.error("name", "missing (every target needs a unique name)")
    name = _typed(table["name"], str, "name", where, "a string")
    if not _NAME.match(name):
        raise where.error(
            "name", f'"{name}" must be letters, digits, "-", "_" or ".", at most 63 long'
        )
    where = _Where(where.path, f'target "{name}"')
    _reject_unknown(table, _TARGET_KEYS, where)
    has_url, has_tcp = "url" in table, "tcp" in table
    if has_url and has_tcp:
        raise where.error("tcp", 'set either "url" or "tcp", not both')
    if not (has_url or has_tcp or "unix_socket" in table):
        raise where.error("url", 'missing (set "url", "tcp" or "unix_socket")')
    fields_: dict[str, Any] = {**defaults, **_parse_shared(table, where)}
    fields_["policy"] = _parse_policy(table, policy, where)
    if has_tcp:
        misplaced = [k for k in _HTTP_ONLY_KEYS if k in table]
        if misplaced:
            raise where.error(misplaced[0], 'only applies to HTTP targets, not "tcp" ones')
        tcp = _typed(table["tcp"], str, "tcp", where, 'a "host:port" string')
        try:
            host, port = parse_host_port(tcp)
        except ValueError as exc:
            raise where.error("tcp", str(exc)) from None
        fields_ = {"tcp_host": host, "tcp_port": port, "policy": fields_["policy"]}
        fields_.update(_parse_links(table, where))
        return Target(name=name, kind=ProbeKind.TCP, **fields_)
    fields_["url"] = _parse_url(table.get("url", "http://localhost/"), where)
    if "unix_socket" in table:
        fields_["unix_socket"] = _absolute_path(table, "unix_socket", where)
    if "resolve" in table:
        fields_["resolve"] = _parse_resolve(table["resolve"], where)
    for key in ("expect_body", "expect_body_regex"):
        if key in table:
            fields_[key] = _typed(table[key], str, key, where, "a string")
    if "expect_body_regex" in fields_:
        try:
            re.compile(fields_["expect_body_regex"])
        except re.error as exc:
            raise where.error("expect_body_regex", f"invalid regular expression: {exc}") from None
        except (OverflowError, RecursionError):
            raise where.error("expect_body_regex", "regular expression too large") from None
    fields_.update(_parse_links(table, where))
    target = Target(name=name, kind=ProbeKind.HTTP, **fields_)
    _check_target(target, where)
    return target


def _parse_resolve(value: object, where: _Where) -> str:
    text = _typed(value, str, "resolve", where, "an IP address")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise where.error("resolve", f'"{text}" is not an IP address') from None


def _parse_links(table: Mapping[str, Any], where: _Where) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "unit" in table:
        unit = _typed(table["unit"], str, "unit", where, 'a unit name like "caddy.service"')
        try:
            out["unit"] = normalize_unit(unit)
        except ValueError as exc:
            raise where.error("unit", str(exc)) from None
    if "depends_on" in table:
        deps = table["depends_on"]
        deps = [deps] if isinstance(deps, str) else deps
        deps = _typed(deps, list, "depends_on", where, "a list of target names")
        if not all(isinstance(d, str) for d in deps):
            raise where.error("depends_on", "expected a list of target names")
        out["depends_on"] = tuple(dict.fromkeys(deps))
    return out


def _check_target(target: Target, where: _Where) -> None:
    if target.method is Method.HEAD and (target.expect_body or target.expect_body_regex):
        raise where.error("expect_body", "cannot be checked with method HEAD (no body)")
    latency = target.max_latency
    if latency is not None and latency >= target.policy.timeout:
        raise where.error(
            "max_latency",
            f"{format_duration(latency)} is not below timeout "
            f"{format_duration(target.policy.timeout)}",
        )


def _check_links(targets: tuple[Target, ...], path: str) -> None:
    names = [t.name for t in targets]
    by_name = {t.name: t for t in targets}
    counts = Counter(names)
    for target in targets:
        where = _Where(path, f'target "{target.name}"')
        if counts[target.name] > 1:
            raise where.error("name", f'"{target.name}" is used by more than one target')
        for dep in target.depends_on:
            if dep == target.name:
                raise where.error("depends_on", "a target cannot depend on itself")
            if dep not in by_name:
                close = difflib.get_close_matches(dep, names, n=1)
                hint = f'did you mean "{close[0]}"?' if close else None
                raise where.error("depends_on", f'no target named "{dep}"', hint)
    cycle = find_cycle(by_name)
    if cycle:
        raise _Where(path, f'target "{cycle[0]}"').error(
            "depends_on", "dependency cycle: " + " -> ".join(cycle)
        )


def find_cycle(by_name: Mapping[str, Target]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], or None. Iterative, linear in targets + links."""
    done: set[str] = set()
    for root in by_name:
        if root in done:
            continue
        trail: list[str] = [root]
        on_trail = {root}
        pending = [iter(by_name[root].depends_on)]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                finished = trail.pop()
                on_trail.discard(finished)
                done.add(finished)
                pending.pop()
                continue
            if dep in on_trail:
                return [*trail[trail.index(dep):], dep]
            if dep in done:
                continue
            trail.append(dep)
            on_trail.add(dep)
            pending.append(iter(by_name[dep].depends_on))
    return None


def parse_config(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """A validated Config from the parsed TOML document, or the first ConfigError found."""
    top = _Where(path, "")
    _reject_unknown(data, _TOP_KEYS, top)
    raw_defaults = data.get("defaults", {})
    where = _Where(path, "[defaults]")
    defaults_table = _typed(raw_defaults, dict, "defaults", top, "a table")
    _reject_unknown(defaults_table, _DEFAULT_KEYS, where)
    policy = _parse_policy(defaults_table, Policy(), where)
    shared = _parse_shared(defaults_table, where)
    raw_targets = data.get("target")
    if raw_targets is None:
        raise top.error("target", "no targets (add at least one [[target]] table)")
    target_list = _typed(raw_targets, list, "target", top, "[[target]] tables")
    targets = []
    for index, raw in enumerate(target_list, start=1):
        scope = _Where(path, f"target #{index}")
        table = _typed(raw, dict, "target", scope, "a [[target]] table")
        targets.append(_parse_target(table, shared, policy, scope))
    result = tuple(targets)
    if not result:
        raise top.error("target", "no targets (add at least one [[target]] table)")
    _check_links(result, path)
    interval = _duration(data, "interval", top) if "interval" in data else DEFAULT_INTERVAL
    if interval < 1:
        raise top.error("interval", "must be at least 1s")
    textfile = _absolute_path(data, "textfile", top) if "textfile" in data else None
    notify = _parse_notify(data["notify"], path) if "notify" in data else None
    history = DEFAULT_HISTORY
    if "history" in data:
        history = _int(data, "history", top, 10)
        if history > 10_000:
            raise top.error("history", f"must be at most 10000, got {history}")
    return Config(path=path, targets=result, interval=interval, textfile=textfile,
                  notify=notify, history=history)


def _parse_notify(raw: object, path: str) -> Notify:
    where = _Where(path, "[notify]")
    table = _typed(raw, dict, "notify", _Where(path, ""), "a table")
    _reject_unknown(table, _NOTIFY_KEYS, where)
    out: dict[str, Any] = {}
    if "command" in table:
        argv = _typed(table["command"], list, "command", where,
                      'a list like ["/usr/local/bin/alert", "--urgent"] (no shell is used)')
        if not argv or not all(isinstance(a, str) and a for a in argv):
            raise where.error("command", "expected a non-empty list of strings")
        if not os.path.isabs(argv[0]):
            raise where.error("command", f'"{argv[0]}" must be an absolute path')
        out["command"] = tuple(argv)
    if "webhook" in table:
        out["webhook"] = _parse_url(table["webhook"], where, key="webhook")
    if "headers" in table:
        out["headers"] = _parse_headers(table["headers"], where)
    if "token_file" in table:
        out["token_file"] = _typed(table["token_file"], str, "token_file", where, "a path")
    if "timeout" in table:
        out["timeout"] = _duration(table, "timeout", where)
    if "events" in table:
        names = _typed(table["events"], list, "events", where, "a list of event names")
        out["events"] = frozenset(_parse_enum(n, NotifyEvent, "events", where) for n in names)
    if not out.get("command") and not out.get("webhook"):
        raise where.error("command", 'set "command" or "webhook" (or both)')
    if out.get("token_file") and not out.get("webhook"):
        raise where.error("token_file", 'only applies with "webhook"')
    return Notify(**out)


def read_config_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file",
            "copy one of the examples/ to /etc/prober/prober.toml or pass --config",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {_os_reason(exc)}") from None


def parse_toml(text: str, path: str) -> Mapping[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: str, *, insecure: bool = False) -> Config:
    """Read, parse and validate the config file at `path`.

    Like sshd and sudo, refuses a file that someone other than root or the running user
    could have written (it decides what gets restarted and which commands run), unless
    `insecure`.
    """
    text = read_config_text(path)
    if not insecure:
        check_ownership(path, os.stat(path), os.geteuid())
    config = parse_config(parse_toml(text, path), path)
    for target in config.targets:
        if target.ca_file and not os.path.isfile(target.ca_file):
            raise ConfigError(f'{path}: target "{target.name}": ca_file: "{target.ca_file}" '
                              "does not exist")
    return config


def check_ownership(path: str, st: os.stat_result, euid: int) -> None:
    """ConfigError unless the file is owned by root or `euid` and not group/other-writable."""
    hint = "fix the file's owner and mode, or pass --insecure-config"
    if st.st_uid not in (0, euid):
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by root or the running user "
                          f"(uid {euid})", hint)
    if st.st_mode & 0o022:
        raise ConfigError(f"{path}: writable by group or others (mode {st.st_mode & 0o777:o})",
                          f"chmod go-w {path}, or pass --insecure-config")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> str:
    """--config beats PROBER_CONFIG beats the default."""
    return cli_value or environ.get("PROBER_CONFIG") or DEFAULT_CONFIG_PATH
