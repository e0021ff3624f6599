"""`prober polkit-rule --install PATH`, run as a process: the rule follows the config, and no
config (or one that does not load) means no rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """\
[[target]]
name = "caddy"
url = "http://127.0.0.1:1/"
unit = "caddy.service"

[[target]]
name = "web"
url = "http://127.0.0.1:2/"
unit = "mastodon-web"
"""


def prober(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROBER_")}
    environ["PROBER_CONFIG"] = str(config)
    return subprocess.run([sys.executable, "-m", "prober", *args], capture_output=True,
                          text=True, env=environ, timeout=60, check=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "prober.toml"
    path.write_text(CONFIG)
    return path


def test_install_writes_the_printed_rule_readable_by_polkitd(config: Path, tmp_path: Path
                                                             ) -> None:
    """--install writes what `polkit-rule` prints, mode 0644, and names the units it allows."""
    rule = tmp_path / "rules.d" / "50-prober.rules"
    rule.parent.mkdir()
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{rule}: written; prober may restart caddy.service, "
                           "mastodon-web.service\n")
    assert rule.read_text() == prober("polkit-rule", config=config).stdout
    assert rule.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in rule.parent.iterdir()) == ["50-prober.rules"]


def test_install_clears_what_a_killed_install_left(config: Path, tmp_path: Path) -> None:
    """A temp file left by an --install killed mid-write goes with the next one (polkitd
    ignores it, but rules.d is no place for litter)."""
    rule = tmp_path / "50-prober.rules"
    stale = tmp_path / ".50-prober.rules.4242.tmp"
    stale.write_text("polkit.addRule(")
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["50-prober.rules", "prober.toml"]


def test_install_follows_an_edited_config(config: Path, tmp_path: Path) -> None:
    """A unit dropped from the config is dropped from the rule on the next --install."""
    rule = tmp_path / "50-prober.rules"
    prober("polkit-rule", "--install", str(rule), config=config)
    config.write_text(CONFIG.replace('unit = "mastodon-web"\n', ""))
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 0, done.stderr
    assert "mastodon-web" not in rule.read_text()
    assert '["caddy.service"]' in rule.read_text()


def test_install_without_a_config_removes_the_rule(config: Path, tmp_path: Path) -> None:
    """No config: the rule goes (nothing may be restarted), and that is not an error."""
    rule = tmp_path / "50-prober.rules"
    prober("polkit-rule", "--install", str(rule), config=config)
    config.unlink()
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 0, done.stderr
    assert not rule.exists()
    assert done.stdout == (f"{rule}: removed the rule, as there is no {config}: prober may "
                           "restart nothing\n")
    again = prober("polkit-rule", "--install", str(rule), config=config)
    assert again.returncode == 0 and "no rule, as there is no" in again.stdout


def test_install_with_a_broken_config_removes_the_rule_and_says_why(config: Path,
                                                                    tmp_path: Path) -> None:
    """A config that does not load: the rule goes, exit 3, the config's error on one line."""
    rule = tmp_path / "50-prober.rules"
    prober("polkit-rule", "--install", str(rule), config=config)
    config.write_text(CONFIG + "bogus = 1\n")
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 3
    assert not rule.exists()
    lines = done.stderr.splitlines()
    assert lines[0] == f"{rule}: removed the rule until the config loads"
    assert lines[1].startswith(f"prober: error: {config}: ") and "bogus" in lines[1]
    assert len(lines) == 2


def test_install_into_a_missing_folder_is_one_line(config: Path, tmp_path: Path) -> None:
    """A rule that cannot be written: exit 3 and one line naming the file, no traceback."""
    rule = tmp_path / "no-such-folder" / "50-prober.rules"
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 3
    assert done.stderr == (f"prober: error: {rule}: cannot write the polkit rule: "
                           "no such file or directory\n")


CONTAINERS = """\
docker_host = "unix:///run/prober-docker/docker.sock"

[[target]]
name = "streaming"
url = "http://127.0.0.1:3/"
container = "mastodon-streaming-1"
"""
SOCKET_ACCESS = ("containers are restarted through /run/prober-docker/docker.sock: prober "
                 "needs read and write access to it, a socket proxy's (recommended) or the "
                 "engine's own through the docker group (docs/operating.md, Containers)")


def test_a_container_only_config_needs_no_rule_but_the_socket(config: Path,
                                                             tmp_path: Path) -> None:
    """Containers are restarted through the engine's socket, which no polkit rule grants: no
    rule is printed (nothing a `>` into rules.d could break), the old one goes on --install,
    and both say which access is needed instead."""
    rule = tmp_path / "50-prober.rules"
    prober("polkit-rule", "--install", str(rule), config=config)
    config.write_text(CONTAINERS)
    printed = prober("polkit-rule", config=config)
    assert (printed.returncode, printed.stdout) == (0, "")
    assert printed.stderr.splitlines() == [
        f"prober: no polkit rule needed, as no target of {config} is restarted through systemd",
        f"prober: {SOCKET_ACCESS}"]
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 0, done.stderr
    assert not rule.exists()
    assert done.stdout.splitlines() == [
        f"{rule}: removed the rule: no polkit rule needed, as no target of {config} is "
        "restarted through systemd", SOCKET_ACCESS]


def test_a_mixed_config_grants_its_units_and_names_the_socket(config: Path,
                                                             tmp_path: Path) -> None:
    """Units and containers: the rule lists the units alone; the socket is named beside it."""
    config.write_text(CONTAINERS + CONFIG)
    rule = tmp_path / "50-prober.rules"
    done = prober("polkit-rule", "--install", str(rule), config=config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{rule}: written; prober may restart caddy.service, mastodon-web.service",
        SOCKET_ACCESS]
    assert "mastodon-streaming-1" not in rule.read_text()
    printed = prober("polkit-rule", config=config)
    assert printed.stdout == rule.read_text()
    assert printed.stderr == f"prober: {SOCKET_ACCESS}\n"


LOADED = """\
import contextlib, io, sys
from prober.shell.cli import run
with contextlib.redirect_stdout(io.StringIO()):
    code = run(sys.argv[1:])
print(code, "prober.actuators.polkit" in sys.modules)
"""


@pytest.mark.parametrize(("command", "loaded"), [("validate", "False"), ("polkit-rule", "True")])
def test_the_polkit_module_loads_only_for_the_rule(config: Path, command: str,
                                                   loaded: str) -> None:
    """Loading a config of units (as every run does) leaves the polkit module unloaded: only
    the rule needs it."""
    done = subprocess.run([sys.executable, "-c", LOADED, command, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["0", loaded], done.stderr
