"""`prober init`'s pure core: host facts in, a config `validate` accepts out, with the right
units and ports; /proc/net/tcp lines read; the CLI's no-overwrite rule."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from prober.core.config import Config, parse_config
from prober.shell.init import HostFacts, Listener, guess, parse_proc_net_line, render

MASTODON = HostFacts(
    hostname="social.example.org",
    units=("caddy.service", "mastodon-web.service", "mastodon-streaming.service",
           "mastodon-streaming@4000.service", "mastodon-sidekiq.service",
           "postgresql@15-main.service", "redis-server.service", "ssh.service", "cron.service"),
    listeners=(
        Listener("caddy.service", "::", 443), Listener("caddy.service", "::", 80),
        Listener("caddy.service", "127.0.0.1", 2019),
        Listener("mastodon-web.service", "127.0.0.1", 3000),
        Listener("mastodon-streaming@4000.service", "127.0.0.1", 4000),
        Listener("postgresql@15-main.service", "127.0.0.1", 5432),
        Listener("redis-server.service", "127.0.0.1", 6380),
        Listener("ssh.service", "0.0.0.0", 22),  # noqa: S104 - a fact, not a bind
    ),
)


def _config(facts: HostFacts) -> tuple[str, Config]:
    text = render(facts, guess(facts))
    return text, parse_config(tomllib.loads(text), "init.toml")


def _targets(config: Config) -> dict[str, Any]:
    return {t.name: t for t in config.targets}


def test_a_mastodon_host_gives_a_config_that_loads() -> None:
    """Every known unit becomes a target with the port it listens on, the proxy in front of
    web and streaming, postgres and redis monitored only."""
    text, config = _config(MASTODON)
    targets = _targets(config)
    assert list(targets) == ["caddy", "web", "streaming", "sidekiq", "postgres", "redis"]
    assert targets["caddy"].endpoint == "https://social.example.org/health"
    assert targets["caddy"].unit == "caddy.service"
    assert targets["caddy"].depends_on == ("web", "streaming")
    assert targets["web"].endpoint == "http://127.0.0.1:3000/health"
    assert targets["web"].unit == "mastodon-web.service"
    assert targets["streaming"].endpoint == "http://127.0.0.1:4000/api/v1/streaming/health"
    assert targets["streaming"].unit == "mastodon-streaming@4000.service"
    assert targets["sidekiq"].unit == "mastodon-sidekiq.service"
    assert "redis://127.0.0.1:6380/0" in targets["sidekiq"].probe.command
    assert targets["postgres"].unit is None and targets["redis"].unit is None
    assert "6380" in targets["redis"].probe.command
    assert "#   ssh.service: 0.0.0.0:22" in text
    assert "CHECK" in text
    assert max(len(line) for line in text.splitlines()) <= 100


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(HostFacts("h", ("nginx.service", "caddy.service"),
                               (Listener("caddy.service", "127.0.0.1", 8080),)),
                     {"caddy": ("http://127.0.0.1:8080/", "caddy.service")},
                     id="one-proxy-caddy-first-its-own-port"),
        pytest.param(HostFacts("h", ("nginx.service",), (Listener("nginx.service", "::", 80),)),
                     {"nginx": ("http://127.0.0.1:80/", "nginx.service")},
                     id="nginx-on-a-wildcard-v6-socket"),
        pytest.param(HostFacts("h", ("mastodon-web.service",),
                               (Listener("mastodon-web.service", "10.0.0.5", 3001),)),
                     {"web": ("http://10.0.0.5:3001/health", "mastodon-web.service")},
                     id="web-on-its-own-address"),
        pytest.param(HostFacts("h", ("mastodon-web.service",), (), owners_seen=False),
                     {"web": ("http://127.0.0.1:3000/health", "mastodon-web.service")},
                     id="no-sockets-seen-defaults"),
        pytest.param(HostFacts("h", ("mastodon-streaming.service",),
                               (Listener("mastodon-streaming.service", "127.0.0.1", 4000),)),
                     {"streaming": ("http://127.0.0.1:4000/api/v1/streaming/health",
                                    "mastodon-streaming.service")},
                     id="streaming-before-4.2"),
    ],
)
def test_guesses(facts: HostFacts, expected: dict[str, tuple[str, str]]) -> None:
    """Each host's known units give one target each, at the address and port seen."""
    _, config = _config(facts)
    assert {t.name: (t.endpoint, t.unit) for t in config.targets} == expected


def test_hostile_unit_names_and_hostnames_never_reach_the_toml() -> None:
    """A unit name systemd would not accept, a unit prober must never restart and a hostname
    with TOML in it are left out: the config still loads and names none of them."""
    facts = HostFacts(
        hostname='evil"\n[x]',
        units=('caddy.service"\nunit = "dbus', "dbus.service", "redis.service"),
        listeners=(Listener('caddy.service"\nunit = "dbus', "127.0.0.1", 80),
                   Listener("dbus.service", "127.0.0.1", 99),
                   Listener("redis.service", "127.0.0.1", 6379)))
    text, config = _config(facts)
    assert config.names == ("redis",)
    assert "dbus" not in text and "evil" not in text


def test_no_known_unit_gives_no_target() -> None:
    """A host running none of the known units gives nothing to write (the CLI says so)."""
    assert guess(HostFacts("h", ("ssh.service",), (Listener("ssh.service", "::", 22),))) == ()


@pytest.mark.parametrize(
    ("line", "family", "expected"),
    [
        pytest.param("   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 "
                     "00000000     0        0 123456 1 0000000000000000 100 0 0 10 0",
                     socket.AF_INET, (123456, ("127.0.0.1", 3000)), id="ipv4-listen"),
        pytest.param("   1: 00000000000000000000000000000000:01BB 0000000000000000000000000000"
                     "0000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1",
                     socket.AF_INET6, (77, ("::", 443)), id="ipv6-wildcard"),
        pytest.param("   2: 00000000000000000000000001000000:0FA0 0000000000000000000000000000"
                     "0000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1",
                     socket.AF_INET6, (78, ("::1", 4000)), id="ipv6-loopback"),
        pytest.param("   3: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 "
                     "00000000     0        0 5 1", socket.AF_INET, None, id="established"),
        pytest.param("   4: zz:0BB8 0 0A 0 0 0 0 0 9", socket.AF_INET, None, id="garbage"),
        pytest.param("sl  local_address", socket.AF_INET, None, id="short"),
    ],
)
def test_proc_net_lines(line: str, family: int,
                        expected: tuple[int, tuple[str, int]] | None) -> None:
    """/proc/net/tcp{,6} lines: listening sockets read, the rest and garbage skipped."""
    assert parse_proc_net_line(line, family) == expected


def test_output_never_overwrites(tmp_path: Path) -> None:
    """`prober init --output FILE` with a file there: one line, exit 3, the file untouched."""
    existing = tmp_path / "prober.toml"
    existing.write_text("# mine\n")
    done = subprocess.run([sys.executable, "-m", "prober", "init", "--output", str(existing)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3
    assert done.stderr == (f"prober: error: {existing}: exists; prober init never overwrites a "
                           "config (hint: remove it first, or give another --output)\n")
    assert existing.read_text() == "# mine\n"
