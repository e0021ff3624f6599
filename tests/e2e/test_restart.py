"""The outage, for real: caddy and a Mastodon stand-in as units of a sealed systemd, broken in
the ways that matter, and `prober check` (run inside, over the sandbox's own system bus)
restarting the right unit, or rightly not."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.e2e import answers, freeze, refuses, thaw
from tests.support.sandbox import Sandbox, Stack

pytestmark = pytest.mark.e2e

POLICY = {
    "timeout": '"1s"',
    "failure_threshold": "2",
    "startup_grace": '"0s"',
    "cooldown": '"1s"',
    "max_cooldown": '"10s"',
    "max_restarts": "3",
    "restart_window": '"1h"',
    "restart_timeout": '"15s"',
    "verify_timeout": '"5s"',
    # PSI is host-wide and other jobs move it: these frozen services are never held.
    "pressure_threshold": "0",
    # Each run counts once here; tests/e2e/test_deploy.py confirms a refusal within one run.
    "confirm_interval": '"0s"',
}


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def data(self) -> Any:
        return json.loads(self.out)

    def target(self, name: str) -> dict[str, Any]:
        for target in self.data["targets"]:
            if target["name"] == name:
                return dict(target)
        raise KeyError(name)

    def action(self, name: str) -> str:
        return str(self.target(name)["action"])


@dataclass
class Prober:
    """`python -m prober` run inside the sandbox, with its config and state in the workdir."""

    sandbox: Sandbox
    stack: Stack

    @property
    def config(self) -> Path:
        return self.sandbox.workdir / "prober.toml"

    @property
    def state(self) -> Path:
        return self.sandbox.workdir / "prober-state" / "state.json"

    def configure(self, extra: str = "", **overrides: str) -> None:
        policy = "\n".join(f"{k} = {v}" for k, v in {**POLICY, **overrides}.items())
        self.config.write_text(
            f"[defaults]\n{policy}\n\n"
            "[[target]]\n"
            'name = "caddy"\n'
            f'url = "{self.stack.caddy_url}/health"\n'
            'expect_body = "OK"\n'
            f'unit = "{self.stack.caddy_unit}"\n'
            'depends_on = ["backend"]\n\n'
            "[[target]]\n"
            'name = "backend"\n'
            f'url = "{self.stack.backend_url}/health"\n'
            'expect_body = "OK"\n'
            f'unit = "{self.stack.backend_unit}"\n'
            f"{extra}"
        )

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "prober", "-v", *args, "--config", str(self.config)]

    def check(self, *args: str, timeout: float = 90) -> Run:
        argv = self.command("check", "--state", str(self.state), "--json", *args)
        started = time.monotonic()
        done = self.sandbox.run(argv, timeout=timeout)
        return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    def status(self) -> dict[str, Any]:
        done = self.sandbox.run(self.command("status", "--state", str(self.state), "--json"))
        assert done.returncode in (0, 1, 2, 3), done.stderr  # it exits as check does
        return {t["name"]: t for t in json.loads(done.stdout)["targets"]}


@pytest.fixture
def prober(sandbox: Sandbox, stack: Stack) -> Prober:
    runner = Prober(sandbox, stack)
    runner.configure()
    return runner


def pids(sandbox: Sandbox, stack: Stack) -> tuple[int, int]:
    return sandbox.main_pid(stack.caddy_unit), sandbox.main_pid(stack.backend_unit)


def test_frozen_caddy_is_restarted_and_the_backend_left_alone(prober: Prober) -> None:
    """caddy SIGSTOPped (up, `active`, silent): restarted at the threshold; backend untouched."""
    sandbox, stack = prober.sandbox, prober.stack
    caddy_before, backend_before = pids(sandbox, stack)
    freeze(sandbox, stack.caddy_unit)
    assert sandbox.unit_property(stack.caddy_unit, "ActiveState") == "active"

    first = prober.check()
    assert first.code == 1, first.err
    assert (first.target("caddy")["failure"], first.action("caddy")) == ("timeout", "none")

    second = prober.check()
    assert second.code == 2, second.err
    assert second.action("caddy") == "restart"
    assert "answering again" in second.target("caddy")["outcome"]
    assert second.action("backend") == "none"

    caddy_after, backend_after = pids(sandbox, stack)
    assert caddy_after not in (0, caddy_before)
    assert backend_after == backend_before
    assert answers(f"{stack.caddy_url}/health")
    assert prober.check().code == 0


def test_caddy_that_stopped_listening_is_restarted(prober: Prober) -> None:
    """caddy alive but no longer listening (servers unloaded over its admin API): restarted."""
    sandbox, stack = prober.sandbox, prober.stack
    caddy_before, backend_before = pids(sandbox, stack)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=5, trust_env=False)
    assert refuses(f"{stack.caddy_url}/health")
    assert sandbox.unit_property(stack.caddy_unit, "ActiveState") == "active"

    assert prober.check().code == 1
    second = prober.check()
    assert second.code == 2, second.err
    assert second.target("caddy")["failure"] == "refused"
    assert second.action("caddy") == "restart"

    caddy_after, backend_after = pids(sandbox, stack)
    assert caddy_after not in (0, caddy_before) and backend_after == backend_before
    assert answers(f"{stack.caddy_url}/health")


def test_frozen_backend_is_restarted_not_caddy(prober: Prober) -> None:
    """Backend frozen behind a healthy caddy: the backend is restarted, caddy is not."""
    sandbox, stack = prober.sandbox, prober.stack
    caddy_before, backend_before = pids(sandbox, stack)
    freeze(sandbox, stack.backend_unit)

    assert prober.check().code == 1
    second = prober.check()
    assert second.code == 2, second.err
    assert (second.action("caddy"), second.action("backend")) == ("dependency", "restart")

    caddy_after, backend_after = pids(sandbox, stack)
    assert caddy_after == caddy_before
    assert backend_after not in (0, backend_before)
    assert answers(f"{stack.caddy_url}/health")


def test_admin_stopped_unit_stays_stopped(prober: Prober) -> None:
    """A unit an admin stopped is never started: critical, with the reason, and still stopped."""
    sandbox, stack = prober.sandbox, prober.stack
    sandbox.systemctl("stop", stack.caddy_unit)
    runs = [prober.check() for _ in range(3)]
    assert [r.code for r in runs] == [1, 2, 2]
    assert runs[-1].action("caddy") == "unit-not-active"
    assert "not starting it" in runs[-1].target("caddy")["action_reason"]
    assert sandbox.unit_property(stack.caddy_unit, "ActiveState") == "inactive"


def test_always_failing_backend_gets_max_restarts_then_is_given_up(prober: Prober) -> None:
    """A backend no restart can fix: exactly max_restarts restarts, then given up, loudly."""
    sandbox, stack = prober.sandbox, prober.stack
    events = sandbox.workdir / "events.jsonl"
    recorder = sandbox.workdir / "record.py"
    recorder.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n")
    prober.configure(
        f'\n[notify]\ncommand = ["{sys.executable}", "{recorder}", "{events}"]\n',
        failure_threshold="1", max_restarts="2", verify_timeout='"1s"')
    stack.fail_file.write_text("")
    backend_pids = {sandbox.main_pid(stack.backend_unit)}
    actions = []
    for _ in range(8):
        run = prober.check()
        assert run.code == 2, run.err
        actions.append(run.action("backend"))
        backend_pids.add(sandbox.main_pid(stack.backend_unit))
        if actions[-2:] == ["given-up", "given-up"]:
            break
        if actions[-1] == "wait":  # cooldown after an unhelpful restart (doubles: 1s, 2s)
            time.sleep(1.0)
    assert actions.count("restart") == 2, actions
    assert actions[-2:] == ["given-up", "given-up"]
    assert "no more restarts" in run.target("backend")["action_reason"]
    assert len(backend_pids) == 3  # the original process and two restarts, no more
    assert "given-up" in run.err
    status = prober.status()["backend"]
    assert (status["restarts_total"], status["given_up"]) == (2, True)

    stack.fail_file.unlink()  # fixed by hand: the next pass re-arms the target
    healed = prober.check()
    assert healed.code == 0, healed.err
    assert prober.status()["backend"]["given_up"] is False
    assert "restarts re-armed" in healed.err
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    backend_events = [e["event"] for e in sent if e["target"] == "backend"]
    assert backend_events == ["down", "restart", "restart", "given-up", "recovered"], sent
    assert all(e["unit"] == stack.backend_unit for e in sent if e["target"] == "backend")


def test_dry_run_restarts_nothing(prober: Prober) -> None:
    """--dry-run decides and reports would-restart, and restarts nothing."""
    sandbox, stack = prober.sandbox, prober.stack
    before = pids(sandbox, stack)
    freeze(sandbox, stack.caddy_unit)
    runs = [prober.check("--dry-run") for _ in range(3)]
    assert [r.code for r in runs] == [1, 2, 2]
    assert runs[-1].action("caddy") == "would-restart"
    assert "active (running) but not answering" in runs[-1].target("caddy")["action_reason"]
    assert pids(sandbox, stack) == before
    thaw(sandbox, stack.caddy_unit)


def test_paused_caddy_is_not_restarted_until_resumed(prober: Prober) -> None:
    """A frozen caddy that an operator paused is reported, never restarted; after `resume` it
    is restarted at the threshold as usual."""
    sandbox, stack = prober.sandbox, prober.stack
    caddy_before, _ = pids(sandbox, stack)
    state = ["--state", str(prober.state)]
    paused = sandbox.run(prober.command("pause", "caddy", "--for", "10m", "--reason",
                                        "upgrading caddy", *state), check=True)
    assert "paused until" in paused.stdout
    freeze(sandbox, stack.caddy_unit)
    runs = [prober.check() for _ in range(4)]
    assert [r.action("caddy") for r in runs] == ["paused"] * 4
    assert [r.code for r in runs] == [1] * 4  # warning, never critical: nobody is paged
    assert "upgrading caddy" in runs[-1].target("caddy")["action_reason"]
    assert pids(sandbox, stack)[0] == caddy_before
    sandbox.run(prober.command("resume", *state), check=True)
    after = [prober.check() for _ in range(2)]
    assert [r.action("caddy") for r in after] == ["none", "restart"], [r.err for r in after]
    assert pids(sandbox, stack)[0] != caddy_before
    assert answers(f"{stack.caddy_url}/health")


def test_concurrent_checks_restart_once(prober: Prober) -> None:
    """Several `prober check` at the threshold at once (timer + cron + a human): one restart."""
    sandbox, stack = prober.sandbox, prober.stack
    caddy_before, _ = pids(sandbox, stack)
    freeze(sandbox, stack.caddy_unit)
    assert prober.check().code == 1
    runs: list[Run] = []

    def one() -> None:
        runs.append(prober.check())

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    restarts = [r for r in runs if r.out and r.data["targets"] and r.action("caddy") == "restart"]
    skipped = [r for r in runs if r.out and "skipped" in r.data]
    assert len(restarts) == 1, [r.out for r in runs]
    assert all(r.code in (0, 2) for r in runs)
    assert skipped, "no run found the lock held"
    assert prober.status()["caddy"]["restarts_total"] == 1
    assert pids(sandbox, stack)[0] not in (0, caddy_before)


def test_hung_bus_falls_back_to_systemctl_within_the_deadline(prober: Prober) -> None:
    """The system bus frozen: the restart goes through `systemctl`, and the run ends in time."""
    sandbox, stack = prober.sandbox, prober.stack
    caddy_before, _ = pids(sandbox, stack)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=5, trust_env=False)
    freeze(sandbox, "dbus.service")
    try:
        assert prober.check().code == 1
        run = prober.check()
    finally:
        thaw(sandbox, "dbus.service")
    assert run.code == 2, run.err
    assert run.action("caddy") == "restart"
    assert "falling back to systemctl" in run.err
    assert "via systemctl" in run.target("caddy")["outcome"]
    # The deadline: probe timeout (1s) + bus connect (3s) + restart_timeout (15s) + verify (5s)
    deadline = 1 + 3 + 15 + 5 + 2
    assert run.seconds < deadline, f"the run took {run.seconds:.1f}s"
    sys.stdout.write(f"hung-bus run took {run.seconds:.2f}s (deadline {deadline}s)\n")
    assert pids(sandbox, stack)[0] not in (0, caddy_before)
    assert answers(f"{stack.caddy_url}/health")


def test_signal_before_restart_leaves_evidence(prober: Prober) -> None:
    """signal_before_restart reaches the hung process through systemd before the restart."""
    sandbox, stack = prober.sandbox, prober.stack
    prober.configure(failure_threshold="1", verify_timeout='"1s"')
    config = prober.config.read_text().replace(
        f'unit = "{stack.backend_unit}"\n',
        f'unit = "{stack.backend_unit}"\nsignal_before_restart = "SIGQUIT"\n')
    prober.config.write_text(config)
    backend_before = sandbox.main_pid(stack.backend_unit)
    stack.fail_file.write_text("")
    run = prober.check()
    assert run.action("backend") == "restart", run.err
    assert f"unit={stack.backend_unit}: sent SIGQUIT before restarting" in run.err
    assert f"thread dump of pid {backend_before}" in stack.dump_file.read_text()
    assert sandbox.main_pid(stack.backend_unit) not in (0, backend_before)


def test_unknown_unit_is_reported_clearly(prober: Prober) -> None:
    """A unit systemd does not know is reported as not loaded, and nothing is started."""
    config = prober.config.read_text().replace('unit = "caddy.service"', 'unit = "cadddy.service"')
    prober.config.write_text(config)
    freeze(prober.sandbox, prober.stack.caddy_unit)
    prober.check()
    run = prober.check()
    assert run.code == 2
    assert run.action("caddy") == "unit-not-active"
    assert "cadddy.service is not loaded (not-found)" in run.target("caddy")["action_reason"]
    thaw(prober.sandbox, prober.stack.caddy_unit)


def test_start_limit_is_never_hit(prober: Prober) -> None:
    """With StartLimitBurst=3, prober gives up before systemd would refuse a start."""
    sandbox, stack = prober.sandbox, prober.stack
    sandbox.write_unit(f"{stack.backend_unit}.d/limit.conf",
                       "[Unit]\nDefaultDependencies=no\nStartLimitBurst=3\n"
                       "StartLimitIntervalSec=1h\n")
    prober.configure(failure_threshold="1", max_restarts="10", cooldown='"0s"',
                     verify_timeout='"1s"')
    stack.fail_file.write_text("")
    actions = []
    for _ in range(5):
        run = prober.check()
        actions.append(run.action("backend"))
        if actions[-1] == "given-up":
            break
    assert actions == ["restart", "restart", "given-up"], actions
    assert "StartLimitBurst=3" in run.target("backend")["action_reason"]
    assert sandbox.unit_property(stack.backend_unit, "ActiveState") == "active"
    assert sandbox.unit_property(stack.backend_unit, "Result") != "start-limit-hit"
