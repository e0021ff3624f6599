"""The Debian package installed as an operator would, in a sealed systemd booted on an overlay of
the host's root file system (Sandbox(overlay=True)): `apt install ./prober_*.deb`, the example
config, `systemctl enable --now prober.timer`; a frozen caddy restarted by the packaged timer as
the `prober` user; an upgrade that keeps the state; a purge that leaves only the operator's
config. dpkg's database, /usr, /etc and /var written here are the overlay's, never the host's."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prober.shell.state import STATE_VERSION
from tests.support import debpkg
from tests.support.e2e import (
    answers,
    booted_sandbox,
    freeze,
    has_event,
    phase_failed,
    saved_state,
    wait_for,
)
from tests.support.sandbox import Sandbox, SandboxError, Stack, start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CONFIG = "/etc/prober/prober.toml"
V1_STATE = Path(__file__).parents[1] / "testdata" / "state-v1.json"
STATE = "/var/lib/prober/state.json"
RULE = "/etc/polkit-1/rules.d/50-prober.rules"
EXAMPLE = "/usr/share/doc/prober/examples/mastodon.toml"
CLEAN_ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
             "DEBIAN_FRONTEND=noninteractive"]
# Walked before the install and after the purge; dpkg's and apt's own records and caches are
# expected to change, and the sandbox's tmpfs folders (/var/log, /var/tmp) start empty anyway.
SCANNED = ("/etc", "/usr", "/var", "/opt", "/srv")
NOT_SCANNED = ("/var/lib/dpkg", "/var/lib/apt", "/var/cache", "/var/log", "/var/tmp")  # noqa: S108
HOST_FILES = ("/usr/bin/prober", "/usr/lib/prober", "/lib/systemd/system/prober.timer",
              "/etc/cron.d/prober", "/etc/prober", "/var/lib/prober", RULE)


@pytest.fixture
def box(request: pytest.FixtureRequest, sandbox_workdir: Path) -> Iterator[Sandbox]:
    """A sandbox on an overlay of /, with the sandbox's adaptations for the packaged units."""
    debpkg.require_tools()
    debpkg.built()  # before booting: a build failure is not a sandbox failure
    host = host_fingerprint()
    with booted_sandbox(sandbox_workdir, overlay=True) as sandbox:
        prepare(sandbox)
        yield sandbox
        if request.node.stash.get(phase_failed, False):
            sys.stdout.write(f"--- prober.log ---\n{log_of(sandbox)}\n--- console ---\n"
                             f"{sandbox.console_tail(60)}\n")
    assert host_fingerprint() == host, "the host's dpkg database or files changed"


def host_fingerprint() -> dict[str, Any]:
    """What an install on the host would change: whether the host's dpkg database knows prober,
    and the package's paths. (Not the whole status file: others may install packages on this
    machine meanwhile.)"""
    status = Path("/var/lib/dpkg/status").read_text(errors="replace")
    return {"dpkg knows prober": "\nPackage: prober\n" in f"\n{status}",
            **{path: os.path.lexists(path) for path in HOST_FILES}}


def prepare(box: Sandbox) -> None:
    """What this sandbox needs that a real Debian host has or lacks, and nothing else:
    - no /usr/sbin/policy-rc.d: this machine's image has Docker's, which forbids maintainer
      scripts to start services (exit 101); a host has none (removed from the overlay only);
    - drop-ins for the packaged units: DefaultDependencies=no (the sandbox masks
      sysinit.target), output to a file (no journald runs), the timer's period 1 s, not 30 s.
    """
    box.run(["rm", "-f", "/usr/sbin/policy-rc.d"], check=True)
    log = log_path(box)
    for unit in debpkg.UNITS:
        text = "[Unit]\nDefaultDependencies=no\n"
        if unit.endswith(".service"):
            text += f"\n[Service]\nStandardOutput=append:{log}\nStandardError=append:{log}\n"
        if unit == "prober.timer":
            # An empty assignment resets all of the timer's triggers.
            text += "\n[Timer]\nOnBootSec=\nOnBootSec=1s\nOnUnitInactiveSec=1s\n"
        box.write_unit(f"{unit}.d/sandbox.conf", text, reload=False)
    box.systemctl("daemon-reload")


def log_path(box: Sandbox) -> Path:
    return box.workdir / "prober.log"


def log_of(box: Sandbox) -> str:
    try:
        return log_path(box).read_text()
    except OSError:
        return ""


def sh(box: Sandbox, command: str, *, user: str | None = None, cwd: Path | None = None,
       check: bool = True) -> str:
    """Run a shell command inside as an operator would (clean environment); its output."""
    done = box.run([*CLEAN_ENV, "sh", "-c", command], user=user, cwd=cwd, timeout=300)
    if check and done.returncode != 0:
        raise SandboxError(f"`{command}` exited with {done.returncode}\n{done.stdout}"
                           f"{done.stderr}\n--- console ---\n{box.console_tail(30)}")
    return done.stdout + done.stderr


def apt_install(box: Sandbox, deb: Path) -> None:
    """`apt install ./prober_VERSION_all.deb` from the folder that holds it."""
    sh(box, f"apt install -y ./{shlex.quote(deb.name)}", cwd=deb.parent)


def inside(box: Sandbox, path: str) -> Path:
    return box.path(path)


def state(box: Sandbox) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(inside(box, STATE).read_text())
    return data


def copy_example_config(box: Sandbox, stack: Stack, *, backend_unit: bool = True) -> None:
    """Step 3 of the README: copy the example, then adjust it (here, to the sandbox's stack)."""
    sh(box, f"cp {EXAMPLE} {CONFIG}")
    edit_config(box, adapted_example(inside(box, CONFIG).read_text(), stack,
                                     backend_unit=backend_unit))


def edit_config(box: Sandbox, text: str) -> None:
    """Write the config in place, as an editor saving it would."""
    inside(box, CONFIG).write_text(text)


def adapted_example(text: str, stack: Stack, *, backend_unit: bool = True) -> str:
    """examples/mastodon.toml pointed at caddy and the stand-in, with test-sized timings and no
    memory-pressure hold: its HTTP targets only (the sandbox runs no Sidekiq, Postgres or
    Redis; tests/e2e/test_exec_probes.py runs those commands)."""
    sidekiq = text.index("# Sidekiq, Mastodon's job runner")
    text = text[:sidekiq].rstrip() + "\n"
    web_unit = f'unit = "{stack.backend_unit}"' if backend_unit else ""
    edits = [
        ('depends_on = ["postgres", "redis"]   # if they fail too, restarting puma would not '
         'help', ""),
        ('depends_on = ["postgres", "redis"]\n', "\n"),
        ('url = "https://mastodon.example.org/health"', f'url = "{stack.caddy_url}/health"'),
        ('url = "http://127.0.0.1:3000/health"', f'url = "{stack.backend_url}/health"'),
        ('url = "http://127.0.0.1:4000/api/v1/streaming/health"',
         f'url = "{stack.backend_url}/api/v1/streaming/health"'),
        ('unit = "mastodon-web.service"', web_unit),
        ('unit = "mastodon-streaming@4000.service"', ""),  # the one stand-in serves both
        ('timeout = "5s"', 'timeout = "1s"'),
        ("failure_threshold = 3 ", "failure_threshold = 2 "),
        ('startup_grace = "60s"', 'startup_grace = "0s"'),
        ('startup_grace = "2m"', 'startup_grace = "0s"'),
        ('cooldown = "2m"', 'cooldown = "1s"'),
        # PSI, the host's or caddy's cgroup's, moves with other jobs' load: never hold caddy.
        ("pressure_threshold = 10\n", "pressure_threshold = 0\n"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, f"examples/mastodon.toml changed: {old!r}"
        text = text.replace(old, new)
    return text


def rule(box: Sandbox) -> str:
    try:
        return inside(box, RULE).read_text()
    except FileNotFoundError:
        return ""


def restart_as_prober(box: Sandbox, unit: str) -> bool:
    """Whether the prober user may restart `unit` (polkit decides; never asks a password)."""
    done = box.run(["systemctl", "--no-ask-password", "restart", unit], user="prober",
                   timeout=30)
    return done.returncode == 0


def file_set(box: Sandbox) -> set[str]:
    """Every path under SCANNED inside, but NOT_SCANNED and the folders shared with the host."""
    skipped = [*NOT_SCANNED, str(box.repo), str(box.workdir)]
    prune: list[str] = []
    for path in skipped:
        prune += [*(["-o"] if prune else []), "-path", path]
    done = box.run(["find", *SCANNED, "(", *prune, ")", "-prune", "-o", "-print"],
                   timeout=300, check=True)
    return set(done.stdout.splitlines())


def unit_state(box: Sandbox, unit: str) -> str:
    return box.unit_property(unit, "ActiveState")


def test_nothing_runs_or_fails_before_there_is_a_config(box: Sandbox) -> None:
    """Installed without a config: only the timer (and the rule's path unit) enabled; the timer,
    the service and the watcher, even enabled instead of the timer, do nothing and stay out of
    `failed`, `systemctl status` says why; the cron line is silent; no polkit rule."""
    apt_install(box, debpkg.built())
    enabled = {unit: box.systemctl("is-enabled", unit, check=False).stdout.strip()
               for unit in ("prober.timer", "prober-watch.service", "prober-polkit.path")}
    assert enabled == {"prober.timer": "enabled", "prober-watch.service": "disabled",
                       "prober-polkit.path": "enabled"}
    assert box.run(["id", "-u", "prober"], check=True).stdout.strip().isdigit()
    box.systemctl("start", "prober-watch.service")
    box.systemctl("start", "prober.service")
    for unit in ("prober.timer", "prober.service", "prober-watch.service"):
        assert unit_state(box, unit) == "inactive", unit
    # (systemd unloads a disabled watcher as soon as its start is skipped, status and all)
    for unit in ("prober.timer", "prober.service"):
        status = box.systemctl("status", "--no-pager", unit, check=False).stdout
        assert "start condition failed" in status, status
        assert f"ConditionPathExists={CONFIG} was not met" in status, status
    cron = next(line for line in inside(box, "/etc/cron.d/prober").read_text().splitlines()
                if line.startswith("* "))
    user, command = cron.split(None, 6)[5:]
    done = box.run(["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "sh", "-c", command],
                   user=user)
    assert done.stdout + done.stderr == "", "cron would mail this every minute"
    assert not inside(box, STATE).exists()
    assert rule(box) == ""

    # An operator who chooses the watcher, as the README says, before writing the config.
    sh(box, "systemctl disable --now prober.timer && systemctl enable --now prober-watch.service")
    assert unit_state(box, "prober-watch.service") == "inactive"
    status = box.systemctl("status", "--no-pager", "prober-watch.service", check=False).stdout
    assert "start condition failed" in status, status
    assert f"ConditionPathExists={CONFIG} was not met" in status, status
    failed = box.systemctl("list-units", "--failed", "--no-legend", *debpkg.UNITS).stdout
    assert failed.strip() == ""
    assert "prober" in sh(box, "systemctl cat prober.service")  # the packaged unit is the one


def test_install_restart_upgrade_purge_as_an_operator(box: Sandbox) -> None:
    """apt install, the example config, the timer enabled: frozen caddy is restarted by the
    packaged timer as `prober`, through the rule written from the config; an upgrade keeps the
    state and the timer running; remove stops the units; purge leaves only the config."""
    before = file_set(box)
    deb = debpkg.built()
    apt_install(box, deb)
    assert sh(box, "dpkg-query -W -f '${Version}' prober") == debpkg.field(deb, "Version")
    assert not os.path.exists("/usr/bin/prober"), "installed on the host"
    compiled = sh(box, "ls /usr/lib/prober/prober/__pycache__ /usr/lib/prober/httpx/__pycache__")
    assert ".cpython-3" in compiled  # postinst byte-compiled for the installed python3

    stack = start_stack(box)
    copy_example_config(box, stack)
    wait_for(lambda: stack.backend_unit in rule(box), 15, "the polkit rule from the config")
    assert stack.caddy_unit in rule(box)
    assert "OK, 3 target(s)" in sh(box, "prober validate")
    sh(box, "systemctl enable --now prober.timer")
    wait_for(lambda: inside(box, STATE).exists(), 20, "a first run of the packaged timer")

    frozen_caddy_is_restarted(box, stack)
    upgrade_keeps_the_state_and_the_timer(box)
    remove_then_purge_leave_only_the_config(box, before)


def frozen_caddy_is_restarted(box: Sandbox, stack: Stack) -> list[dict[str, Any]]:
    """Freeze caddy; the packaged timer's run restarts it as `prober`. caddy's history."""
    caddy_before = box.main_pid(stack.caddy_unit)
    backend_before = box.main_pid(stack.backend_unit)
    freeze(box, stack.caddy_unit)
    saved = saved_state(inside(box, STATE), has_event("caddy", "restart"), 40,
                        "caddy's restart saved by the packaged timer's run")
    assert box.main_pid(stack.caddy_unit) not in (0, caddy_before)
    assert answers(f"{stack.caddy_url}/health")
    assert box.main_pid(stack.backend_unit) == backend_before
    assert f"target=caddy unit={stack.caddy_unit}: restarting" in log_of(box)
    assert box.unit_property("prober.service", "User") == "prober"
    assert box.unit_property("prober.service", "ExecStart").startswith("{ path=/usr/bin/prober")
    assert box.unit_property("prober.service", "Result") == "success"
    history: list[dict[str, Any]] = saved["targets"]["caddy"]["history"]
    return history


def upgrade_keeps_the_state_and_the_timer(box: Sandbox) -> None:
    """Upgrade to a rebuilt package of a higher version, over the state file of the last
    release (version 1, tests/testdata/state-v1.json): the timer still runs, and its first run
    rewrites the state as the current version, the history of each configured target kept."""
    v1 = json.loads(V1_STATE.read_text())
    staged = inside(box, STATE + ".v1")
    staged.write_bytes(V1_STATE.read_bytes())
    sh(box, f"chown prober:prober {STATE}.v1 && mv {STATE}.v1 {STATE}")
    assert not staged.exists()
    newer = debpkg.built(debpkg.next_version())
    upgraded = time.time()
    apt_install(box, newer)
    assert sh(box, "prober --version").strip() == f"prober, version {debpkg.next_version()}"
    assert unit_state(box, "prober.timer") == "active"
    after = saved_state(inside(box, STATE), lambda saved: saved["updated_at"] > upgraded + 1, 20,
                        "a run after the upgrade")
    assert (after["version"], after["trial"]) == (STATE_VERSION, False)
    for name in ("caddy", "streaming"):  # the others are not in the config: pruned
        kept = after["targets"][name]["history"]
        assert all(entry in kept for entry in v1["targets"][name]["history"]), name
        assert after["targets"][name]["restarts_total"] >= v1["targets"][name]["restarts_total"]
    assert not inside(box, STATE + ".corrupt").exists()
    assert box.unit_property("prober.service", "Result") == "success"


def remove_then_purge_leave_only_the_config(box: Sandbox, before: set[str]) -> None:
    """Remove stops the units and drops the grant, keeping state and config; purge leaves no
    file of the package but the operator's config, and keeps the system user."""
    sh(box, "apt remove -y prober")
    for unit in ("prober.timer", "prober.service", "prober-polkit.path"):
        assert unit_state(box, unit) == "inactive", unit
    assert rule(box) == ""
    assert inside(box, STATE).exists()

    sh(box, "apt purge -y prober")
    assert not inside(box, "/var/lib/prober").exists()
    assert inside(box, CONFIG).exists()
    assert box.run(["id", "-u", "prober"]).returncode == 0
    after = file_set(box)
    assert sorted(after - before) == ["/etc/prober", CONFIG]
    assert sorted(before - after) == []
    units = box.systemctl("list-unit-files", "--no-legend", *debpkg.UNITS, check=False).stdout
    assert units.strip() == ""


def test_cron_line_with_a_config_runs_only_for_an_enabled_timer(box: Sandbox) -> None:
    """The README: with a config, the packaged cron line (run as cron runs it) does nothing
    while the timer is not enabled (`systemctl disable --now prober.timer` stops prober); with
    the timer enabled but not firing, it runs `prober check --if-stale 2m`: a check when the
    state is stale, nothing while it is fresh."""
    apt_install(box, debpkg.built())
    copy_example_config(box, start_stack(box))
    cron = cron_job(box)
    beat = inside(box, STATE + ".last-run")

    def files() -> list[tuple[int, bytes]]:
        return [(path.stat().st_mtime_ns, path.read_bytes()) for path in (inside(box, STATE),
                                                                             beat)]

    sh(box, "systemctl disable --now prober.timer")
    sh(box, "systemctl start prober.service")  # one run by hand: a state to be stale
    data = state(box)
    data["updated_at"] -= 600  # as if prober had been stopped ten minutes ago
    inside(box, STATE).write_text(json.dumps(data))
    os.utime(beat, (data["updated_at"], data["updated_at"]))
    stale = files()
    cron()
    assert files() == stale, "the cron line ran prober with the timer disabled"

    sh(box, "systemctl enable prober.timer")  # enabled, but systemd does not fire it
    assert unit_state(box, "prober.timer") == "inactive"
    assert cron() == 0
    assert state(box)["updated_at"] > data["updated_at"] + 500, "no check of a stale state"
    fresh = files()
    assert cron() == 0
    assert files() == fresh, "the cron line ran a check while the state was fresh"


def cron_job(box: Sandbox) -> Callable[[], int]:
    """The packaged /etc/cron.d/prober line as cron runs it: with /bin/sh, as the user it names,
    with the file's variables (SHELL, PATH) over cron's own (HOME, LOGNAME). Running it asserts
    that it prints nothing (cron would mail it) and gives its exit status."""
    lines = inside(box, "/etc/cron.d/prober").read_text().splitlines()
    variables = dict(line.split("=", 1) for line in lines if re.match(r"[A-Z_]+=", line))
    fields = next(line for line in lines if line.startswith("* ")).split(None, 6)
    user, command = fields[5], fields[6]
    assert fields[:5] == ["*"] * 5 and user == "prober"
    assert variables["SHELL"] == "/bin/sh" and variables["PATH"] == "/usr/bin:/bin"
    home = sh(box, f"getent passwd {user}").strip().split(":")[5]
    env = ["env", "-i", f"HOME={home}", f"LOGNAME={user}",
           *(f"{name}={value}" for name, value in variables.items())]

    def run() -> int:
        done = box.run([*env, variables["SHELL"], "-c", command], user=user, timeout=120)
        assert done.stdout + done.stderr == "", "cron would mail this"
        return done.returncode

    return run


def test_remove_stops_the_watcher(box: Sandbox) -> None:
    """The README's switch from the timer to the watcher, with a config; then `apt remove`
    stops the running watcher, and it is not left `failed`."""
    apt_install(box, debpkg.built())
    copy_example_config(box, start_stack(box))
    sh(box, "systemctl disable --now prober.timer && systemctl enable --now prober-watch.service")
    assert unit_state(box, "prober-watch.service") == "active"
    sh(box, "apt remove -y prober")
    assert unit_state(box, "prober-watch.service") == "inactive"


def test_polkit_rule_follows_the_config(box: Sandbox) -> None:
    """The rule is rewritten whenever the config changes: a unit not in the config can never be
    restarted by `prober`, and without a valid config nothing can."""
    apt_install(box, debpkg.built())
    stack = start_stack(box)
    copy_example_config(box, stack)
    wait_for(lambda: stack.backend_unit in rule(box), 15, "the rule from the config")
    wait_for(lambda: restart_as_prober(box, stack.backend_unit), 10,
             "prober allowed to restart the backend")
    assert not restart_as_prober(box, "dbus.service")

    edit_config(box, adapted_example(inside(box, EXAMPLE).read_text(), stack,
                                     backend_unit=False))
    wait_for(lambda: stack.backend_unit not in rule(box), 15, "the rule without the backend")
    wait_for(lambda: not restart_as_prober(box, stack.backend_unit), 10,
             "the backend refused to prober")
    assert restart_as_prober(box, stack.caddy_unit)

    edit_config(box, inside(box, CONFIG).read_text() + "\nbogus = 1\n")
    wait_for(lambda: rule(box) == "", 15, "the rule removed while the config does not load")
    wait_for(lambda: not restart_as_prober(box, stack.caddy_unit), 10, "caddy refused")
    status = box.systemctl("status", "--no-pager", "prober-polkit.service", check=False).stdout
    assert "bogus" in status + log_of(box)

    sh(box, f"rm {CONFIG}")
    wait_for(lambda: "no rule, as there is no" in log_of(box), 15, "the rule unit run again")
    assert rule(box) == ""
    copy_example_config(box, stack)
    wait_for(lambda: stack.backend_unit in rule(box), 15, "the rule back with the config")


def test_overlay_sandbox_keeps_every_write_off_the_host(box: Sandbox) -> None:
    """Inside an overlay sandbox, writes to /usr, /etc and dpkg's folder stay inside; the work
    directory is the host's own (live both ways)."""
    probes = ["/usr/local/share/prober-overlay-probe", "/etc/prober-overlay-probe",
              "/var/lib/dpkg/prober-overlay-probe"]
    for path in probes:
        assert not os.path.lexists(path)
        box.run(["sh", "-c", f"echo inside > {path}"], check=True)
        assert inside(box, path).read_text() == "inside\n"
        assert not os.path.lexists(path), f"{path} reached the host"
    box.run(["sh", "-c", f"echo inside > {box.workdir}/live"], check=True)
    assert (box.workdir / "live").read_text() == "inside\n"
    assert box.run(["findmnt", "-n", "-o", "FSTYPE", "/"], check=True).stdout.strip() == "overlay"
