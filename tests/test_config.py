"""Config parsing: defaults, overrides, durations, and one exact message per bad file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from prober.actuators.systemd import normalize_unit
from prober.core.config import RestartRules, check_ownership, parse_config
from prober.core.errors import ConfigError
from prober.core.keys import as_typed_after_a_flag, format_duration, parse_duration, parse_host_port
from prober.io.configfiles import load_config
from prober.io.systemd import Bus
from prober.probes.http_spec import HttpProbe, Method, StatusRange
from prober.probes.tcp import TcpProbe

BAD = Path(__file__).parent / "testdata" / "bad-configs"
EXAMPLES = Path(__file__).parent.parent / "examples"


def _bad_cases() -> list[Any]:
    cases = []
    for path in sorted(BAD.glob("*.toml")):
        first = path.read_bytes().splitlines()[0].decode()  # the line after may not be UTF-8
        assert first.startswith("# expect: "), path
        cases.append(pytest.param(path, first.removeprefix("# expect: "), id=path.stem))
    return cases


@pytest.mark.parametrize(("path", "expected"), _bad_cases())
def test_bad_config_gives_one_exact_line(path: Path, expected: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad config file is rejected with exactly the message written in its first line."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: {expected}"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("1.5s", 1.5),
     (10, 10), (2.5, 2.5), ("0s", 0), ("2d", 172800),
     # systemd.time(7)'s spans and a bare number of seconds, as systemd reads them
     ("30", 30), (" 30 ", 30), ("2.5", 2.5), ("5sec", 5), ("5 sec", 5), ("1 second", 1),
     ("2seconds", 2), ("2min", 120), ("1 minute", 60), ("3minutes", 180), ("1hr", 3600),
     ("2 hours", 7200), ("1hour", 3600), ("1day", 86400), ("3 days", 259200),
     ("1w", 604800), ("2weeks", 1209600), ("1week", 604800), ("1M", 2629800),
     ("2months", 5259600), ("1y", 31557600), ("1 year", 31557600), ("250msec", 0.25),
     ("1500us", 0.0015), ("1500usec", 0.0015), ("1h 30min", 5400), ("2min5s", 125),
     ("1h 2m 3s", 3723), ("1d 1sec", 86401)],
    ids=str,
)
def test_durations(text: object, seconds: float) -> None:
    """Durations are systemd's time spans or plain numbers of seconds, string or not."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "-1s", "1x", True, [1], "s", -3, "5 parsecs",
                                  "1h-30m", "1,5s", "1.s", ".5s", "5mins", "MIN", "1mm",
                                  "\u0663s", "11y", "1" * 101, None],
                         ids=repr)
def test_bad_durations(text: object) -> None:
    """Anything that is not a duration is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0, 0.001, 0.5, 1.5, 30, 90, 3600, 5400, 90000, 14 * 86400,
                                     604800, 31557600])
def test_format_duration_reads_back(seconds: float) -> None:
    """What format_duration prints, parse_duration reads back (to its shown precision)."""
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.05)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (30, "30s"), (90, "1m30s"), (3600, "1h"), (0, "0s"), (1.25, "1.2s"),
     (14 * 86400, "14d"), (90000, "1d1h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations are shown in their shortest readable form."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("default", "typed"), [
    ('["2xx"]', "2xx"), ('[200, "3xx"]', "200, 3xx"), ("[]", ""), ("{}", ""),
    ('{ A = "b" }', "A=b"), ('"x y"', "x y"), ("5s", "5s"), ("1h 30min", "1h 30min"),
    ("0", "0"), ("65536", "65536"), ("true", "true"), ("GET", "GET"),
    ("prober@HOST", "prober@HOST"), ("localhost:25", "localhost:25"), ("", ""),
])
def test_a_default_as_typed_after_its_flag(default: str, typed: str) -> None:
    """The key table's defaults, TOML where they are lists, tables or quoted strings, as a user
    types them on the command line; nothing for an empty list or table."""
    assert as_typed_after_a_flag(default) == typed


def test_defaults_apply_and_targets_override() -> None:
    """[defaults] sets every target's policy; a target's own key wins."""
    config = parse_config({
        "defaults": {"timeout": "2s", "failure_threshold": 5, "tls_verify": False,
                     "bus": "user"},
        "target": [
            {"name": "a", "url": "https://a.test/health", "unit": "a"},
            {"name": "b", "url": "https://b.test/", "timeout": "1s", "tls_verify": True,
             "unit": "b", "bus": "system"},
        ],
    })
    a, b = config.targets
    assert a.policy == RestartRules(timeout=2.0, failure_threshold=5)
    assert (a.actuation, b.actuation) == ((("bus", Bus.USER),), (("bus", Bus.SYSTEM),))
    assert isinstance(a.probe, HttpProbe) and isinstance(b.probe, HttpProbe)
    assert not a.probe.tls_verify
    assert b.policy.timeout == 1.0 and b.policy.failure_threshold == 5
    assert b.probe.tls_verify


def test_full_target() -> None:
    """Every target key is parsed into its typed field."""
    config = parse_config({"target": [{
        "name": "web", "url": "https://example.test:8443/health", "method": "head",
        "headers": {"X-Token": "abc"}, "resolve": "127.0.0.1", "follow_redirects": True,
        "expect_status": [200, "3xx"], "max_latency": "800ms", "max_body": 1024,
        "unit": "mastodon-web", "retries": 2, "signal_before_restart": "abrt",
    }]})
    (web,) = config.targets
    assert isinstance(web.probe, HttpProbe)
    assert web.kind.name == "http" and web.probe.method is Method.HEAD
    assert web.probe.headers == (("X-Token", "abc"),)
    assert web.probe.expect_status == (StatusRange(200, 200), StatusRange(300, 399))
    assert web.unit == "mastodon-web.service"
    assert web.policy.max_latency == 0.8 and web.probe.max_body == 1024
    assert web.policy.retries == 2 and web.policy.signal_before_restart == "SIGABRT"


def test_tcp_and_unix_socket_targets() -> None:
    """tcp targets keep host and port; unix_socket targets default their URL."""
    config = parse_config({"target": [
        {"name": "redis", "tcp": "[::1]:6379"},
        {"name": "puma", "unix_socket": "/run/mastodon/web.sock"},
    ]})
    redis, puma = config.targets
    assert redis.probe == TcpProbe("::1", 6379) and redis.kind.name == "tcp"
    assert redis.endpoint == "tcp://[::1]:6379"
    assert puma.probe == HttpProbe(unix_socket="/run/mastodon/web.sock")


@pytest.mark.parametrize(
    ("where", "target"),
    [("target", {"name": "db", "tcp": "127.0.0.1:5432", "max_latency": "200ms"}),
     ("defaults", {"name": "db", "tcp": "127.0.0.1:5432"})],
)
def test_max_latency_applies_to_tcp_targets(where: str, target: dict[str, Any]) -> None:
    """max_latency is kept for a tcp target, set on it or in [defaults] (it was dropped)."""
    defaults = {"max_latency": "200ms"} if where == "defaults" else {}
    (db,) = parse_config({"defaults": defaults, "target": [target]}).targets
    assert db.policy.max_latency == 0.2


def test_tls_expiry_warning_in_defaults_applies_to_https_targets() -> None:
    """tls_expiry_warning in [defaults] reaches every HTTP target that does not set its own,
    and leaves the other kinds alone (they do not take it)."""
    config = parse_config({
        "defaults": {"tls_expiry_warning": "30d"},
        "target": [
            {"name": "site", "url": "https://example.org/"},
            {"name": "off", "url": "https://example.net/", "tls_expiry_warning": "0s"},
            {"name": "db", "tcp": "127.0.0.1:5432"},
        ],
    })
    site, off, db = config.targets
    assert isinstance(site.probe, HttpProbe) and isinstance(off.probe, HttpProbe)
    assert site.probe.tls_expiry_warning == 30 * 86400
    assert off.probe.tls_expiry_warning == 0
    assert db.probe == TcpProbe("127.0.0.1", 5432)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:443", ("::1", 443)),
     ("localhost:8080", ("localhost", 8080))],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    """host:port accepts names, IPv4 and bracketed IPv6."""
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("caddy", "caddy.service"), ("caddy.service", "caddy.service"),
     ("mastodon-web.service", "mastodon-web.service"), ("getty@tty1", "getty@tty1.service")],
)
def test_unit_names_are_normalized(name: str, expected: str) -> None:
    """A unit without a suffix is a .service, as with systemctl."""
    assert normalize_unit(name) == expected


@pytest.mark.parametrize(
    "name",
    ["prober.service", "prober-watch", "dbus", "dbus-broker.service", "systemd-journald",
     "init.scope", "-.slice", "caddy.socket", "../etc", "a b.service", ""],
)
def test_dangerous_or_invalid_units_are_refused(name: str) -> None:
    """The prober's own units, the bus, journald, scopes and malformed names are refused."""
    with pytest.raises(ValueError, match=r"refusing|not a service unit"):
        normalize_unit(name)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    """Every shipped example config passes validation."""
    config = load_config(str(path))
    assert config.targets


def test_missing_file_has_a_hint(tmp_path: Path) -> None:
    """A missing config file says where examples are."""
    with pytest.raises(ConfigError, match="no such config file") as caught:
        load_config(str(tmp_path / "nope.toml"))
    assert caught.value.hint and "examples" in caught.value.hint


@pytest.mark.parametrize(
    ("uid", "mode", "message"),
    [
        (0, 0o644, None),
        (1000, 0o600, None),  # the running user (euid 1000 below)
        (0, 0o664, "writable by group or others (mode 664)"),
        (0, 0o646, "writable by group or others (mode 646)"),
        (4242, 0o644, "owned by uid 4242, not by root or the running user (uid 1000)"),
    ],
)
def test_config_ownership(uid: int, mode: int, message: str | None) -> None:
    """Like sshd: a config writable by someone else than root or the running user is refused."""
    st = os.stat_result((0o100000 | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))
    if message is None:
        check_ownership("/etc/prober/prober.toml", st, 1000)
        return
    with pytest.raises(ConfigError) as caught:
        check_ownership("/etc/prober/prober.toml", st, 1000)
    assert str(caught.value).startswith(f"/etc/prober/prober.toml: {message}")


def test_group_writable_config_file(tmp_path: Path) -> None:
    """A real group-writable file is refused, and accepted with insecure=True."""
    path = tmp_path / "prober.toml"
    path.write_text('[[target]]\nname = "web"\nurl = "http://127.0.0.1/"\n')
    path.chmod(0o664)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_config(str(path))
    assert load_config(str(path), insecure=True).names == ("web",)


DEEP = 100_000
HEALTHY = '[[target]]\nname = "web"\nurl = "http://127.0.0.1/health"\n'


def special_config(tmp_path: Path, kind: str) -> Path:
    """A config path that is no regular file of a sane size, made as the case says."""
    path = tmp_path / "prober.toml"
    nested = {
        "deep-array": f"{HEALTHY}depends_on = {'[' * DEEP}{']' * DEEP}\n",
        "deep-inline-table": f"{HEALTHY}headers = {'{a = ' * DEEP}1{'}' * DEEP}\n",
        "deep-dotted-key": f"{HEALTHY}headers{'.a' * DEEP} = 1\n",
        "deep-table-header": f"[{'a.' * DEEP}a]\n",
    }
    if kind in nested:
        path.write_text(nested[kind])
    elif kind == "huge":
        path.write_text(HEALTHY + "#" * (1 << 20) + "\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    return path


SPECIAL_FILES = [
    ("deep-array", "nested deeper than 32 levels (at line 4, column 46)"),
    ("deep-inline-table", "nested deeper than 32 levels (at line 4, column 171)"),
    ("deep-dotted-key", "nested deeper than 32 levels (at line 4, column 70)"),
    ("deep-table-header", "nested deeper than 32 levels (at line 1, column 65)"),
    ("huge", f"larger than 1048576 bytes ({len(HEALTHY) + (1 << 20) + 1} bytes)"),
    ("fifo", "not a regular file (a FIFO)"),
    ("device", "not a regular file (a character device)"),
    ("directory", "not a regular file (a directory)"),
]


@pytest.mark.parametrize(("kind", "message"), SPECIAL_FILES, ids=[k for k, _ in SPECIAL_FILES])
def test_file_too_deep_large_or_special_gives_one_line(tmp_path: Path, kind: str,
                                                       message: str) -> None:
    """Nesting 100,000 deep, a file over the cap, a FIFO, a device or a directory: one exact
    line, read without blocking and without exhausting the stack or the memory."""
    path = special_config(tmp_path, kind)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: {message}"
