"""`bus = "user"` and `prober check --user`, for real: a `systemd --user` manager for the user
alice inside a sealed systemd, a Mastodon stand-in as one of its units, frozen, and `prober check`
run as alice restarting it over alice's user bus, or through `systemctl --user` when that bus is
down.

The user manager is set up the way Debian does it (user@.service with dbus-user-session), minus
PAM and logind: a system unit running `systemd --user` as alice with XDG_RUNTIME_DIR=/run/user/UID
(a folder on the sandbox's private /run), whose own dbus.socket and dbus.service provide the user
bus at /run/user/UID/bus. The bus must be the manager's own units: systemd only puts its API on
the user bus once its own dbus.socket and dbus.service are running, so a session bus started
beside it (a system unit, dbus-launch) never has org.freedesktop.systemd1 on it. The user units
live in /run/systemd/user (the sandbox's tmpfs); the manager starts only prober-user.target, so
nothing of the host's /etc/systemd/user (gpg-agent sockets...) is pulled in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.e2e import answers, booted_sandbox, phase_failed
from tests.support.sandbox import STANDIN, Sandbox, SandboxError, free_ports, systemd_quote

pytestmark = pytest.mark.e2e

USER = "alice"
MANAGER_UNIT = "user-manager.service"  # the system unit running alice's `systemd --user`
USER_TARGET = "prober-user.target"
WEB = "web.service"
USER_UNIT_DIR = "/run/systemd/user"

POLICY = """\
[defaults]
timeout = "1s"
failure_threshold = 2
startup_grace = "0s"
pressure_threshold = 0  # PSI is host-wide and other jobs move it: never held here
cooldown = "1s"
max_cooldown = "10s"
max_restarts = 3
restart_window = "1h"
restart_timeout = "10s"
verify_timeout = "5s"
"""

MANAGER_VERSION = (
    "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
    "org.freedesktop.systemd1.Manager", "Version",
)


@dataclass
class Run:
    """One `prober check --json` as alice."""

    code: int
    out: str
    err: str

    @property
    def web(self) -> dict[str, Any]:
        targets = json.loads(self.out)["targets"]
        return dict(next(t for t in targets if t["name"] == "web"))


@dataclass
class UserManager:
    """alice's `systemd --user` inside a sandbox, with the stand-in as its web.service."""

    sandbox: Sandbox
    uid: int
    port: int
    home: Path  # alice's folder in the workdir (logs, prober state)

    @property
    def runtime_dir(self) -> str:
        return f"/run/user/{self.uid}"

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.runtime_dir}/bus"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def as_alice(self, argv: list[str], *, env: dict[str, str] | None = None,
                 timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        environ = {"XDG_RUNTIME_DIR": self.runtime_dir, **(env or {})}
        return self.sandbox.run(argv, user=USER, env=environ, timeout=timeout, check=check)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`systemctl --user ARGS` as alice (over the manager's private socket, not the bus)."""
        return self.as_alice(["systemctl", "--user", *args], check=check, timeout=30)

    def main_pid(self) -> int:
        return int(self.systemctl("show", "-P", "MainPID", WEB).stdout.strip())

    def active_state(self) -> str:
        return self.systemctl("show", "-P", "ActiveState", WEB).stdout.strip()

    def bus_answers(self) -> bool:
        """Whether alice's user manager answers on the user bus."""
        done = self.as_alice(["busctl", "--user", "--timeout=2", "get-property", *MANAGER_VERSION],
                             env={"DBUS_SESSION_BUS_ADDRESS": self.bus_address})
        return done.returncode == 0

    def write_config(self, *, bus_key: bool) -> Path:
        config = self.sandbox.workdir / "prober.toml"
        config.write_text(
            f"{POLICY}\n"
            "[[target]]\n"
            'name = "web"\n'
            f'url = "{self.url}"\n'
            'expect_body = "OK"\n'
            f'unit = "{WEB}"\n'
            + ('bus = "user"\n' if bus_key else "")
        )
        config.chmod(0o644)
        return config

    def check(self, config: Path, *args: str, env: dict[str, str] | None = None) -> Run:
        argv = [sys.executable, "-m", "prober", "-v", "check", "--json", "--config", str(config),
                "--state", str(self.home / "state" / "state.json"), *args]
        done = self.as_alice(argv, env=env, timeout=60)
        return Run(done.returncode, done.stdout, done.stderr)

    def freeze_web(self) -> int:
        """SIGSTOP the stand-in (still `active`, connections accepted, never answered)."""
        pid = self.main_pid()
        self.systemctl("kill", "--signal=SIGSTOP", WEB)
        assert self.active_state() == "active"
        return pid


def _user_unit(box: Sandbox, name: str, text: str) -> None:
    """Write a unit for alice's manager into /run/systemd/user inside (the sandbox's tmpfs)."""
    assert "DefaultDependencies=no" in text, f"{name}: user units here need DefaultDependencies=no"
    dest = box.path(USER_UNIT_DIR) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    dest.chmod(0o644)


def start_user_manager(box: Sandbox, timeout: float = 10) -> UserManager:
    """Start alice's `systemd --user` (and its user bus and web.service); wait for all three."""
    uid = int(box.run(["id", "-u", USER], check=True).stdout)
    runtime = f"/run/user/{uid}"
    box.run(["install", "-d", "-o", USER, "-g", USER, "-m", "0700", runtime], check=True)
    home = box.workdir / USER
    (home / "state").mkdir(parents=True)
    for path in (home, home / "state"):
        box.run(["chown", f"{USER}:{USER}", str(path)], check=True)
    (port,) = free_ports(1)

    # alice's bus, as dbus-user-session ships it (%t is XDG_RUNTIME_DIR), without the default
    # dependencies that would pull in basic.target and the host's user sockets.
    _user_unit(box, "dbus.socket", """\
[Unit]
Description=D-Bus User Message Bus Socket (sandbox)
DefaultDependencies=no

[Socket]
ListenStream=%t/bus
""")
    _user_unit(box, "dbus.service", """\
[Unit]
Description=D-Bus User Message Bus (sandbox)
DefaultDependencies=no
Requires=dbus.socket
After=dbus.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/dbus-daemon --session --address=systemd: --nofork --nopidfile \
--systemd-activation --syslog-only
""")
    standin = [sys.executable, str(STANDIN), "--port", str(port)]
    _user_unit(box, WEB, f"""\
[Unit]
Description=Mastodon stand-in (alice's user unit)
DefaultDependencies=no

[Service]
ExecStart={systemd_quote(standin)}
Environment=PYTHONUNBUFFERED=1
StandardOutput=append:{home / "web.log"}
StandardError=inherit
TimeoutStopSec=5s
""")
    _user_unit(box, USER_TARGET, f"""\
[Unit]
Description=alice's units (sandbox)
DefaultDependencies=no
Wants=dbus.socket dbus.service {WEB}
After=dbus.socket dbus.service {WEB}
""")
    # What user@.service does, minus PAM (no logind here) and the user slice.
    box.write_service(
        MANAGER_UNIT,
        ["/lib/systemd/systemd", "--user", f"--unit={USER_TARGET}"],
        type="notify",
        user=USER,
        env={"XDG_RUNTIME_DIR": runtime},
        service_extra="Delegate=yes\nKillMode=mixed\nTimeoutStopSec=5s",
    )
    box.systemctl("start", MANAGER_UNIT)
    box.wait_active(MANAGER_UNIT, timeout=timeout)
    manager = UserManager(box, uid, port, home)
    box.wait_port(port, timeout=timeout)
    deadline = time.monotonic() + timeout
    while not manager.bus_answers():  # systemd joins its bus once dbus.service is up
        if time.monotonic() > deadline:
            raise SandboxError(f"alice's manager is not on {manager.bus_address}:\n"
                               f"{box.console_tail(20)}")
        time.sleep(0.05)
    return manager


@pytest.fixture
def user_manager(request: pytest.FixtureRequest, sandbox_workdir: Path) -> Iterator[UserManager]:
    """A booted sandbox with alice's user manager running web.service (stopped after the test)."""
    with booted_sandbox(sandbox_workdir, users=[USER]) as box:
        manager = start_user_manager(box)
        try:
            yield manager
        finally:
            manager.systemctl("kill", "--signal=SIGCONT", WEB, check=False)
    if request.node.stash.get(phase_failed, False):
        sys.stdout.write(f"--- sandbox console ({box.console_log}) ---\n{box.console_tail(80)}\n")


def test_user_bus_restarts_a_frozen_user_unit(user_manager: UserManager) -> None:
    """bus = "user": a frozen unit of alice's `systemd --user` is restarted over her user bus."""
    manager = user_manager
    # Only alice's manager has web.service: the system manager would say not-found.
    assert manager.sandbox.unit_property(WEB, "LoadState") == "not-found"
    config = manager.write_config(bus_key=True)
    env = {"DBUS_SESSION_BUS_ADDRESS": manager.bus_address}
    before = manager.freeze_web()

    first = manager.check(config, env=env)
    assert first.code == 1, first.err
    assert (first.web["failure"], first.web["action"]) == ("timeout", "none")

    second = manager.check(config, env=env)
    assert second.code == 2, second.err
    assert second.web["action"] == "restart", second.out
    outcome = second.web["outcome"]
    assert "answering again" in outcome
    assert "job done" in outcome and "via systemctl" not in outcome, outcome
    assert "falling back" not in second.err, second.err
    after = manager.main_pid()
    assert after not in (0, before)
    assert f"MainPID {before} -> {after}" in outcome
    assert answers(manager.url)
    assert manager.check(config, env=env).code == 0


def test_user_bus_down_falls_back_to_systemctl_user(user_manager: UserManager) -> None:
    """alice's user bus stopped: the restart goes through `systemctl --user` and still works."""
    manager = user_manager
    manager.systemctl("stop", "dbus.socket", "dbus.service")
    assert not manager.bus_answers()
    config = manager.write_config(bus_key=True)
    env = {"DBUS_SESSION_BUS_ADDRESS": manager.bus_address}
    before = manager.freeze_web()

    assert manager.check(config, env=env).code == 1
    second = manager.check(config, env=env)
    assert second.code == 2, second.err
    assert second.web["action"] == "restart", second.out
    outcome = second.web["outcome"]
    assert "answering again" in outcome
    assert "via systemctl" in outcome and "job done" not in outcome, outcome
    assert f"bus=user: cannot connect to the user bus at {manager.bus_address}" in second.err
    assert "falling back to systemctl" in second.err
    assert manager.main_pid() not in (0, before)
    assert answers(manager.url)


def test_check_user_flag_acts_like_bus_user(user_manager: UserManager) -> None:
    """`check --user` on a config without `bus`: alice's manager is used, as with bus = "user"."""
    manager = user_manager
    config = manager.write_config(bus_key=False)
    before = manager.freeze_web()

    # Without --user the same config means the system manager, which has no web.service.
    manager.check(config)
    system = manager.check(config)
    assert system.code == 2, system.err
    assert system.web["action"] == "unit-not-active", system.out
    assert f"{WEB} is not loaded (not-found)" in system.web["action_reason"]
    assert manager.main_pid() == before

    # Only XDG_RUNTIME_DIR is set: the user bus is found at $XDG_RUNTIME_DIR/bus.
    user = manager.check(config, "--user")
    assert user.code == 2, user.err
    assert user.web["action"] == "restart", user.out
    outcome = user.web["outcome"]
    assert "answering again" in outcome
    assert "job done" in outcome and "via systemctl" not in outcome, outcome
    assert manager.main_pid() not in (0, before)
    assert answers(manager.url)
