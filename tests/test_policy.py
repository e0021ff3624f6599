"""The restart policy, as tables: (remembered state, unit facts, now) -> action and reason."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from prober.core import policy
from prober.core.actuator import Facts, Running, StartLimit
from prober.core.config import Target, parse_config
from prober.core.policy import Action, Outcome
from prober.core.psi import Pressure, PressureReading, Scope
from prober.core.results import FailureClass, ProbeResult
from prober.core.tracker import Event, Health, TargetState, Verdict

NOW = 1_000_000.0


def _target(**settings: Any) -> Target:
    base = {"name": "caddy", "url": "http://127.0.0.1:1/", "unit": "caddy",
            "failure_threshold": 3, "startup_grace": "60s", "cooldown": "60s",
            "max_cooldown": "10m", "max_restarts": 3, "restart_window": "1h"}
    table = {k: v for k, v in {**base, **settings}.items() if v is not None}
    return parse_config({"target": [table]}).targets[0]


FAILED = ProbeResult("caddy", False, "timeout: no response headers within 5s",
                     FailureClass.TIMEOUT)
DOWN = Verdict("caddy", Health.DOWN, FAILED, 3)
FAULT = ProbeResult("caddy", False, "env_file /etc/prober/x.env: no such file or directory",
                    FailureClass.PROBER_FAULT)
DOWN_STATE = TargetState(health=Health.DOWN, consecutive_failures=3,
                         failure_times=(NOW - 60, NOW - 30, NOW))
ACTIVE = Facts("caddy.service", Running.RUNNING, "caddy.service is active (running)",
               since=NOW - 3600, main_pid=42,
               start_limit=StartLimit(5, 10.0,
                                      "StartLimitBurst=5 within StartLimitIntervalSec=10s"))


def _facts(**changes: Any) -> Facts:
    return replace(ACTIVE, **changes)


def _state(**changes: Any) -> TargetState:
    return replace(DOWN_STATE, **changes)


CASES = [
    # (id, target settings, verdict, state, facts, dry_run, expected action, reason fragment)
    ("healthy", {}, Verdict("caddy", Health.HEALTHY,
                            ProbeResult("caddy", True, "status 200"), 0),
     TargetState(), ACTIVE, False, Action.NONE, "status 200"),
    ("below-threshold", {}, Verdict("caddy", Health.FAILING, FAILED, 2), _state(),
     ACTIVE, False, Action.NONE, "failing 2/3"),
    ("blamed", {}, replace(DOWN, blamed_on="web"), _state(), ACTIVE, False,
     Action.DEPENDENCY, "dependency web is failing"),
    ("restart", {}, DOWN, _state(), ACTIVE, False, Action.RESTART,
     "caddy.service is active (running) but not answering"),
    ("dry-run", {}, DOWN, _state(), ACTIVE, True, Action.WOULD_RESTART, "would restart"),
    ("prober-fault-while-down", {}, replace(DOWN, result=FAULT), _state(), ACTIVE, False,
     Action.PROBER_FAULT, "prober's own fault, not the target's: env_file /etc/prober/x.env: "
     "no such file or directory; no failure counted, nothing restarted"),
    ("prober-fault-while-healthy", {}, Verdict("caddy", Health.HEALTHY, FAULT, 0),
     TargetState(), ACTIVE, False, Action.PROBER_FAULT, "nothing restarted"),
    ("dry-run-no-facts", {}, DOWN, _state(), None, True, Action.WOULD_RESTART, "unknown"),
    ("no-facts", {}, DOWN, _state(), None, False, Action.UNIT_UNKNOWN,
     "cannot ask systemd about caddy.service: bus unreachable"),
    ("no-unit", {"unit": None}, DOWN, _state(), None, False, Action.NO_UNIT,
     "no unit is configured"),
    ("stopped", {}, DOWN, _state(), _facts(running=Running.STOPPED,
                                            detail="caddy.service is inactive (dead)"), False,
     Action.UNIT_NOT_ACTIVE, "caddy.service is inactive (dead): not starting it"),
    ("starting", {}, DOWN, _state(), _facts(running=Running.STARTING,
                                            detail="caddy.service is activating (start)"),
     False, Action.WAIT, "caddy.service is activating (start), a job is under way"),
    ("grace-all-failures", {}, DOWN, _state(), _facts(since=NOW - 10), False,
     Action.WAIT, "0/3 failures count"),
    ("grace-some-failures", {}, DOWN, _state(), _facts(since=NOW - 100), False,
     Action.WAIT, "2/3 failures count"),
    ("grace-over", {}, DOWN, _state(), _facts(since=NOW - 121), False, Action.RESTART,
     "restarting"),
    ("grace-zero", {"startup_grace": 0}, DOWN, _state(), _facts(since=NOW - 61), False,
     Action.RESTART, "restarting"),
    # failures seen before the unit's current start belong to its previous process
    ("started-after-failures", {"startup_grace": 0}, DOWN, _state(),
     _facts(since=NOW - 1), False, Action.WAIT, "1/3 failures count"),
    ("cooldown", {}, DOWN, _state(last_restart_at=NOW - 30, restarts=(NOW - 30,)), ACTIVE,
     False, Action.WAIT, "next restart allowed in 30s"),
    ("cooldown-over", {}, DOWN, _state(last_restart_at=NOW - 61, restarts=(NOW - 61,)), ACTIVE,
     False, Action.RESTART, "restarting"),
    ("backoff-doubles", {}, DOWN,
     _state(last_restart_at=NOW - 100, restarts=(NOW - 100,), unhelpful_restarts=1), ACTIVE,
     False, Action.WAIT, "cooldown 2m"),
    ("backoff-capped", {"max_restarts": 10}, DOWN,
     _state(last_restart_at=NOW - 601, restarts=(NOW - 601,), unhelpful_restarts=8), ACTIVE,
     False, Action.RESTART, "restarting"),
    ("budget-spent", {}, DOWN, _state(restarts=(NOW - 3000, NOW - 2000, NOW - 1000),
                                      last_restart_at=NOW - 1000), ACTIVE, False,
     Action.GIVEN_UP, "3 restarts within 1h"),
    ("budget-window-slides", {}, DOWN,
     _state(restarts=(NOW - 4000, NOW - 2000, NOW - 1000), last_restart_at=NOW - 1000),
     ACTIVE, False, Action.RESTART, "restarting"),
    ("given-up-sticks", {}, DOWN, _state(given_up=True, given_up_reason="given up: earlier"),
     ACTIVE, False, Action.GIVEN_UP, "given up: earlier"),
    ("max-restarts-zero", {"max_restarts": 0}, DOWN, _state(), ACTIVE, False,
     Action.GIVEN_UP, "restarts are disabled"),
    ("start-limit", {"cooldown": "1s", "max_restarts": 10, "startup_grace": 0,
                     "failure_threshold": 1}, DOWN,
     _state(restarts=(NOW - 8, NOW - 6, NOW - 4, NOW - 2), last_restart_at=NOW - 2,
            failure_times=(NOW,)),
     _facts(since=NOW - 2), False,
     Action.GIVEN_UP, "StartLimitBurst=5"),
    ("start-limit-room", {"cooldown": "1s", "max_restarts": 10, "startup_grace": 0,
                          "failure_threshold": 1}, DOWN,
     _state(restarts=(NOW - 8, NOW - 2), last_restart_at=NOW - 2, failure_times=(NOW,)),
     _facts(since=NOW - 2), False,
     Action.RESTART, "restarting"),
]


@pytest.mark.parametrize(
    ("settings", "verdict", "state", "facts", "dry_run", "action", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decide(settings: dict[str, Any], verdict: Verdict, state: TargetState,
                facts: Facts | None, dry_run: bool, action: Action, reason: str) -> None:
    """Each situation leads to exactly one action, whose reason explains it."""
    decision = policy.decide(_target(**settings), verdict, state, facts, NOW, dry_run=dry_run,
                             facts_error="bus unreachable")
    assert (decision.action, reason in decision.reason) == (action, True), decision.reason


RESTARTING = policy.Decision("caddy", Action.RESTART, "restarting caddy.service", "caddy.service")


@pytest.mark.parametrize(
    ("outcome", "unhelpful", "health", "events", "action"),
    [
        (Outcome.RECOVERED, 0, Health.HEALTHY, [Event.RESTART, Event.RECOVERED], Action.RESTART),
        (Outcome.NOT_RECOVERED, 3, Health.FAILING, [Event.RESTART], Action.RESTART),
        (Outcome.JOB_FAILED, 3, Health.FAILING, [Event.RESTART_FAILED], Action.RESTART_FAILED),
    ],
)
def test_apply_restart(outcome: Outcome, unhelpful: int, health: Health,
                       events: list[Event], action: Action) -> None:
    """A restart is counted; only one that brought the target back resets the backoff; a job
    that failed turns the decision into restart-failed, and every change is returned."""
    before = _state(unhelpful_restarts=2, restarts=(NOW - 7200, NOW - 100), down_since=NOW - 60)
    applied = policy.apply_restart(_target(), before, RESTARTING,
                                   policy.RestartOutcome(outcome, "why", NOW))
    after = applied.state
    assert after.restarts == (NOW - 100, NOW)  # restarts outside the window are forgotten
    assert after.restarts_total == 1 and after.last_restart_at == NOW
    assert after.unhelpful_restarts == unhelpful and after.health is health
    assert after.consecutive_failures == 0 and after.failure_times == ()
    assert [t.event for t in after.history] == events
    assert [c.event for c in applied.changes] == events
    assert applied.decision.action is action
    assert (after.down_since is None) == (outcome is Outcome.RECOVERED)


def test_a_restart_that_found_its_target_stopped_is_not_counted() -> None:
    """An admin's stop between the run's facts and its restart (the actuator found it stopped
    and left it so) is no restart and no failed one: nothing counted, the run says the target
    is not active, as it would had it seen the stop in time."""
    before = _state(unhelpful_restarts=2, restarts=(NOW - 100,), down_since=NOW - 60)
    applied = policy.apply_restart(_target(), before, RESTARTING, policy.RestartOutcome(
        Outcome.STOPPED, "container web is exited: stopped since it was judged", NOW))
    assert applied.state == before and applied.changes == ()
    assert applied.decision.action is Action.UNIT_NOT_ACTIVE
    assert "never started by prober" in applied.decision.reason


def test_giving_up_is_recorded_once() -> None:
    """The given-up transition is recorded the first time only."""
    decision = policy.Decision("caddy", Action.GIVEN_UP, "given up: 3 restarts")
    once = policy.apply_decision(_target(), _state(), decision, NOW)
    twice = policy.apply_decision(_target(), once.state, decision, NOW + 30)
    assert once.state.given_up and once.state.given_up_reason == "given up: 3 restarts"
    assert [c.event for c in once.changes] == [Event.GIVEN_UP] and twice.changes == ()
    assert [t.event for t in twice.state.history] == [Event.GIVEN_UP]


@pytest.mark.parametrize(("unhelpful", "expected"), [(0, 60), (1, 120), (2, 240), (3, 480),
                                                     (4, 600), (30, 600)])
def test_cooldown_doubles_up_to_max(unhelpful: int, expected: float) -> None:
    """cooldown doubles with each restart that did not help, up to max_cooldown."""
    assert policy.cooldown_for(_target(), _state(unhelpful_restarts=unhelpful)) == expected


def test_failing_actions_are_critical() -> None:
    """Only none, dependency, wait, paused and a prober fault leave a run below critical."""
    calm = {a for a in Action if not a.is_critical}
    assert calm == {Action.NONE, Action.DEPENDENCY, Action.WAIT, Action.PAUSED,
                    Action.PROBER_FAULT}


# --- under memory pressure ------------------------------------------------------------------

HOST_CALM = PressureReading(Pressure(2.0, 1.0, 1.0, 0.5), Scope.HOST, "/proc/pressure/memory")
HOST_STARVING = PressureReading(Pressure(41.2, 30.0, 33.0, 20.0), Scope.HOST,
                                "/proc/pressure/memory")
UNIT_STARVING = PressureReading(Pressure(55.0, 40.0, 50.0, 30.0), Scope.UNIT,
                                "/sys/fs/cgroup/unified/system.slice/caddy.service/"
                                "memory.pressure", "/system.slice/caddy.service")
# Down for a minute, every failure of the streak a timeout.
STARVING_STATE = _state(streak_starving=True, down_since=NOW - 60, last_failure="timeout")

PRESSURE_CASES = [
    # (id, target settings, state, reading, the culprit, expected action, reason fragment)
    ("held-host", {}, STARVING_STATE, HOST_STARVING, None, Action.WAIT,
     "memory pressure (host): some 41.2%"),
    ("held-unit", {}, STARVING_STATE, UNIT_STARVING, None, Action.WAIT,
     "memory pressure of /system.slice/caddy.service: some 55.0%"),
    ("hold-left", {}, STARVING_STATE, HOST_STARVING, None, Action.WAIT,
     "restarting caddy.service in 4m (pressure_hold 5m)"),
    ("hold-over", {}, _state(streak_starving=True, down_since=NOW - 301), HOST_STARVING,
     None, Action.RESTART, "restarting"),
    ("calm", {}, STARVING_STATE, HOST_CALM, None, Action.RESTART, "restarting"),
    ("no-reading", {}, STARVING_STATE, None, None, Action.RESTART, "restarting"),
    ("broken-not-starving", {}, _state(streak_starving=False, down_since=NOW - 60),
     HOST_STARVING, None, Action.RESTART, "restarting"),
    ("threshold-0", {"pressure_threshold": 0}, STARVING_STATE, HOST_STARVING, None,
     Action.RESTART, "restarting"),
    ("threshold-above", {"pressure_threshold": 50}, STARVING_STATE, HOST_STARVING,
     None, Action.RESTART, "restarting"),
    ("hold-0", {"pressure_hold": "0s"}, STARVING_STATE, HOST_STARVING, None,
     Action.RESTART, "restarting"),
    ("another-is-the-culprit", {}, STARVING_STATE, HOST_STARVING, "sidekiq.service",
     Action.WAIT, "held"),
    ("the-culprit-itself", {}, STARVING_STATE, HOST_STARVING, "caddy.service",
     Action.RESTART, "restarting"),
    ("cooldown-first", {}, _state(streak_starving=True, down_since=NOW - 60,
                                  last_restart_at=NOW - 10), HOST_STARVING, None,
     Action.WAIT, "cooldown"),
    ("budget-first", {"max_restarts": 0}, STARVING_STATE, HOST_STARVING, None,
     Action.GIVEN_UP, "restarts are disabled"),
]


@pytest.mark.parametrize(("settings", "state", "reading", "culprit", "action", "reason"),
                         [pytest.param(*case[1:], id=case[0]) for case in PRESSURE_CASES])
def test_restart_held_under_pressure(settings: dict[str, Any], state: TargetState,
                                     reading: PressureReading | None, culprit: str | None,
                                     action: Action, reason: str) -> None:
    """A target that only times out on a starving host or unit waits, up to pressure_hold from
    when it went down, saying which reading and how long; nothing else is ever held."""
    decision = policy.decide(_target(**settings), DOWN, state, ACTIVE, NOW,
                             memory=policy.Memory(reading, culprit))
    assert (decision.action, reason in decision.reason) == (action, True), decision.reason
    assert decision.held == (action is Action.WAIT and "held" in decision.reason)


def test_a_hold_is_recorded_once_per_outage() -> None:
    """The first held run records `held` in the history; later ones in the same outage not."""
    decision = policy.decide(_target(), DOWN, STARVING_STATE, ACTIVE, NOW,
                             memory=policy.Memory(HOST_STARVING))
    once = policy.apply_decision(_target(), STARVING_STATE, decision, NOW)
    twice = policy.apply_decision(_target(), once.state, decision, NOW + 30)
    assert [c.event for c in once.changes] == [Event.HELD] and twice.changes == ()
    assert once.state.held_at == NOW


def _restart(name: str, unit: str) -> policy.Decision:
    return policy.Decision(name, Action.RESTART, f"restarting {unit}", unit)


@pytest.mark.parametrize(
    ("host", "culprit", "expected"),
    [
        (HOST_STARVING.pressure, None, ["restart", "wait", "wait"]),
        (HOST_STARVING.pressure, "sidekiq.service", ["wait", "restart", "wait"]),
        (HOST_CALM.pressure, None, ["restart", "restart", "restart"]),
        (None, None, ["restart", "restart", "restart"]),
    ],
    ids=["config-order", "culprit-first", "calm", "no-psi"],
)
def test_one_restart_per_run_under_pressure(host: Pressure | None, culprit: str | None,
                                            expected: list[str]) -> None:
    """While the host starves, one unit is restarted per run (the largest memory user first);
    the others wait and say why. Without pressure all go at once."""
    targets = [_target(name=n, unit=n) for n in ("web", "sidekiq", "streaming")]
    decisions = [_restart(t.name, t.unit or "") for t in targets]
    limited = policy.one_restart_under_pressure(targets, decisions, host, culprit)
    assert [d.action.value for d in limited] == expected
    for decision in limited:
        if decision.action is Action.WAIT:
            assert "one restart per run" in decision.reason


@pytest.mark.parametrize(
    ("restarts", "expected"),
    [
        ([{"unit": "caddy"}, {"container": "caddy.service"}], ["restart", "wait"]),
        ([{"container": "caddy.service"}, {"unit": "caddy"}], ["restart", "wait"]),
        ([{"unit": "caddy"}, {"unit": "caddy.service"}], ["restart", "restart"]),
        ([{"container": "web-1"}, {"container": "web-1"}], ["restart", "restart"]),
    ],
    ids=["unit-then-container", "container-then-unit", "one-unit", "one-container"],
)
def test_one_restart_under_pressure_tells_a_unit_from_a_container_of_its_name(
        restarts: list[dict[str, str]], expected: list[str]) -> None:
    """What one restart restarts is told apart by actuator and name: a unit and a container
    both called caddy.service are two restarts, one of them waiting while the host starves;
    two targets of one unit (or one container) share its one restart."""
    tables = [{"name": f"t{n}", "url": "http://127.0.0.1:1/", **restart}
              for n, restart in enumerate(restarts)]
    targets = parse_config({"target": tables}).targets
    decisions = [_restart(t.name, t.unit or "") for t in targets]
    limited = policy.one_restart_under_pressure(targets, decisions, HOST_STARVING.pressure,
                                                None)
    assert [d.action.value for d in limited] == expected


@pytest.mark.parametrize(
    ("reading", "threshold", "worth"),
    [(9.9, 10, False), (10.0, 10, True), (9.9, 0, False), (10.0, 0, True), (30, 50, False)],
)
def test_worth_saying(reading: float, threshold: float, worth: bool) -> None:
    """The culprit is named at the target's threshold, or at 10 % where the hold is off."""
    assert policy.worth_saying(Pressure(reading, 0, 0, 0), threshold) is worth
