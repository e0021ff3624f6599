"""One run in process, with a fake actuator: restart, verify, notify and the failure paths.

The targets are real loopback servers; only the actuator is fake, so that these paths run
without root, a systemd or a bus. This is also the template for testing another actuator: the
same cases, with the fake replaced by the real thing (tests/e2e/ does that for systemd).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prober.core import tracker
from prober.core.actuator import Facts, RestartResult, Running
from prober.core.config import Config, Target, parse_config
from prober.core.errors import ActuatorFault, SystemdError
from prober.core.policy import Action
from prober.core.results import FailureClass
from prober.core.runs import RunReport, Status
from prober.core.tracker import Event, Health, State
from prober.shell.check import run_once
from tests.support.servers import Listening, Server, answer, hang, serve

pytestmark = pytest.mark.timeout(60)

NOW = 1_000_000.0


def _running(unit: str, since: float) -> Facts:
    return Facts(unit, Running.RUNNING, f"{unit} is active (running)", since=since, main_pid=42)


@dataclass
class FakeActuator:
    """Answers unit facts from a table and 'restarts' by calling `on_restart`."""

    known: dict[str, Facts] = field(default_factory=dict)
    on_restart: Callable[[Target], RestartResult] = lambda t: RestartResult(True, "job done")
    facts_error: str = ""
    facts_fault: str = ""
    restarted: list[str] = field(default_factory=list)
    closed: int = 0

    async def facts(self, target: Target) -> Facts:
        if self.facts_error:
            raise SystemdError(self.facts_error)
        if self.facts_fault:
            raise ActuatorFault(self.facts_fault)
        unit = target.unit or ""
        return self.known.get(unit) or _running(unit, since=NOW - 3600)

    async def restart(self, target: Target) -> RestartResult:
        assert target.unit is not None
        self.restarted.append(target.unit)
        return self.on_restart(target)

    async def close(self) -> None:
        self.closed += 1


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(answer(500, b"broken")) as server:
        yield server


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


def _config(web: Server, events: Path, *, extra: str = "", **policy: Any) -> Config:
    settings = {"timeout": "1s", "failure_threshold": 1, "startup_grace": "0s",
                "cooldown": "0s", "verify_timeout": "1s", **policy}
    recorder = "import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n"
    script = events.with_suffix(".py")
    script.write_text(recorder)
    return parse_config({
        "defaults": settings,
        "notify": {"command": [sys.executable, str(script), str(events)]},
        "target": [{"name": "web", "url": web.url("/health"), "unit": "web.service"}],
    })


def _run(config: Config, actuator: FakeActuator, state: State | None = None, *,
         dry_run: bool = False, now: float = NOW) -> tuple[State, RunReport]:
    return asyncio.run(run_once(config, state or State(), lambda: now, lambda: actuator,
                                dry_run=dry_run))


def _events(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def _fix(web: Server) -> Callable[[Target], RestartResult]:
    def restart(target: Target) -> RestartResult:
        web.handler = answer(200, b"OK")
        return RestartResult(True, "job done")
    return restart


def test_restart_that_helps(web: Server, events_file: Path) -> None:
    """A down target's unit is restarted, verified answering, and every event is notified."""
    actuator = FakeActuator(on_restart=_fix(web))
    state, report = _run(_config(web, events_file), actuator)
    (item,) = report.targets
    assert item.decision.action is Action.RESTART
    assert item.outcome and "answering again" in item.outcome
    assert item.health is Health.HEALTHY and item.state.restarts_total == 1
    assert actuator.restarted == ["web.service"] and actuator.closed == 1
    assert [c.event for c in report.changes] == [Event.DOWN, Event.RESTART, Event.RECOVERED]
    assert _events(events_file) == ["down", "restart", "recovered"]
    assert state.get("web").down_since is None


def test_restart_that_does_not_help(web: Server, events_file: Path) -> None:
    """A restart after which the target still fails counts as unhelpful and stays critical."""
    actuator = FakeActuator()
    state, report = _run(_config(web, events_file), actuator)
    (item,) = report.targets
    assert item.decision.action is Action.RESTART and report.status is Status.CRITICAL
    assert item.outcome and "still failing" in item.outcome
    assert state.get("web").unhelpful_restarts == 1
    assert state.get("web").down_since == NOW
    assert _events(events_file) == ["down", "restart"]


@pytest.mark.parametrize(
    ("on_restart", "detail"),
    [
        (lambda t: RestartResult(False, "job failed"), "restart failed: job failed"),
        (lambda t: (_ for _ in ()).throw(SystemdError("systemd refused to restart web")),
         "systemd refused"),
    ],
    ids=["job-failed", "refused"],
)
def test_restart_failed(web: Server, events_file: Path,
                        on_restart: Callable[[Target], RestartResult], detail: str) -> None:
    """A failed or refused restart is `restart-failed`, decided by the policy, and notified."""
    _, report = _run(_config(web, events_file), FakeActuator(on_restart=on_restart))
    (item,) = report.targets
    assert item.decision.action is Action.RESTART_FAILED
    assert detail in item.decision.reason
    assert [c.event for c in report.changes] == [Event.DOWN, Event.RESTART_FAILED]
    assert _events(events_file) == ["down", "restart-failed"]


def test_unit_facts_unknown(web: Server, events_file: Path) -> None:
    """When the actuator cannot say what the unit is doing, nothing is restarted."""
    actuator = FakeActuator(facts_error="the bus is gone")
    _, report = _run(_config(web, events_file), actuator)
    assert report.targets[0].decision.action is Action.UNIT_UNKNOWN
    assert "the bus is gone" in report.targets[0].decision.reason
    assert actuator.restarted == []


def test_an_actuator_it_cannot_use_is_a_prober_fault(web: Server, events_file: Path) -> None:
    """An actuator prober cannot use through its own fault (its socket gone) is prober's
    problem: `prober-fault`, a warning in the view, never a restart nor `unit-unknown`."""
    actuator = FakeActuator(facts_fault="no socket at /run/docker.sock")
    state, report = _run(_config(web, events_file), actuator)
    (item,) = report.targets
    assert item.decision.action is Action.PROBER_FAULT
    assert "no socket at /run/docker.sock" in item.decision.reason
    assert actuator.restarted == []
    assert state.get("web").restarts == ()


def test_a_restart_it_could_not_ask_for_is_a_prober_fault_and_not_counted(
        web: Server, events_file: Path) -> None:
    """A restart the actuator could not even ask for, through prober's fault, is not counted
    against the budget: `prober-fault`, not `restart-failed`."""
    def gone(target: Target) -> RestartResult:
        raise ActuatorFault("the socket went away")
    state, report = _run(_config(web, events_file), FakeActuator(on_restart=gone))
    (item,) = report.targets
    assert item.decision.action is Action.PROBER_FAULT
    assert "the socket went away" in item.decision.reason
    assert state.get("web").restarts == ()
    assert Event.RESTART_FAILED not in [c.event for c in report.changes]


def test_stopped_unit_is_never_started(web: Server, events_file: Path) -> None:
    """A unit an admin stopped is reported, not started."""
    actuator = FakeActuator(known={"web.service": Facts(
        "web.service", Running.STOPPED, "web.service is inactive (dead)")})
    _, report = _run(_config(web, events_file), actuator)
    assert report.targets[0].decision.action is Action.UNIT_NOT_ACTIVE
    assert actuator.restarted == []


def test_dry_run_restarts_nothing(web: Server, events_file: Path) -> None:
    """--dry-run decides as usual and restarts nothing."""
    actuator = FakeActuator()
    _, report = _run(_config(web, events_file), actuator, dry_run=True)
    assert report.targets[0].decision.action is Action.WOULD_RESTART
    assert actuator.restarted == []


def test_given_up_after_max_restarts(web: Server, events_file: Path) -> None:
    """Restarts that never help stop at max_restarts; the given-up event goes out once."""
    actuator = FakeActuator()
    config = _config(web, events_file, max_restarts=2)
    state = State()
    actions = []
    for run in range(4):
        state, report = _run(config, actuator, state, now=NOW + 10 * run)
        actions.append(report.targets[0].decision.action)
    assert actions == [Action.RESTART, Action.RESTART, Action.GIVEN_UP, Action.GIVEN_UP]
    assert len(actuator.restarted) == 2
    assert _events(events_file) == ["down", "restart", "restart", "given-up"]


def test_paused_target_is_probed_and_reported_never_restarted(web: Server,
                                                              events_file: Path) -> None:
    """A paused down target: action paused, warning not critical, no restart, no failure
    counted; its pause ends by itself and the history says so."""
    actuator = FakeActuator()
    config = _config(web, events_file)
    state = tracker.pause(State(), ["web"], NOW + 60, "upgrading", NOW - 1)
    for run in range(3):
        state, report = _run(config, actuator, state, now=NOW + run)
        (item,) = report.targets
        assert item.decision.action is Action.PAUSED and "upgrading" in item.decision.reason
        assert item.status is Status.WARNING and report.status is Status.WARNING
    assert actuator.restarted == [] and state.get("web").consecutive_failures == 0
    web.handler = answer(200, b"OK")
    _, passing = _run(config, actuator, state, now=NOW + 5)
    assert passing.targets[0].status is Status.OK
    state, report = _run(config, FakeActuator(on_restart=_fix(web)), state, now=NOW + 61)
    assert report.targets[0].decision.action is Action.NONE
    assert [t.event for t in state.get("web").history] == [Event.PAUSED, Event.RESUMED]


def test_paused_backend_is_still_blamed(events_file: Path) -> None:
    """A paused backend that fails still takes the blame: the proxy in front is not
    restarted."""
    with serve(answer(500, b"broken")) as proxy, serve(answer(500, b"broken")) as backend:
        recorder = events_file.with_suffix(".py")
        recorder.write_text("import sys\nsys.stdin.read()\n")
        config = parse_config({
            "defaults": {"timeout": "1s", "failure_threshold": 1, "startup_grace": "0s"},
            "target": [
                {"name": "caddy", "url": proxy.url("/"), "unit": "caddy",
                 "depends_on": ["web"]},
                {"name": "web", "url": backend.url("/"), "unit": "web"},
            ],
        })
        actuator = FakeActuator()
        state = tracker.pause(State(), ["web"], NOW + 600, "", NOW - 1)
        _, report = _run(config, actuator, state)
    actions = {item.target.name: item.decision.action for item in report.targets}
    assert actions == {"caddy": Action.DEPENDENCY, "web": Action.PAUSED}
    assert actuator.restarted == []


def test_a_missing_env_file_never_restarts_a_healthy_service(tmp_path: Path,
                                                             events_file: Path) -> None:
    """An exec target whose env_file is missing (a typo) is a prober fault on every run: never
    down, never restarted, nothing notified, warning not critical; once the file is there, the
    target is judged again, and healthy."""
    env_file = tmp_path / "redis.env"
    recorder = events_file.with_suffix(".py")
    recorder.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n")
    config = parse_config({
        "defaults": {"timeout": "1s", "failure_threshold": 1, "startup_grace": "0s"},
        "notify": {"command": [sys.executable, str(recorder), str(events_file)]},
        "target": [{"name": "redis", "command": ["/bin/sh", "-c", 'test "$REDISCLI_AUTH" = x'],
                    "env_file": str(env_file), "unit": "redis-server.service"}],
    })
    actuator = FakeActuator()
    state = State()
    for run in range(3):
        state, report = _run(config, actuator, state, now=NOW + run)
        (item,) = report.targets
        assert item.result.failure is FailureClass.PROBER_FAULT
        assert item.result.reason == f"env_file {env_file}: no such file or directory"
        assert item.decision.action is Action.PROBER_FAULT
        assert (item.status, report.status) == (Status.WARNING, Status.WARNING)
        assert state.get("redis").consecutive_failures == 0
    assert actuator.restarted == [] and _events(events_file) == []
    assert state.get("redis").health is Health.UNKNOWN and state.get("redis").history == ()
    env_file.write_text("REDISCLI_AUTH=x\n")
    state, report = _run(config, actuator, state, now=NOW + 3)
    assert report.targets[0].result.ok and state.get("redis").health is Health.HEALTHY


def _tcp_config(port: int, **policy: Any) -> Config:
    """The default policy (failure_threshold 3), startup grace and cooldown aside."""
    return parse_config({
        "defaults": {"timeout": "1s", "startup_grace": "0s", "cooldown": "0s",
                     "verify_timeout": "0s", **policy},
        "target": [{"name": "caddy", "tcp": f"127.0.0.1:{port}", "unit": "caddy"}],
    })


@pytest.mark.parametrize(("confirm_interval", "action", "events"),
                         [("100ms", Action.RESTART, [Event.FAILING, Event.DOWN, Event.RESTART]),
                          ("0s", Action.NONE, [Event.FAILING])],
                         ids=["confirmed", "confirm_interval-0"])
def test_a_target_nothing_listens_on_is_restarted_within_one_run(
        confirm_interval: str, action: Action, events: list[Event]) -> None:
    """A refused target is probed again within the run until it is down, and restarted in that
    run; with confirm_interval 0 it takes failure_threshold runs, as before."""
    with Listening() as listening:
        listening.close()
        config = _tcp_config(listening.port, confirm_interval=confirm_interval)
        actuator = FakeActuator()
        _, report = _run(config, actuator)
    (item,) = report.targets
    assert item.result.failure == "refused" and item.decision.action is action
    assert [c.event for c in report.changes] == events
    assert actuator.restarted == (["caddy.service"] if action is Action.RESTART else [])


@pytest.mark.parametrize(
    ("policy", "last_restart", "dry_run", "action"),
    [
        ({}, None, True, Action.WOULD_RESTART),
        ({"startup_grace": "60s"}, None, False, Action.WAIT),  # the unit started 10 s ago
        ({"cooldown": "60s"}, NOW - 5, False, Action.WAIT),
        ({"max_restarts": 0}, None, False, Action.GIVEN_UP),
    ],
    ids=["dry-run", "startup-grace", "cooldown", "max-restarts"],
)
def test_a_confirmed_target_meets_the_policy_as_always(
        policy: dict[str, Any], last_restart: float | None, dry_run: bool,
        action: Action) -> None:
    """Down by its confirmations, a target is decided on as one down after as many runs:
    the dry run, the startup grace, the cooldown and the budget still stop its restart."""
    from prober.core.tracker import TargetState

    active = _running("caddy.service", since=NOW - 10)
    with Listening() as listening:
        listening.close()
        config = _tcp_config(listening.port, **{"confirm_interval": "10ms", **policy})
        actuator = FakeActuator(known={"caddy.service": active})
        state = State().with_target("caddy", TargetState(last_restart_at=last_restart))
        _, report = _run(config, actuator, state, dry_run=dry_run)
    (item,) = report.targets
    assert (item.health, item.decision.action) == (Health.DOWN, action)
    assert actuator.restarted == []


def test_a_target_that_refuses_for_a_second_is_never_restarted() -> None:
    """A listener gone for a moment is probed again, passes, and the streak ends there: the
    run ends healthy, nothing restarted (failure_threshold 3, confirm_interval 2s, defaults)."""
    with Listening() as listening:
        config = _tcp_config(listening.port)
        actuator = FakeActuator()
        listening.refuse_for(1.0)
        state, report = _run(config, actuator)
    (item,) = report.targets
    assert item.result.ok and item.health is Health.HEALTHY
    assert [c.event for c in report.changes] == [Event.FAILING, Event.RECOVERED]
    assert actuator.restarted == [] and state.get("caddy").consecutive_failures == 0


def test_a_frozen_target_still_takes_failure_threshold_runs() -> None:
    """A timeout may mean a starving host: it is not confirmed within the run, and the unit is
    restarted on the third run, as before."""
    with serve(hang()) as frozen:
        config = parse_config({
            # pressure_threshold 0: a timeout on a host whose PSI happens to be high (another
            # test's thrasher just ended) would be held, which is not what this test is about
            "defaults": {"timeout": "200ms", "startup_grace": "0s", "verify_timeout": "0s",
                         "confirm_interval": "10ms", "pressure_threshold": 0},
            "target": [{"name": "caddy", "url": frozen.url("/"), "unit": "caddy"}],
        })
        actuator = FakeActuator()
        state, actions = State(), []
        for run in range(3):
            state, report = _run(config, actuator, state, now=NOW + 30 * run)
            actions.append(report.targets[0].decision.action)
    assert actions == [Action.NONE, Action.NONE, Action.RESTART]
    assert actuator.restarted == ["caddy.service"]
