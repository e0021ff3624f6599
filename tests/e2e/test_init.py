"""`prober init` inside the sealed systemd, with caddy and Mastodon stand-ins running as units
named like Mastodon's: the config it prints validates and names them with their ports; with
--output it writes only where no file is."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.sandbox import CADDY, STANDIN, Sandbox, free_ports

pytestmark = pytest.mark.e2e

REDIS_SERVER = "/usr/bin/redis-server"


def _start_mastodon(sandbox: Sandbox) -> dict[str, int]:
    """caddy (no admin API) before the web stand-in, web, streaming@PORT, sidekiq, a
    postgresql@15-main stand-in and a real redis-server, each a unit; their ports."""
    web, streaming, postgres, redis, caddy = free_ports(5)
    ports = {"web": web, "streaming": streaming, "postgres": postgres, "redis": redis,
             "caddy": caddy}
    for unit, port in (("mastodon-web.service", web),
                       (f"mastodon-streaming@{streaming}.service", streaming),
                       ("postgresql@15-main.service", postgres)):
        sandbox.write_service(unit, [sys.executable, str(STANDIN), "--port", str(port)],
                              reload=False)
    sandbox.write_service("mastodon-sidekiq.service",
                          [sys.executable, "-c", "import time; time.sleep(3600)"], reload=False)
    sandbox.write_service("redis-server.service",
                          [REDIS_SERVER, "--port", str(redis), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(sandbox.workdir)],
                          reload=False)
    home = sandbox.workdir / "caddy"
    home.mkdir()
    caddyfile = home / "Caddyfile"
    caddyfile.write_text("{\n\tadmin off\n\tauto_https off\n}\n\n"
                         f"http://127.0.0.1:{caddy} {{\n\tbind 127.0.0.1\n"
                         f"\treverse_proxy 127.0.0.1:{web}\n}}\n")
    sandbox.write_service("caddy.service",
                          [CADDY, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                          env={"HOME": str(home), "XDG_DATA_HOME": str(home),
                               "XDG_CONFIG_HOME": str(home)})
    units = ["mastodon-web.service", f"mastodon-streaming@{streaming}.service",
             "postgresql@15-main.service", "mastodon-sidekiq.service", "redis-server.service",
             "caddy.service"]
    sandbox.systemctl("start", *units)
    for unit in units:
        sandbox.wait_active(unit)
    for port in ports.values():
        sandbox.wait_port(port)
    return ports


def _prober(*args: str) -> list[str]:
    return [sys.executable, "-m", "prober", *args]


def test_init_names_the_running_units_with_their_ports(sandbox: Sandbox) -> None:
    """The printed config validates, and names caddy, web, streaming@PORT, sidekiq, postgres
    and redis with the ports they listen on, in front of the others."""
    ports = _start_mastodon(sandbox)
    printed = sandbox.run(_prober("init"), check=True).stdout
    config = sandbox.workdir / "printed.toml"
    config.write_text(printed)
    validated = sandbox.run(_prober("validate", "--config", str(config)))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    targets = {t["name"]: t for t in tomllib.loads(printed)["target"]}
    assert list(targets) == ["caddy", "web", "streaming", "sidekiq", "postgres", "redis"]
    assert targets["caddy"]["url"] == f"http://127.0.0.1:{ports['caddy']}/health"
    assert targets["caddy"]["unit"] == "caddy.service"
    assert targets["caddy"]["depends_on"] == ["web", "streaming"]
    assert targets["web"]["url"] == f"http://127.0.0.1:{ports['web']}/health"
    assert targets["web"]["unit"] == "mastodon-web.service"
    assert targets["streaming"]["url"] == \
        f"http://127.0.0.1:{ports['streaming']}/api/v1/streaming/health"
    assert targets["streaming"]["unit"] == f"mastodon-streaming@{ports['streaming']}.service"
    assert targets["sidekiq"]["unit"] == "mastodon-sidekiq.service"
    assert f"redis://127.0.0.1:{ports['redis']}/0" in targets["sidekiq"]["command"]
    assert str(ports["postgres"]) in targets["postgres"]["command"]
    assert str(ports["redis"]) in targets["redis"]["command"]
    checked = sandbox.run(_prober("check", "--config", str(config), "--dry-run", "--state",
                                  str(sandbox.workdir / "trial.json"), "--target", "caddy",
                                  "--target", "web", "--target", "streaming"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_init_output_writes_once_and_never_overwrites(sandbox: Sandbox) -> None:
    """--output writes the config where no file is, then refuses (one line, exit 3) to
    overwrite it."""
    _start_mastodon(sandbox)
    path: Path = sandbox.workdir / "etc-prober" / "prober.toml"
    path.parent.mkdir()
    first = sandbox.run(_prober("init", "--output", str(path)))
    assert first.returncode == 0, first.stderr
    written = path.read_text()
    assert 'unit = "mastodon-web.service"' in written
    assert sandbox.run(_prober("validate", "--config", str(path))).returncode == 0
    second = sandbox.run(_prober("init", "--output", str(path)))
    assert second.returncode == 3
    assert second.stderr.strip() == (f"prober: error: {path}: exists; prober init never "
                                     "overwrites a config (hint: remove it first, or give "
                                     "another --output)")
    assert path.read_text() == written
    assert sorted(p.name for p in path.parent.iterdir()) == ["prober.toml"]
