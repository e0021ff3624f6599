"""Fuzzing bad input: every bad config or command line is exit 3 and one line, never a traceback.

Strategies build TOML-ish documents from the real key set (right and wrong types, near-miss key
names, random durations, URLs, unit names, depends_on graphs with cycles) and command lines from
the real click commands and options. The bugs they found in prober/ have a regression test
each at the end; `KNOWN_CRASHES` lists crashes to step over while a fix is pending (none now).
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import json
import logging
import os
import string
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import prober.shell.watcher
from prober.core.config import (
    NOTIFY_KEYS,
    POLICY_KEYS,
    TARGET_KEYS,
    TOP_KEYS,
    Config,
    RestartRules,
    key_tables,
    parse_config,
)
from prober.core.errors import ConfigError
from prober.core.keys import Key, Shape, by_name, parse_duration
from prober.core.text import one_line
from prober.io.configfiles import load_config
from prober.probes import KINDS as PROBE_KINDS
from prober.shell.cli import cli as prober_cli
from prober.shell.cli import run
from tests.support.servers import refused_port

Doc = dict[str, Any]


def fuzz(examples: int) -> settings:
    """Reproducible settings: a fixed seed, no example database, no per-example deadline."""
    return settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# Crashes reported and not yet fixed: (exception type, text in its message).
KNOWN_CRASHES: tuple[tuple[str, str], ...] = ()


def _known_crash(kind: str, text: str) -> bool:
    known = any(kind == name and fragment in text for name, fragment in KNOWN_CRASHES)
    if known:
        event(f"known bug stepped over: {kind}")
    return known


def assert_one_line(message: str, prefix: str) -> None:
    """`message` is one line starting with `prefix`, with no traceback in it."""
    assert message.startswith(prefix), message
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message, message


# --- values -----------------------------------------------------------------------------------

# Line breaks are left out: values echoed with them are a known bug (test_line_break_*).
CHARS = st.characters(exclude_categories=["Cs"])


def texts(max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(CHARS, max_size=max_size)


SCALARS: st.SearchStrategy[Any] = st.one_of(
    texts(), st.integers(), st.floats(), st.booleans(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)), st.dates(), st.times(),
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(8), inner, max_size=3),
    max_leaves=6,
)
KINDS: dict[str, st.SearchStrategy[Any]] = {
    "str": texts(),
    "int": st.integers(),
    "float": st.floats(),
    "bool": st.booleans(),
    "list": st.lists(SCALARS, max_size=3),
    "table": st.dictionaries(texts(6), SCALARS, max_size=3),
    "datetime": st.datetimes() | st.dates() | st.times(),
}

# The schema comes from the key table itself: each key's shape says what it takes.
TOP = tuple(by_name(TOP_KEYS))
NOTIFY = tuple(by_name(NOTIFY_KEYS))
DEFAULTS = tuple(key_tables().defaults)
TARGET = tuple(key_tables().target)
KEYS: dict[str, Key] = {**by_name(NOTIFY_KEYS), **key_tables().target, **by_name(TOP_KEYS)}
SELECTORS = [key for kind in PROBE_KINDS for key in kind.selectors]
_TEXT = frozenset({"str"})
ACCEPTS: dict[Shape, frozenset[str]] = {
    Shape.DURATION: frozenset({"str", "int", "float"}),
    Shape.INTEGER: frozenset({"int"}),
    Shape.PERCENT: frozenset({"int", "float"}),
    Shape.BOOLEAN: frozenset({"bool"}),
    Shape.STATUSES: frozenset({"int", "str", "list"}),
    Shape.NAMES: frozenset({"str", "list"}),
    Shape.HEADERS: frozenset({"table"}),
    Shape.ENV: frozenset({"table"}),
    Shape.TABLE: frozenset({"table"}),
    Shape.TABLES: frozenset({"list"}),
    Shape.ARGV: frozenset({"list"}),
    Shape.CHOICES: frozenset({"list"}),
    Shape.ADDRESSES: frozenset({"list"}),
}


def accepted_kinds(key: str) -> frozenset[str]:
    """The TOML types a key takes (a value of any other type must be rejected, naming the key)."""
    return ACCEPTS.get(KEYS[key].shape, _TEXT)


def wrong_type(key: str) -> st.SearchStrategy[Any]:
    return st.sampled_from(sorted(set(KINDS) - accepted_kinds(key))).flatmap(KINDS.__getitem__)


DURATION_PARTS = st.tuples(
    st.integers(0, 10**4).map(str) | st.floats(0, 1e4).map(repr),
    st.sampled_from(["ms", "s", "m", "h", "d", "x", "", " "]),
)
DURATIONS: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["500ms", "30s", "5m", "1h", "1h30m", "2d", "0s", "1.5s", "10 s", "5",
                     "5sec", "-1s", "s", "", "1.5.5s", "\u0663s", "1e3s", "1h 30m"]),
    st.lists(DURATION_PARTS, min_size=1, max_size=3).map(lambda ps: "".join(map("".join, ps))),
    st.integers(-5, 10**6), st.floats(),
)
URLS = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "tcp://", "", "http:"]),
        st.sampled_from(["", "user:secret@", "@"]),
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "example.test", "", "[::1", "::1",
                         "ex ample"]),
        st.sampled_from(["", ":80", ":0", ":65536", ":-1", ":abc", ":"]),
        st.sampled_from(["", "/", "/health", "/a?b=c#d"]) | texts(6).map("/".__add__),
    ),
)
HOST_PORTS = st.builds(
    "{}:{}".format,
    st.sampled_from(["127.0.0.1", "localhost", "[::1]", "::1", "", "[::1", "a b"]),
    st.sampled_from(["80", "0", "65536", "-1", "x", "", "\u0668\u0660", "9" * 30]),
) | texts()
UNITS = st.sampled_from([
    "caddy", "caddy.service", "caddy.socket", "app@1.service", "app@.service", "dbus",
    "dbus.service", "prober", "prober-watch", "systemd-journald@x.service", "polkit",
    "../etc/passwd", "a b", "", "x" * 300, "-.service",
]) | texts()
NAMES: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["web", "caddy", "db", "api-1", "x.y", "_bad", "-bad", "a" * 64, "", "a b",
                     "w\u00e9b"]),
    texts(8), SCALARS,
)
STATUS_ITEMS = st.one_of(
    st.integers(0, 1000),
    st.sampled_from(["2xx", "3XX", "6xx", "xx", "200", "099", "\u00b200", "2xx ", "", "abc"]),
    st.booleans(), st.floats(),
)
REGEXES = st.sampled_from([
    "OK", "^ok$", "(", "[a-", "a{2,1}", "(?P<x>a)(?P<x>b)", "*", "\\", "a{99999999999999999999}",
]) | texts(6)
HEADERS = st.dictionaries(
    st.sampled_from(["X-Token", "Host", "Bad Name", "", "\u00e9", "a:b"]) | texts(6),
    texts(8) | VALUES, max_size=3,
)
PATHS = st.sampled_from(["/etc/ssl/ca.pem", "relative.pem", "", "/", "~/x"]) | texts()


SIGNALS = st.sampled_from(["SIGABRT", "sigquit", "ABRT", "SIGKILL", "SIGNOPE", "9", ""]) | texts()
IPS = st.sampled_from(["127.0.0.1", "::1", "[::1]", "fe80::1%eth0", "999.1.1.1", "localhost", ""])
BY_SHAPE: dict[Shape, st.SearchStrategy[Any]] = {
    Shape.DURATION: DURATIONS,
    Shape.INTEGER: st.integers(-3, 10) | st.integers(),
    Shape.PERCENT: st.integers(-5, 150) | st.floats(),
    Shape.BOOLEAN: st.booleans(),
    Shape.STRING: texts(),
    Shape.PATH: PATHS,
    Shape.CREDENTIAL: PATHS | st.sampled_from(["token", "a/b"]),
    Shape.URL: URLS,
    Shape.HOST_PORT: HOST_PORTS,
    Shape.IP: IPS,
    Shape.REGEX: REGEXES,
    Shape.STATUSES: st.lists(STATUS_ITEMS, max_size=3) | STATUS_ITEMS,
    Shape.HEADERS: HEADERS,
    Shape.ENV: HEADERS,
    Shape.ARGV: st.lists(PATHS, max_size=3),
    Shape.UNIT: UNITS,
    Shape.NAME: NAMES,
    Shape.SIGNAL: SIGNALS,
}


def good_values(key: str, names: Sequence[str]) -> st.SearchStrategy[Any]:
    """Plausible values for `key`, right and wrong ones (wrong types come from `VALUES`)."""
    spec = KEYS.get(key)
    if spec is None:  # a typo, or random text
        return PATHS
    if spec.shape is Shape.NAMES:  # a graph over the document's names: cycles, self, strangers
        pool = st.sampled_from([*names, "ghost"])
        return st.lists(pool, max_size=3) | pool
    if spec.shape in (Shape.CHOICE, Shape.CHOICES):
        choice = st.sampled_from([*spec.choices, *(c.upper() for c in spec.choices), "nope", ""])
        return st.lists(choice | SCALARS, max_size=3) if spec.shape is Shape.CHOICES else choice
    return BY_SHAPE.get(spec.shape, VALUES)


@st.composite
def values_for(draw: st.DrawFn, key: str, names: Sequence[str] = ()) -> Any:
    """Mostly plausible values for `key`; one in five anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(VALUES)
    return draw(good_values(key, names))


@st.composite
def typos(draw: st.DrawFn, key: str) -> str:
    """`key` with one slip of the fingers: a letter dropped, added, changed or swapped, a dash."""
    kind = draw(st.sampled_from(["drop", "add", "change", "swap", "dash", "capital"]))
    i = draw(st.integers(0, len(key) - 1))
    letter = draw(st.sampled_from(string.ascii_lowercase + "_-"))
    if kind == "drop":
        return key[:i] + key[i + 1:]
    if kind == "change":
        return key[:i] + letter + key[i + 1:]
    if kind == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]
    if kind == "dash" and "_" in key:
        return key.replace("_", "-", 1)
    if kind == "capital":
        return key[:1].upper() + key[1:]
    return key[:i] + letter + key[i:]


def keys_of(allowed: Sequence[str]) -> st.SearchStrategy[str]:
    """Real keys mostly, near misses often, random text sometimes."""
    real = st.sampled_from(list(allowed))
    return st.one_of(real, real, real, real.flatmap(typos), texts(10))


@st.composite
def tables(draw: st.DrawFn, allowed: Sequence[str], names: Sequence[str] = ()) -> Doc:
    keys = draw(st.lists(keys_of(allowed), max_size=5, unique=True))
    return {key: draw(values_for(key, names)) for key in keys}


@st.composite
def target_tables(draw: st.DrawFn, name: Any, names: Sequence[str]) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)  # not a table at all
    table = draw(tables(TARGET, names))
    if draw(st.integers(0, 9)) > 0:
        table["name"] = name
    # mostly one kind, sometimes two (an error), sometimes none (an error)
    how = draw(st.lists(st.sampled_from(SELECTORS), max_size=2) | st.sampled_from(
        SELECTORS).map(lambda selector: [selector]))
    for selector in how:
        table.setdefault(selector, draw(values_for(selector)))
    if draw(st.booleans()):
        table["depends_on"] = draw(values_for("depends_on", names))
    return table


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    """Arbitrary TOML-ish documents over the real key set."""
    names = draw(st.lists(NAMES, max_size=4))
    pool = [n for n in names if isinstance(n, str)]
    doc: Doc = {}
    for key in draw(st.lists(keys_of(TOP), max_size=4, unique=True)):
        if key == "defaults":
            doc[key] = draw(tables(DEFAULTS) | VALUES)
        elif key == "notify":
            doc[key] = draw(tables(NOTIFY) | VALUES)
        elif key != "target":
            doc[key] = draw(values_for(key))
    if draw(st.integers(0, 9)) > 0:
        doc["target"] = [draw(target_tables(name, pool)) for name in names]
    elif draw(st.booleans()):
        doc["target"] = draw(VALUES)
    return doc


# --- valid documents, to mutate one thing at a time -------------------------------------------
#
# Built from the key table like the documents above: a valid value per Shape, bounded by the
# key's declared `minimum` and `choices`, so a new key or kind needs no edit here. What the
# table cannot say are the rules between keys (docs/configuration.md); `_keep_rules` keeps them.

_DURATIONS = ("0s", "500ms", "2s", "30s", "5m", "1h", "1h30m", "2d", 90, 2.5)


def _valid_durations(key: Key) -> st.SearchStrategy[Any]:
    """Durations the key takes: any, or only those above its declared minimum."""
    bound = key.minimum
    return st.sampled_from(
        [d for d in _DURATIONS if bound is None or parse_duration(d) > bound])


def _valid_integers(key: Key) -> st.SearchStrategy[Any]:
    low = int(key.minimum or 0)
    return st.integers(low, low + 5)


def _choice(key: Key) -> st.SearchStrategy[str]:
    return st.sampled_from([*key.choices, *(c.upper() for c in key.choices)])


_MAIL_ADDRESSES = st.sampled_from(["admin@example.org", "oncall+prober@mail.example.org", "a@b"])
VALID_NAMES = st.sampled_from(["web", "caddy", "db", "api-1", "x.y", "cache", "w_2", "Z9"])
_HEADER_NAMES = st.sampled_from(["X-Token", "Accept", "X_A", "Host"])
_ENV_NAMES = st.sampled_from(["REDISCLI_AUTH", "PGCONNECT_TIMEOUT", "_X1"])
VALID_BY_SHAPE: dict[Shape, Callable[[Key], st.SearchStrategy[Any]]] = {
    Shape.DURATION: _valid_durations,
    Shape.INTEGER: _valid_integers,
    Shape.PERCENT: lambda key: st.integers(0, 100) | st.floats(0, 100),
    Shape.BOOLEAN: lambda key: st.booleans(),
    Shape.STRING: lambda key: texts(8),
    Shape.PATH: lambda key: st.sampled_from(
        ["/run/app/puma.sock", "/etc/ssl/private/ca.pem", "/var/lib/prometheus/x.prom"]),
    Shape.CREDENTIAL: lambda key: st.sampled_from(["/etc/prober/redis.env", "redis-auth"]),
    Shape.URL: lambda key: st.sampled_from([
        "http://127.0.0.1:8080/health", "https://example.test/", "http://[::1]:3000/x?y=1",
        "http://u:p@example.test:81/"]),
    Shape.HOST_PORT: lambda key: st.sampled_from(["127.0.0.1:6379", "[::1]:5432", "db.test:1"]),
    Shape.IP: lambda key: st.sampled_from(["127.0.0.1", "::1", "[::1]"]),
    Shape.REGEX: lambda key: st.sampled_from(["^PONG$", "accepting", "OK|ok", r"\d+ ms"]),
    Shape.CHOICE: _choice,
    Shape.CHOICES: lambda key: st.lists(_choice(key), max_size=len(key.choices)),
    Shape.STATUSES: lambda key: st.sampled_from([200, "2xx", "3XX", "404", [200, "3xx"]]),
    Shape.HEADERS: lambda key: st.dictionaries(
        _HEADER_NAMES, texts(8).filter(lambda text: "\n" not in text and "\r" not in text),
        max_size=2),
    Shape.ENV: lambda key: st.dictionaries(
        _ENV_NAMES, texts(8).filter(lambda text: "\0" not in text), max_size=2),
    Shape.ARGV: lambda key: st.sampled_from([
        ["/usr/bin/redis-cli", "ping"], ["/usr/bin/pg_isready", "-h", "/run/postgresql"],
        ["/usr/local/lib/prober/sidekiq-alive"]]),
    Shape.UNIT: lambda key: st.sampled_from(
        ["caddy", "caddy.service", "mastodon-web.service", "app@1.service"]),
    Shape.NAME: lambda key: VALID_NAMES,
    Shape.SIGNAL: lambda key: st.sampled_from(["SIGABRT", "sigquit", "ABRT"]),
    Shape.ADDRESS: lambda key: _MAIL_ADDRESSES,
    Shape.ADDRESSES: lambda key: st.lists(_MAIL_ADDRESSES, min_size=1, max_size=3),
}
# Keys whose values are the document's own structure, drawn by valid_documents itself.
STRUCTURAL = frozenset({Shape.NAMES, Shape.TABLE, Shape.TABLES})


def valid_value(key: Key) -> st.SearchStrategy[Any]:
    return VALID_BY_SHAPE[key.shape](key)


def _some(draw: st.DrawFn, keys: Sequence[Key]) -> Doc:
    """Up to four of `keys`, each with a valid value."""
    chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique_by=lambda k: k.name))
    return {key.name: draw(valid_value(key)) for key in chosen}


def _effective(name: str, table: Doc, defaults: Doc) -> Any:
    """A policy key's value for `table` over `defaults`, parsed; the built-in default else."""
    raw = table.get(name, defaults.get(name))
    return getattr(RestartRules(), name) if raw is None else KEYS[name].read(raw)


def _keep_rules(table: Doc, defaults: Doc, *, target: bool) -> None:
    """Make `table` keep the rules between keys, over `defaults`, by setting its own keys."""
    def value(name: str) -> Any:
        return _effective(name, table, defaults)

    if value("max_cooldown") < value("cooldown"):
        table["max_cooldown"] = value("cooldown")
    if value("max_restarts") > 0 and value("restart_window") <= 0:
        table["max_restarts"] = 0
    if not target:
        return
    if value("max_latency") is not None and value("max_latency") >= value("timeout"):
        table["timeout"] = 2 * value("max_latency") + 1
    method = str(table.get("method", defaults.get("method", "GET"))).upper()
    if method == "HEAD" and ({"expect_body", "expect_body_regex"} & set(table)):
        table["method"] = "GET"


@st.composite
def valid_targets(draw: st.DrawFn, name: str, earlier: Sequence[str], defaults: Doc) -> Doc:
    """A target of any registered kind: its selectors, then some of its keys and the policy's."""
    kind = draw(st.sampled_from(PROBE_KINDS))
    selectors = draw(st.lists(st.sampled_from(kind.selectors), min_size=1, unique=True))
    own = by_name(kind.keys)
    table: Doc = {"name": name, **{s: draw(valid_value(own[s])) for s in selectors}}
    keys = [k for k in (*POLICY_KEYS, *kind.keys, *TARGET_KEYS) if k.name not in
            {*kind.selectors, "name"} and k.shape not in STRUCTURAL]
    table.update(_some(draw, keys))
    if draw(st.booleans()) and earlier:
        table["depends_on"] = draw(st.lists(st.sampled_from(earlier), max_size=3))
    _keep_rules(table, defaults, target=True)
    return table


@st.composite
def valid_notify(draw: st.DrawFn) -> Doc:
    """A [notify] table with a command, a webhook or mail_to (token_file only with a webhook,
    the mail keys only with mail_to, smtp_user and smtp_password_file together)."""
    keys = by_name(NOTIFY_KEYS)
    table = _some(draw, list(keys.values()))
    mail_keys = {"mail_from", "smtp_host", "smtp_user", "smtp_password_file"}
    if "mail_to" not in table and mail_keys & set(table):
        table["mail_to"] = draw(valid_value(keys["mail_to"]))
    for one, other in (("smtp_user", "smtp_password_file"), ("smtp_password_file", "smtp_user")):
        if one in table and other not in table:
            table[other] = draw(valid_value(keys[other]))
    if "smtp_user" in table:  # a STRING, but one printable line
        table["smtp_user"] = draw(st.sampled_from(["ops", "prober@example.org"]))
    if ("webhook" not in table and "token_file" in table) or \
            not {"command", "webhook", "mail_to"} & set(table):
        table["webhook"] = draw(valid_value(keys["webhook"]))
    return table


@st.composite
def valid_documents(draw: st.DrawFn) -> Doc:
    """Documents prober must accept: every rule of docs/configuration.md kept."""
    names = draw(st.lists(VALID_NAMES, min_size=1, max_size=5, unique=True))
    defaults_keys = [k for k in key_tables().defaults.values() if k.shape not in STRUCTURAL]
    defaults = _some(draw, defaults_keys) if draw(st.booleans()) else {}
    _keep_rules(defaults, {}, target=False)
    targets = [draw(valid_targets(name, names[:index], defaults))
               for index, name in enumerate(names)]
    top = [k for k in TOP_KEYS if k.shape not in STRUCTURAL]
    doc: Doc = {**_some(draw, top), "target": targets}
    if draw(st.booleans()) or defaults:
        doc["defaults"] = defaults
    if draw(st.booleans()):
        doc["notify"] = draw(valid_notify())
    return doc


def test_every_shape_has_a_valid_strategy() -> None:
    """A new Shape in the key table needs its valid values here, or the fuzzer cannot build a
    document holding it."""
    assert set(VALID_BY_SHAPE) | STRUCTURAL == set(Shape)


@pytest.mark.parametrize("key", [k for k in KEYS.values() if k.shape in (
    Shape.DURATION, Shape.INTEGER)], ids=lambda k: k.name)
def test_declared_minimums_are_the_parsers(key: Key) -> None:
    """The valid strategies trust `Key.minimum`: integers from it up, durations above it (or
    from 0s when none is declared). Each parser agrees."""
    if key.shape is Shape.INTEGER:
        low = int(key.minimum or 0)
        key.read(low)
        with pytest.raises(ValueError):
            key.read(low - 1)
    elif key.minimum is None:
        key.read("0s")
    else:
        key.read(key.minimum + 0.001)
        with pytest.raises(ValueError):
            key.read(0)


def tables_in(doc: Doc) -> list[tuple[str, Doc, tuple[str, ...]]]:
    """Every table of `doc` with the keys allowed there: (where, table, allowed keys)."""
    found: list[tuple[str, Doc, tuple[str, ...]]] = [("top", doc, TOP)]
    if isinstance(doc.get("defaults"), dict):
        found.append(("[defaults]", doc["defaults"], DEFAULTS))
    if isinstance(doc.get("notify"), dict):
        found.append(("[notify]", doc["notify"], NOTIFY))
    found += [(f"target {t['name']}", t, TARGET) for t in doc["target"]]
    return found


# --- TOML out, for load_config ------------------------------------------------------------------


def toml_string(text: str) -> str:
    escaped = ("\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c
               for c in text)
    return '"' + "".join(escaped) + '"'


def toml_value(value: Any) -> str:
    """One value as inline TOML (tables as inline tables, so a document is key = value lines)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    assert isinstance(value, str)
    return toml_string(value)


def toml_key(key: str) -> str:
    return toml_string(key)


def toml_document(doc: Doc) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in doc.items())


def normal(value: Any) -> str:
    """A comparable spelling of a document (NaN equals NaN here)."""
    return json.dumps(value, sort_keys=True, default=str)


# --- config fuzzing ---------------------------------------------------------------------------

CONFIG_PATHS = st.sampled_from(
    ["/etc/prober/prober.toml", "prober.toml", "/srv/a b/\u00fc.toml", "<config>"])


def parse_or_error(doc: Mapping[str, Any], path: str) -> Config | ConfigError | None:
    """parse_config's answer, checked: a Config, or a ConfigError of one line naming `path`.

    None for a crash already reported (KNOWN_CRASHES); any other exception fails the test.
    """
    try:
        config = parse_config(doc, path)
    except ConfigError as exc:
        assert_one_line(str(exc), f"{path}: ")
        event("ConfigError")
        return exc
    except Exception as exc:
        if _known_crash(type(exc).__name__, str(exc)):
            return None
        raise
    assert isinstance(config, Config)
    event("Config")
    return config


@fuzz(300)
@given(doc=documents(), path=CONFIG_PATHS)
def test_any_document_is_a_config_or_one_line_error(doc: Doc, path: str) -> None:
    """parse_config turns any document into a Config or a one-line ConfigError naming the file."""
    result = parse_or_error(doc, path)
    if isinstance(result, Config):
        assert len(result.targets) == len(doc["target"])
        assert len(set(result.names)) == len(result.names)


@fuzz(100)
@given(doc=valid_documents())
def test_valid_documents_are_accepted(doc: Doc) -> None:
    """Documents that keep every documented rule are accepted, target for target."""
    config = parse_config(doc, "/etc/prober/prober.toml")
    assert config.names == tuple(t["name"] for t in doc["target"])


@fuzz(150)
@given(doc=valid_documents(), data=st.data())
def test_unknown_key_is_an_error_with_did_you_mean(doc: Doc, data: st.DataObject) -> None:
    """An unknown key anywhere is an error naming it; a near miss also suggests the real key."""
    _, table, allowed = data.draw(st.sampled_from(tables_in(doc)), label="table")
    real = data.draw(st.sampled_from([k for k in allowed if len(k) >= 4]), label="real key")
    key = data.draw(typos(real) | texts(10).filter(bool), label="unknown key")
    assume(key not in allowed)
    table[key] = data.draw(VALUES, label="value")
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, "/p.toml")
    message = str(caught.value)
    assert_one_line(message, "/p.toml: ")
    assert one_line(f"{key}: unknown key") in message
    closeness = difflib.SequenceMatcher(None, key, real).ratio()
    if closeness >= 0.6:  # difflib's own idea of close, which the typos above always reach
        suggested = message.partition('did you mean "')[2].partition('"')[0]
        assert suggested in allowed, message
        assert difflib.SequenceMatcher(None, key, suggested).ratio() >= closeness, message


@fuzz(150)
@given(doc=valid_documents(), data=st.data())
def test_wrong_type_for_a_real_key_names_the_key(doc: Doc, data: st.DataObject) -> None:
    """A value of the wrong TOML type for any real key is a one-line error naming that key."""
    _, table, _ = data.draw(st.sampled_from([t for t in tables_in(doc) if t[1]]), label="table")
    key = data.draw(st.sampled_from(sorted(table)), label="key")
    table[key] = data.draw(wrong_type(key), label="wrong value")
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, "/p.toml")
    assert_one_line(str(caught.value), "/p.toml: ")
    assert f"{key}: " in str(caught.value)


@fuzz(100)
@given(doc=valid_documents(), data=st.data())
def test_dependency_cycles_are_rejected(doc: Doc, data: st.DataObject) -> None:
    """depends_on cycles of any length, a target on itself included, are one-line errors."""
    targets = doc["target"]
    ring = data.draw(st.lists(st.sampled_from(targets), min_size=1, unique_by=id), label="ring")
    for table, after in zip(ring, ring[1:] + ring[:1], strict=True):
        table["depends_on"] = [*table.get("depends_on", []), after["name"]]
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, "/p.toml")
    message = str(caught.value)
    assert_one_line(message, "/p.toml: ")
    assert "depends_on: " in message
    assert "cycle" in message or "itself" in message


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """A key = value line nested around the loader's limit or far beyond it: arrays, inline
    tables, a dotted key or a table header, mixed, closed or left open."""
    depth = draw(st.one_of(st.integers(1, 40), st.integers(1_000, 100_000)))
    closed = draw(st.booleans())
    opener, closer = draw(st.sampled_from([("[", "]"), ("{a = ", "}"), ("[{a = [", "]}]")]))
    value = opener * depth + "1" + (closer * depth if closed else "")
    key = "x" + ".x" * draw(st.integers(0, depth))
    return draw(st.sampled_from([f"{key} = {value}", f"[{key}]", f"y = {value}"])).encode()


@st.composite
def config_files(draw: st.DrawFn) -> tuple[bytes, Doc | None]:
    """The bytes of a config file, and the document they hold if they are TOML by design."""
    kind = draw(st.sampled_from(["bytes", "text", "document", "valid", "cut", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), None
    if kind == "deep":  # a valid document with a deeply nested value or key spliced in
        lines = toml_document(draw(valid_documents())).encode().splitlines(keepends=True)
        where = draw(st.integers(0, len(lines)))
        return b"".join([*lines[:where], draw(deep_nesting()), b"\n", *lines[where:]]), None
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass"), None
    doc = draw(valid_documents() if kind == "valid" else documents())
    text = toml_document(doc).encode()
    if kind == "cut":  # a TOML file with a slice cut out or replaced
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, len(text)))
        return text[:start] + draw(st.binary(max_size=4)) + text[end:], None
    return text, doc


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "prober.toml"


@fuzz(150)
@given(file=config_files())
def test_any_config_file_loads_or_is_one_line_error(config_file: Path,
                                                    file: tuple[bytes, Doc | None]) -> None:
    """load_config turns any file into a Config or a one-line ConfigError, as parse_config does."""
    content, doc = file
    config_file.write_bytes(content)
    config_file.chmod(0o600)
    path = str(config_file)
    try:
        loaded: Config | ConfigError = load_config(path)
    except ConfigError as exc:
        assert_one_line(str(exc), f"{path}: ")
        loaded = exc
    except Exception as exc:
        if _known_crash(type(exc).__name__, str(exc)):
            return
        raise
    if doc is None:
        return
    assert normal(tomllib.loads(content.decode())) == normal(doc)  # the test's TOML writer
    parsed = parse_or_error(doc, path)
    if isinstance(parsed, ConfigError):
        assert str(loaded) == str(parsed)
    elif isinstance(parsed, Config) and isinstance(loaded, Config):
        assert loaded == parsed
    elif isinstance(parsed, Config):
        # the checks only load_config makes: files that must exist, credentials' directory
        assert "ca_file" in str(loaded) or "$CREDENTIALS_DIRECTORY is not set" in str(loaded), \
            loaded


# --- CLI fuzzing ---------------------------------------------------------------------------------

SANDBOX_CONFIG = """\
[defaults]
timeout = "1s"
confirm_interval = "0s"

[[target]]
name = "web"
url = "http://127.0.0.1:{port}/health"
expect_body = "OK"
depends_on = ["cache"]

[[target]]
name = "cache"
tcp = "127.0.0.1:{port}"
"""
# The commands fuzzed, the ones that probe more often (`watch` runs once: see `sandbox`).
COMMANDS = ("check", "check", "check", "probe", "probe", "status", "validate", "reset",
            "polkit-rule", "watch")


@dataclass(frozen=True)
class Sandbox:
    path: Path  # the cwd, holding the config, the state and whatever paths the argv names
    port: int  # the refused loopback port every target and probed URL points at


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A tmp dir as cwd, a valid config whose targets are refused, no bus, `watch` runs once."""
    port = refused_port()
    config = tmp_path / "prober.toml"
    config.write_text(SANDBOX_CONFIG.format(port=port))
    config.chmod(0o644)
    (tmp_path / "bad.toml").write_text("[[target]\nname = 1\n")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "note.txt").write_text("a file, not a directory\n")
    for name in list(os.environ):
        if name.startswith("PROBER_") or name in (
                "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PROBER_CONFIG", str(config))
    monkeypatch.setenv("PROBER_STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prober.shell.watcher, "watch",
                        functools.partial(prober.shell.watcher.watch, runs=1))
    logger = logging.getLogger("prober")  # run() points it at capsys's stderr: put it back
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield Sandbox(tmp_path, port)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


# "{tmp}" and "{port}" are filled in per test: the sandbox and its refused port.
CLI_DURATIONS = st.sampled_from(
    ["1s", "500ms", "0s", "-1s", "5 m", "x", "1h", "2d", "0.5s", "", "1e3s"]) | texts(6)
CLI_VALUES: dict[str, st.SearchStrategy[str]] = {
    "config_file": st.sampled_from(["prober.toml", "{tmp}/prober.toml", "missing.toml",
                                    "bad.toml", "a-dir", "note.txt/x.toml", ""]),
    "state_file": st.sampled_from(["state/state.json", "other/state.json", "{tmp}/s2.json",
                                   "note.txt/state.json", "", "."]),
    "textfile": st.sampled_from(["metrics.prom", "{tmp}/m.prom", "a-dir", "no-dir/m.prom"]),
    "targets": st.sampled_from(["web", "cache", "wbe", "nope", ""]) | texts(6),
    "user_name": st.sampled_from(["prober", "root", ""]) | texts(6),
    "headers": st.builds("{}: {}".format, st.sampled_from(["X-Token", "Host", "Bad Name", ""])
                         | texts(6), texts(8)) | texts(8),
    "expect_status": st.sampled_from(["200", "2xx", "6xx", "abc", "\u00b200", ""]),
    "expect_body": texts(8),
    "expect_body_regex": REGEXES,
    "retries": st.sampled_from(["0", "1", "-1", "x", ""]),
    "max_body": st.sampled_from(["1", "0", "-5", "65536", "1k"]),
    "resolve": st.sampled_from(["127.0.0.1", "::1", "[::1]", "not-an-ip", "999.0.0.1", ""]),
    "method": st.sampled_from(["GET", "head", "POST", ""]),
    "env": st.sampled_from(["A=1", "BAD NAME=x", "nosign", "=x"]),
    "env_file": st.sampled_from(["{tmp}/missing.env", "relative/x", "{tmp}/note.txt"]),
    "expect_exit": st.sampled_from(["0", "2", "-1", "300", "x"]),
    "unix_socket": st.sampled_from(["{tmp}/no.sock", "relative.sock", "{tmp}/note.txt"]),
    "ca_file": st.sampled_from(["{tmp}/missing.pem", "relative.pem", "{tmp}/prober.toml"]),
}
# Only loopback: every host is one of these, every port the refused one or an invalid one.
CLI_URLS = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["http://", "https://", "tcp://", "ftp://", "", "HTTP://"]),
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "[::1"]),
        st.sampled_from([":{port}", ":{port}", ":0", ":99999", ":x"]),
        st.sampled_from(["", "/", "/health", "/a?b=1#c"])
        | st.text(string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@/?#", max_size=8)
        .map("/".__add__),
    ),
)
CLI_COMMANDS = st.sampled_from([["/bin/true"], ["/bin/false"], ["/bin/echo", "PONG"],
                                ["/nonexistent/command"], ["relative", "x"]])
JUNK = st.sampled_from(["--nope", "-x", "--dry-rn", "--jsno", "--", "-", "-h", ""])


def option_tokens(option: click.Option) -> st.SearchStrategy[list[str]]:
    """`--flag`, or `--option VALUE` with a value fit for the option (or not)."""
    flag = st.sampled_from(option.opts)
    if option.is_flag or option.count:
        return flag.map(lambda opt: [opt])
    name = option.name or ""
    if name in CLI_VALUES:
        values = CLI_VALUES[name]
    elif option.metavar == "DURATION":
        values = CLI_DURATIONS
    elif isinstance(option.type, click.Choice):
        choices = [str(c) for c in option.type.choices]
        values = st.sampled_from([*choices, *(c.swapcase() for c in choices), "nope"])
    else:
        values = texts(8)
    return st.tuples(flag, values).map(list)


def command_lines(name: str) -> st.SearchStrategy[list[str]]:
    """Argument lists for one subcommand, built from its click options and arguments."""
    command = prober_cli.commands[name]
    pieces = [option_tokens(p) for p in command.params if isinstance(p, click.Option)]
    junk = JUNK.map(lambda j: [j])
    groups: list[st.SearchStrategy[list[list[str]]]] = [
        st.lists(st.one_of(*pieces), max_size=4), st.lists(junk, max_size=1) | st.just([])]
    for argument in (p for p in command.params if isinstance(p, click.Argument)):
        if argument.name == "what":  # URLs, or harmless commands after "--"
            values = st.lists(CLI_URLS, min_size=1, max_size=1) | st.lists(CLI_URLS, max_size=2) \
                | CLI_COMMANDS.map(lambda command: ["--", *command])
        else:
            values = st.lists(CLI_VALUES["targets"], max_size=3)
        groups.append(values.map(lambda vs: [[v] for v in vs]))
    return (st.tuples(*groups)
            .map(lambda parts: [g for part in parts for g in part])
            .flatmap(st.permutations)
            .map(lambda parts: [token for part in parts for token in part]))


GROUP_FLAGS = st.lists(
    st.sampled_from(["-v", "-vv", "-q", "--debug", "--insecure-config", "--version"]),
    max_size=3)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from([c for c in COMMANDS if c in prober_cli.commands]))
    event(f"command {name}")
    command = name if draw(st.integers(0, 19)) else draw(typos(name))
    return [*draw(GROUP_FLAGS), command, *draw(command_lines(name))]


def fill(argv: Sequence[str], sandbox: Sandbox) -> list[str]:
    return [a.replace("{tmp}", str(sandbox.path)).replace("{port}", str(sandbox.port))
            for a in argv]


# Commands that probe: when they meet a bad state or metrics path they still probe and report
# (check.py run_check), so their log lines may come before the error line.
PROBING = frozenset({"check", "watch"})


def assert_exit_contract(code: int, err: str, argv: Sequence[str]) -> None:
    """Exit 0-3; exit 3 ends stderr with one "prober: error: " line, never with a traceback.

    Every stderr line is then a whole "prober: ..." line (a message broken over lines is not),
    and a command that did not probe wrote that one line only.
    """
    assert code in (0, 1, 2, 3), (code, err)
    if code == 3 and _known_cli_crash(err):
        return
    assert "Traceback" not in err and "internal error" not in err, err
    if code != 3:
        return
    lines = err.rstrip("\n").split("\n")  # splitlines() would also split at \x1c-\x1e, \x85...
    assert err.strip(), "exit 3 without a word on stderr"
    assert all(line.startswith("prober: ") for line in lines), err
    assert_one_line(lines[-1], "prober: error: ")
    command = next((a for a in argv if a in prober_cli.commands), None)
    if command not in PROBING:
        assert len(lines) == 1, err


def _known_cli_crash(err: str) -> bool:
    last = err.rstrip("\n").split("\n")[-1]
    for name in {name for name, _ in KNOWN_CRASHES}:
        if f"{name}(" in last or last.startswith(f"{name}:"):
            return _known_crash(name, last)
    return False


@fuzz(200)
@given(argv=argvs())
def test_any_command_line_exits_0_to_3_and_3_is_one_line(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Any argv of real commands and flags exits 0-3; 3 with one "prober: error:" line last."""
    argv = fill(argv, sandbox)
    capsys.readouterr()
    code = run(argv)
    err = capsys.readouterr().err
    event(f"exit {code}")
    assert_exit_contract(code, err, argv)


# --- bugs found: each fails until prober/ is fixed -------------------------------------------


def expect_config_error(parse: Callable[[], object], path: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse()
    assert_one_line(str(caught.value), f"{path}: ")
    assert f"{key}: " in str(caught.value)


def one_target(**keys: Any) -> Doc:
    return {"target": [{"name": "web", "url": "http://127.0.0.1:1/", **keys}]}


def test_huge_integer_duration_is_a_config_error(config_file: Path) -> None:
    """`timeout = 1` followed by 400 zeros (valid TOML) is a one-line ConfigError."""
    config_file.write_text(toml_document(one_target(timeout=10**400)))
    expect_config_error(lambda: load_config(str(config_file)), str(config_file), "timeout")


def test_superscript_digit_status_is_a_config_error() -> None:
    """expect_status = ["²00"] is a one-line ConfigError, not a ValueError from int()."""
    doc = one_target(expect_status=["\u00b200"])
    expect_config_error(lambda: parse_config(doc, "/p.toml"), "/p.toml", "expect_status")


@pytest.mark.parametrize("doc", [
    one_target(url="http://[::1/health"),
    {**one_target(), "notify": {"webhook": "https://[hooks/"}},
], ids=["url", "webhook"])
def test_unbalanced_bracket_url_is_a_config_error(doc: Doc) -> None:
    """A URL with an unbalanced "[" is a one-line ConfigError, not "Invalid IPv6 URL"."""
    key = "webhook" if "notify" in doc else "url"
    expect_config_error(lambda: parse_config(doc, "/p.toml"), "/p.toml", key)


@pytest.mark.parametrize("regex", ["a{99999999999999999999}", "(" * 1000 + ")" * 1000],
                         ids=["huge-repeat", "deep-nesting"])
def test_pathological_regex_is_a_config_error(regex: str) -> None:
    """An expect_body_regex that re cannot compile is a one-line ConfigError whatever re raises."""
    doc = one_target(expect_body_regex=regex)
    expect_config_error(lambda: parse_config(doc, "/p.toml"), "/p.toml", "expect_body_regex")


def _chain(length: int) -> Doc:
    targets: list[Doc] = [{"name": f"t{i}", "url": "http://127.0.0.1:1/",
                           "depends_on": [f"t{i + 1}"]} for i in range(length)]
    return {"target": [*targets, {"name": f"t{length}", "url": "http://127.0.0.1:1/"}]}


def test_long_dependency_chain_is_accepted() -> None:
    """A depends_on chain of 1000 targets loads (no RecursionError from the cycle check)."""
    assert len(parse_config(_chain(1000), "/p.toml").targets) == 1001


def test_dense_dependency_graph_is_checked_quickly() -> None:
    """21 targets each depending on all earlier ones (a DAG) are checked in well under 0.1s."""
    doc = {"target": [{"name": f"t{i}", "url": "http://127.0.0.1:1/",
                       "depends_on": [f"t{j}" for j in range(i)]} for i in range(21)]}
    started = time.monotonic()
    parse_config(doc, "/p.toml")
    assert time.monotonic() - started < 0.1


@pytest.mark.parametrize("doc", [
    one_target(name="web\nprober: error: forged"),
    one_target(url="ftp://a\nb"),
    one_target(unit="caddy\n.service"),
    {"target": [{"name": "web", "tcp": "a\nb"}]},
    one_target(**{"time\nout": 1}),
], ids=["name", "url", "unit", "tcp", "key"])
def test_line_break_in_a_value_stays_one_line(doc: Doc) -> None:
    """A key or value holding a line break still gives a one-line ConfigError."""
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, "/p.toml")
    assert_one_line(str(caught.value), "/p.toml: ")


@pytest.mark.parametrize("argv", [
    ["probe", "--header", "X-A\nB: c", "http://127.0.0.1:{port}/"],
    ["check", "--target", "we\nb"],
], ids=["header", "target"])
def test_line_break_in_an_argument_stays_one_line(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """An argument holding a line break still gives exit 3 and one line on stderr."""
    code = run(fill(argv, sandbox))
    assert code == 3
    assert capsys.readouterr().err.count("\n") == 1


def test_no_arguments_is_not_a_help_text_error(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """`prober` alone does not print the whole help as "prober: error: Usage: ..." with exit 3."""
    assert_exit_contract(run([]), capsys.readouterr().err, [])


def assert_state_error(code: int, err: str) -> None:
    """Exit 3, and the last line of stderr the error (the probes may have logged before it)."""
    assert code == 3, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert_one_line(err.rstrip("\n").split("\n")[-1], "prober: error: ")


def test_state_path_without_a_name_is_a_state_error(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --state .` is exit 3 with a "prober: error:" line, not an internal ValueError."""
    code = run(["check", "--state", "."])
    assert_state_error(code, capsys.readouterr().err)


def test_state_path_that_is_a_directory_is_left_alone(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check --state DIR` (the state directory instead of its file) leaves DIR as it was."""
    assert run(["check"]) == 1  # a state file now exists in state/
    capsys.readouterr()
    code = run(["check", "--state", str(sandbox.path / "state")])
    assert (sandbox.path / "state" / "state.json").is_file()
    assert_state_error(code, capsys.readouterr().err)
