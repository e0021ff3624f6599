"""The restart policy, as tables: (remembered state, unit facts, now) -> action and reason."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from prober import policy
from prober.actuator import UnitFacts
from prober.config import Target, parse_config
from prober.policy import Action, Outcome
from prober.results import FailureClass, ProbeResult
from prober.tracker import Event, Health, TargetState, Verdict

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
DOWN_STATE = TargetState(health=Health.DOWN, consecutive_failures=3,
                         failure_times=(NOW - 60, NOW - 30, NOW))
ACTIVE = UnitFacts("caddy.service", "loaded", "active", "running", active_enter=NOW - 3600,
                   main_pid=42, start_limit_burst=5, start_limit_interval=10.0)


def _facts(**changes: Any) -> UnitFacts:
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
    ("dry-run-no-facts", {}, DOWN, _state(), None, True, Action.WOULD_RESTART, "unknown"),
    ("no-facts", {}, DOWN, _state(), None, False, Action.UNIT_UNKNOWN, "cannot ask systemd"),
    ("no-unit", {"unit": None}, DOWN, _state(), None, False, Action.NO_UNIT,
     "no unit is configured"),
    ("inactive", {}, DOWN, _state(), _facts(active_state="inactive", sub_state="dead"), False,
     Action.UNIT_NOT_ACTIVE, "not starting it"),
    ("failed", {}, DOWN, _state(), _facts(active_state="failed", sub_state="failed"), False,
     Action.UNIT_NOT_ACTIVE, "is failed"),
    ("not-found", {}, DOWN, _state(), _facts(load_state="not-found", active_state="inactive"),
     False, Action.UNIT_NOT_ACTIVE, "not loaded (not-found)"),
    ("activating", {}, DOWN, _state(), _facts(active_state="activating", sub_state="start"),
     False, Action.WAIT, "a job is under way"),
    ("reloading", {}, DOWN, _state(), _facts(active_state="reloading"), False, Action.WAIT,
     "a job is under way"),
    ("job-pending", {}, DOWN, _state(), _facts(job_pending=True), False, Action.WAIT,
     "a job is under way"),
    ("grace-all-failures", {}, DOWN, _state(), _facts(active_enter=NOW - 10), False,
     Action.WAIT, "0/3 failures count"),
    ("grace-some-failures", {}, DOWN, _state(), _facts(active_enter=NOW - 100), False,
     Action.WAIT, "2/3 failures count"),
    ("grace-over", {}, DOWN, _state(), _facts(active_enter=NOW - 121), False, Action.RESTART,
     "restarting"),
    ("grace-zero", {"startup_grace": 0}, DOWN, _state(), _facts(active_enter=NOW - 61), False,
     Action.RESTART, "restarting"),
    # failures seen before the unit's current start belong to its previous process
    ("started-after-failures", {"startup_grace": 0}, DOWN, _state(),
     _facts(active_enter=NOW - 1), False, Action.WAIT, "1/3 failures count"),
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
     _facts(active_enter=NOW - 2, start_limit_burst=5, start_limit_interval=10.0), False,
     Action.GIVEN_UP, "StartLimitBurst=5"),
    ("start-limit-room", {"cooldown": "1s", "max_restarts": 10, "startup_grace": 0,
                          "failure_threshold": 1}, DOWN,
     _state(restarts=(NOW - 8, NOW - 2), last_restart_at=NOW - 2, failure_times=(NOW,)),
     _facts(active_enter=NOW - 2, start_limit_burst=5, start_limit_interval=10.0), False,
     Action.RESTART, "restarting"),
]


@pytest.mark.parametrize(
    ("settings", "verdict", "state", "facts", "dry_run", "action", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decide(settings: dict[str, Any], verdict: Verdict, state: TargetState,
                facts: UnitFacts | None, dry_run: bool, action: Action, reason: str) -> None:
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
    """Only none, dependency, wait and paused leave a run below critical."""
    calm = {a for a in Action if not a.is_critical}
    assert calm == {Action.NONE, Action.DEPENDENCY, Action.WAIT, Action.PAUSED}
