"""Deployment, for real: the shipped units, timer, cron line, watcher and polkit rule, in a
sealed systemd, with the prober running as the unprivileged `prober` user."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.deploy import UNITS, install
from tests.support.e2e import (
    answers,
    booted_sandbox,
    freeze,
    has_event,
    refuses,
    saved_state,
    thaw,
    wait_for,
)
from tests.support.sandbox import Sandbox, Stack, start_stack
from tests.support.servers import health, serve

pytestmark = pytest.mark.e2e


@pytest.fixture
def box(sandbox_workdir: Path) -> Iterator[Sandbox]:
    """A sandbox with a `prober` system user."""
    with booted_sandbox(sandbox_workdir, users=["prober"]) as sandbox:
        yield sandbox


@pytest.fixture
def deployed(box: Sandbox) -> Stack:
    return start_stack(box)


def config_for(stack: Stack, *, units: tuple[str, ...] = ("caddy", "backend"),
               threshold: int = 2) -> str:
    unit = {"caddy": f'unit = "{stack.caddy_unit}"\n',
            "backend": f'unit = "{stack.backend_unit}"\n'}
    return (
        'interval = "1s"\n'
        "[defaults]\n"
        f'timeout = "1s"\nfailure_threshold = {threshold}\nstartup_grace = "0s"\n'
        'cooldown = "1s"\nverify_timeout = "5s"\nrestart_timeout = "15s"\n'
        # PSI is host-wide and other jobs move it: a frozen caddy here is never held.
        'pressure_threshold = 0\n\n'
        "[[target]]\n"
        f'name = "caddy"\nurl = "{stack.caddy_url}/health"\nexpect_body = "OK"\n'
        f'depends_on = ["backend"]\n{unit["caddy"] if "caddy" in units else ""}\n'
        "[[target]]\n"
        f'name = "backend"\nurl = "{stack.backend_url}/health"\nexpect_body = "OK"\n'
        f'{unit["backend"] if "backend" in units else ""}'
    )


def prober_as_user(sandbox: Sandbox, config: Path, state: Path, *args: str
                   ) -> tuple[int, dict[str, object], str]:
    done = sandbox.run([sys.executable, "-m", "prober", "check", "--config", str(config),
                        "--state", str(state), "--json", *args], user="prober", timeout=60)
    assert done.stdout, f"no output (exit {done.returncode}): {done.stderr}"
    data = json.loads(done.stdout)
    assert "targets" in data, done.stdout + done.stderr
    return done.returncode, data, done.stderr


def test_shipped_units_pass_systemd_analyze_verify(box: Sandbox) -> None:
    """Every shipped unit file passes `systemd-analyze verify` (the prober user exists)."""
    install(box, '[[target]]\nname = "x"\nurl = "http://127.0.0.1:1/"\n')
    units = [str(UNITS / name) for name in ("prober.service", "prober.timer",
                                            "prober-watch.service")]
    done = box.run(["systemd-analyze", "verify", *units], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_timer_and_shipped_service_restart_frozen_caddy(box: Sandbox, deployed: Stack) -> None:
    """The shipped timer fires the shipped service, as `prober`, which restarts frozen caddy
    over D-Bus (polkit allowing it), reads PSI and writes a world-readable textfile, all under
    the unit's sandboxing."""
    stack = deployed
    textfile = box.workdir / "prober-state" / "prober.prom"
    installed = install(box, f'textfile = "{textfile}"\n' + config_for(stack), period="1s")
    caddy_before = box.main_pid(stack.caddy_unit)
    backend_before = box.main_pid(stack.backend_unit)
    box.systemctl("start", "prober.timer")
    wait_for(installed.state.exists, 15, "a first timer-driven run")
    freeze(box, stack.caddy_unit)
    saved_state(installed.state, has_event("caddy", "restart"), 30,
                "caddy's restart saved by the timer-driven prober")
    assert box.main_pid(stack.caddy_unit) not in (0, caddy_before)
    assert answers(f"{stack.caddy_url}/health")
    assert box.main_pid(stack.backend_unit) == backend_before
    box.systemctl("stop", "prober.timer")
    log = installed.log.read_text()
    assert f"target=caddy unit={stack.caddy_unit}: restarting" in log
    assert box.unit_property("prober.service", "User") == "prober"
    # exit 2 (a restart happened) is a result, not a failure of the prober's unit
    assert box.unit_property("prober.service", "Result") == "success"
    # what the hardening lines could break without failing the run
    assert "job done" in log and "via systemctl" not in log  # over D-Bus, under the filter
    assert textfile.stat().st_mode & 0o777 == 0o644  # node_exporter reads it despite UMask=
    if Path("/proc/pressure/memory").exists():  # PSI read under the unit
        assert "prober_memory_pressure_some_avg10" in textfile.read_text()


TIMER_PERIOD = 30  # the shipped timer's OnUnitInactiveSec=
STARTUP_GRACE = 60  # the default policy's


def default_config_for(stack: Stack) -> str:
    """caddy in front of the backend, every policy key at its default."""
    return (f'[[target]]\nname = "caddy"\nurl = "{stack.caddy_url}/health"\n'
            f'expect_body = "OK"\nunit = "{stack.caddy_unit}"\ndepends_on = ["backend"]\n\n'
            f'[[target]]\nname = "backend"\nurl = "{stack.backend_url}/health"\n'
            f'expect_body = "OK"\nunit = "{stack.backend_unit}"\n')


def up_for(box: Sandbox, unit: str) -> float:
    """Seconds since `unit` last became active (the sandbox shares the host's monotonic clock)."""
    since = int(box.unit_property(unit, "ActiveEnterTimestampMonotonic")) / 1e6
    return time.clock_gettime(time.CLOCK_MONOTONIC) - since


def test_shipped_timer_restarts_caddy_that_stopped_listening_within_one_run(
        box: Sandbox, deployed: Stack) -> None:
    """The shipped timer and the default config: caddy stops listening (servers unloaded, the
    unit still active), and the run that first finds it refused confirms it within seconds
    and restarts caddy, within the timer's period + 10 s of the refusal, not the runs later
    that failure_threshold alone would take."""
    stack = deployed
    installed = install(box, default_config_for(stack))
    box.systemctl("start", "prober.timer")
    wait_for(lambda: up_for(box, stack.caddy_unit) > STARTUP_GRACE, STARTUP_GRACE + 30,
             "caddy up for longer than the default startup_grace")
    caddy_before = box.main_pid(stack.caddy_unit)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=5, trust_env=False)
    assert refuses(f"{stack.caddy_url}/health")
    assert box.unit_property(stack.caddy_unit, "ActiveState") == "active"
    wait_for(lambda: box.main_pid(stack.caddy_unit) not in (0, caddy_before), TIMER_PERIOD + 10,
             "caddy restarted by the shipped timer")
    assert answers(f"{stack.caddy_url}/health")
    wait_for(lambda: box.unit_property("prober.service", "ActiveState") != "activating", 60,
             "the run to finish")
    history = json.loads(installed.state.read_text())["targets"]["caddy"]["history"]
    events = {entry["event"]: entry["at"] for entry in history}
    assert list(events)[:3] == ["failing", "down", "restart"], history
    assert events["down"] - events["failing"] < TIMER_PERIOD, "down in a later run"
    log = installed.log.read_text()
    assert [n for n in re.findall(r"target=caddy: probe failed \(refused\).*\[(\d) in a row\]",
                                  log)] == ["1", "2", "3"], log


def test_polkit_rule_allows_restart_of_listed_units_only(box: Sandbox, deployed: Stack) -> None:
    """As `prober`, the rule allows restarting listed units; unlisted units and other verbs are
    refused, and the refusal is reported clearly."""
    stack = deployed
    installed = install(box, config_for(stack, threshold=1),
                        rule_config=config_for(stack, units=("caddy",)))
    freeze(box, stack.caddy_unit)
    freeze(box, stack.backend_unit)
    code, data, err = prober_as_user(box, installed.config, installed.state)
    targets = {t["name"]: t for t in data["targets"]}  # type: ignore[attr-defined]
    assert code == 2
    assert targets["backend"]["action"] == "restart-failed", targets["backend"]
    assert f"systemd refused to restart {stack.backend_unit}" in targets["backend"]["outcome"]
    assert "polkit rule" in targets["backend"]["outcome"]
    thaw(box, stack.backend_unit)
    thaw(box, stack.caddy_unit)
    box.systemctl("restart", stack.backend_unit)
    box.wait_port(stack.backend_port)

    caddy_before = box.main_pid(stack.caddy_unit)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=5, trust_env=False)
    code, data, err = prober_as_user(box, installed.config, installed.state)
    targets = {t["name"]: t for t in data["targets"]}  # type: ignore[attr-defined]
    assert targets["caddy"]["action"] == "restart", err
    assert box.main_pid(stack.caddy_unit) not in (0, caddy_before)

    for verb in ("stop", "start", "kill", "reload-or-restart"):
        done = box.run(["systemctl", "--no-ask-password", verb, stack.caddy_unit],
                       user="prober")
        assert done.returncode != 0, f"prober may {verb} caddy"
        assert "Interactive authentication required" in done.stderr or \
            "Access denied" in done.stderr, done.stderr
    assert box.unit_property(stack.caddy_unit, "ActiveState") == "active"


def test_cron_line_runs_only_when_the_state_is_stale(box: Sandbox, deployed: Stack) -> None:
    """The shipped cron line, run as its user, is silent and does nothing until the timer is
    enabled, then does nothing while the state is fresh."""
    stack = deployed
    installed = install(box, config_for(stack))
    line = next(ln for ln in (UNITS / "prober.cron").read_text().splitlines()
                if ln and not ln.startswith(("#", "SHELL", "PATH")))
    fields = line.split(None, 6)
    user, command = fields[5], fields[6]
    assert fields[:5] == ["*"] * 5 and user == "prober"
    env = {"PROBER_CONFIG": str(installed.config), "PROBER_STATE": str(installed.state),
           "PATH": "/usr/local/bin:/usr/bin:/bin"}

    def cron() -> int:
        done = box.run(["sh", "-c", command], user=user, env=env)
        assert done.stdout + done.stderr == "", "cron would mail this"
        return done.returncode

    cron()
    assert not installed.state.exists()  # the timer is not enabled: no fallback to give
    box.systemctl("enable", "prober.timer")
    assert cron() == 0
    first = installed.state.stat().st_mtime
    assert cron() == 0
    assert installed.state.stat().st_mtime == first  # fresh: the second run did nothing
    state = json.loads(installed.state.read_text())
    state["updated_at"] -= 600  # as if the timer had stopped ten minutes ago
    installed.state.write_text(json.dumps(state))
    beat = installed.state.with_name("state.json.last-run")  # a run that changed nothing
    os.utime(beat, (state["updated_at"], state["updated_at"]))
    assert cron() == 0
    assert json.loads(installed.state.read_text())["updated_at"] > state["updated_at"] + 500
    assert "prober -q check --if-stale 2m" in command


def test_watch_service_notifies_restarts_and_is_watched(box: Sandbox, deployed: Stack) -> None:
    """prober-watch.service: READY=1, restarts frozen caddy, and a hung watcher is restarted by
    systemd's watchdog."""
    stack = deployed
    installed = install(box, config_for(stack), watchdog="3s")
    box.systemctl("start", "prober-watch.service")  # Type=notify: returns once READY=1 came
    assert box.unit_property("prober-watch.service", "ActiveState") == "active"
    wait_for(lambda: "last run" in box.unit_property("prober-watch.service", "StatusText"), 10,
             "a STATUS= line from the watcher")
    caddy_before = box.main_pid(stack.caddy_unit)
    freeze(box, stack.caddy_unit)
    wait_for(lambda: box.main_pid(stack.caddy_unit) not in (0, caddy_before), 20,
             "caddy restarted by the watcher")
    assert answers(f"{stack.caddy_url}/health")

    watcher = box.main_pid("prober-watch.service")
    freeze(box, "prober-watch.service")
    wait_for(lambda: box.main_pid("prober-watch.service") not in (0, watcher), 20,
             "the hung watcher restarted by the watchdog")
    assert "Watchdog timeout" in box.console_tail(200) or \
        box.unit_property("prober-watch.service", "NRestarts") != "0"
    box.systemctl("stop", "prober-watch.service")
    log = installed.log.read_text()
    assert "restarting" in log
    assert "job done" in log and "via systemctl" not in log  # over D-Bus, under the filter


def test_watch_service_reloads_and_stops_cleanly(box: Sandbox, deployed: Stack) -> None:
    """`systemctl reload` of the shipped watcher takes a new config (a renamed target is
    forgotten), refuses a bad one and keeps running the old, and `systemctl stop` ends it with
    success."""
    stack = deployed
    installed = install(box, config_for(stack))
    box.systemctl("start", "prober-watch.service")
    wait_for(lambda: "last run" in box.unit_property("prober-watch.service", "StatusText"), 10,
             "a STATUS= line from the watcher")
    installed.config.write_text(config_for(stack).replace('name = "backend"', 'name = "puma"')
                                .replace('depends_on = ["backend"]', 'depends_on = ["puma"]'))
    box.systemctl("reload", "prober-watch.service")  # returns before the reload is done
    wait_for(lambda: "reloaded" in box.unit_property("prober-watch.service", "StatusText"), 10,
             "the watcher's STATUS= after a good reload")
    saved_state(installed.state, lambda state: set(state["targets"]) == {"caddy", "puma"}, 10,
                "the renamed target pruned from the state")

    installed.config.write_text("[[target]]\nname = 'no-url'\n")
    box.systemctl("reload", "prober-watch.service")
    wait_for(lambda: "reload failed" in box.unit_property("prober-watch.service", "StatusText"),
             10, "the watcher's STATUS= after a bad reload")
    assert box.unit_property("prober-watch.service", "ActiveState") == "active"
    wait_for(lambda: "last run" in box.unit_property("prober-watch.service", "StatusText"), 10,
             "runs going on with the previous config")
    assert "reload: keeping the previous config" in installed.log.read_text()

    box.systemctl("stop", "prober-watch.service")
    assert box.unit_property("prober-watch.service", "Result") == "success"
    assert box.unit_property("prober-watch.service", "ExecMainStatus") == "0"


def test_watch_service_serves_its_page_and_metrics(box: Sandbox) -> None:
    """The shipped, hardened prober-watch.service with `listen` set serves /metrics,
    /status.json and the status page on that address, as `prober`, from what it probed."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with serve(health()) as web:  # on the host's loopback, which the sandbox shares
        installed = install(box, f'listen = "127.0.0.1:{port}"\ninterval = "1s"\n'
                                 f'[[target]]\nname = "web"\nurl = "{web.url("/health")}"\n')
        box.systemctl("start", "prober-watch.service")
        wait_for(lambda: "last run OK" in box.unit_property("prober-watch.service",
                                                            "StatusText"),
                 10, "a first run of the watcher")
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(trust_env=False, timeout=5) as client:
            metrics, status, page = (client.get(f"{base}{path}")
                                     for path in ("/metrics", "/status.json", "/"))
        box.systemctl("stop", "prober-watch.service")
    assert metrics.status_code == status.status_code == page.status_code == 200
    assert 'prober_probe_success{container="",target="web",unit=""} 1.0' in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert [t["name"] for t in status.json()["targets"]] == ["web"]
    assert status.json()["targets"][0]["health"] == "healthy"
    assert 'data-target="web"' in page.text and page.text.startswith("<!DOCTYPE html>")
    assert f"on http://127.0.0.1:{port}/" in installed.log.read_text()
    assert box.unit_property("prober-watch.service", "User") == "prober"
    assert box.unit_property("prober-watch.service", "Result") == "success"
