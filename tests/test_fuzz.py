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

import prober.watcher
from prober.cli import cli as prober_cli
from prober.cli import run
from prober.config import (
    NOTIFY_KEYS,
    POLICY_KEYS,
    TOP_KEYS,
    Config,
    key_tables,
    load_config,
    parse_config,
)
from prober.errors import ConfigError
from prober.keys import Key, Shape, by_name
from prober.probes import KINDS as PROBE_KINDS
from prober.text import one_line
from tests.servers import refused_port

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

VALID_POLICY: dict[str, st.SearchStrategy[Any]] = {
    "timeout": st.sampled_from(["2s", "5s", "1m", 3, 4.5]),
    "max_latency": st.sampled_from(["500ms", "1s", 1]),
    "retries": st.integers(0, 3),
    "retry_delay": st.sampled_from(["0s", "500ms", 1]),
    "failure_threshold": st.integers(1, 5),
    "success_threshold": st.integers(1, 5),
    "startup_grace": st.sampled_from(["0s", "60s", "1h30m"]),
    "cooldown": st.sampled_from(["10s", "1m", 30]),
    "max_cooldown": st.sampled_from(["15m", "1h", 3600]),
    "max_restarts": st.integers(0, 5),
    "restart_window": st.sampled_from(["1h", "30m", 600]),
    "restart_timeout": st.sampled_from(["60s", 10]),
    "verify_timeout": st.sampled_from(["0s", "30s"]),
    "signal_before_restart": st.sampled_from(["SIGABRT", "sigquit", "ABRT"]),
    "bus": st.sampled_from(["system", "user", "USER"]),
    "method": st.sampled_from(["GET", "get"]),
    "headers": st.dictionaries(st.sampled_from(["X-Token", "Accept", "X_A"]), texts(8),
                               max_size=2),
    "tls_verify": st.booleans(),
    "follow_redirects": st.booleans(),
    "expect_status": st.sampled_from([200, "2xx", "3XX", "404", [200, "3xx"]]),
    "max_body": st.integers(1, 10**6),
    "tls_expiry_warning": st.sampled_from(["0s", "14d", "30d"]),
}
POLICY = frozenset(key.name for key in POLICY_KEYS)
VALID_EXEC: dict[str, st.SearchStrategy[Any]] = {
    "expect_exit": st.integers(0, 255),
    "expect_output": st.sampled_from(["PONG", "accepting connections"]),
    "expect_output_regex": st.sampled_from(["^PONG$", "accepting"]),
    "env": st.dictionaries(st.sampled_from(["REDISCLI_AUTH", "PGCONNECT_TIMEOUT", "_X1"]),
                           texts(8), max_size=2),
    "env_file": st.sampled_from(["/etc/prober/redis.env", "redis-auth"]),
}
VALID_NAMES = st.sampled_from(["web", "caddy", "db", "api-1", "x.y", "cache", "w_2", "Z9"])


def _some(draw: st.DrawFn, choices: Mapping[str, st.SearchStrategy[Any]]) -> Doc:
    keys = draw(st.lists(st.sampled_from(sorted(choices)), max_size=4, unique=True))
    return {key: draw(choices[key]) for key in keys}


@st.composite
def valid_documents(draw: st.DrawFn) -> Doc:
    """Documents prober must accept: every rule of the README kept."""
    names = draw(st.lists(VALID_NAMES, min_size=1, max_size=5, unique=True))
    targets = []
    for index, name in enumerate(names):
        kind = draw(st.sampled_from(["url", "tcp", "unix_socket", "command"]))
        table: Doc = {"name": name}
        if kind == "tcp":
            table["tcp"] = draw(st.sampled_from(["127.0.0.1:6379", "[::1]:5432", "db.test:1"]))
            policy = {k: v for k, v in VALID_POLICY.items() if k in POLICY}
            table.update(_some(draw, policy))
        elif kind == "command":
            table["command"] = draw(st.sampled_from([
                ["/usr/bin/redis-cli", "ping"], ["/usr/bin/pg_isready", "-h", "/run/postgresql"],
                ["/usr/local/lib/prober/sidekiq-alive"]]))
            policy = {k: v for k, v in VALID_POLICY.items() if k in POLICY or k == "max_body"}
            table.update(_some(draw, {**policy, **VALID_EXEC}))
        else:
            table.update(_some(draw, VALID_POLICY))
            if kind == "unix_socket":
                table["unix_socket"] = "/run/app/puma.sock"
            if kind == "url" or draw(st.booleans()):
                table["url"] = draw(st.sampled_from([
                    "http://127.0.0.1:8080/health", "https://example.test/",
                    "http://[::1]:3000/x?y=1", "http://u:p@example.test:81/"]))
            if draw(st.booleans()):
                table["expect_body"] = draw(texts(8))
            elif draw(st.booleans()):
                table["method"] = "HEAD"
            if draw(st.booleans()):
                table["resolve"] = draw(st.sampled_from(["127.0.0.1", "::1", "[::1]"]))
        if draw(st.booleans()):
            table["unit"] = draw(st.sampled_from(
                ["caddy", "caddy.service", "mastodon-web.service", "app@1.service"]))
        if index and draw(st.booleans()):
            table["depends_on"] = draw(st.lists(st.sampled_from(names[:index]), max_size=3))
        targets.append(table)
    doc: Doc = {"target": targets}
    if draw(st.booleans()):
        doc["defaults"] = _some(draw, {k: v for k, v in VALID_POLICY.items() if k != "method"})
    if draw(st.booleans()):
        doc["interval"] = draw(st.sampled_from(["30s", 60, "1m"]))
    if draw(st.booleans()):
        doc["textfile"] = "/var/lib/prometheus/node-exporter/prober.prom"
    if draw(st.booleans()):
        doc["notify"] = draw(st.sampled_from([
            {"command": ["/usr/local/bin/alert", "--urgent"]},
            {"webhook": "https://hooks.example.test/x", "token_file": "token",
             "events": ["restart", "given-up"], "timeout": "5s"},
        ]))
    return doc


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
def config_files(draw: st.DrawFn) -> tuple[bytes, Doc | None]:
    """The bytes of a config file, and the document they hold if they are TOML by design."""
    kind = draw(st.sampled_from(["bytes", "text", "document", "valid", "cut"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), None
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
        assert "ca_file" in str(loaded), loaded  # the one check only load_config makes


# --- CLI fuzzing ---------------------------------------------------------------------------------

SANDBOX_CONFIG = """\
[defaults]
timeout = "1s"

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
    monkeypatch.setattr(prober.watcher, "watch", functools.partial(prober.watcher.watch, runs=1))
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
