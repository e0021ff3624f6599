"""The failure tracker, as tables: sequences of run results -> expected health and blame."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from prober.core import tracker
from prober.core.config import Config, parse_config
from prober.core.results import FailureClass, ProbeResult
from prober.core.tracker import Event, Health, State


def _config(**defaults: Any) -> Config:
    """caddy -> web -> db, plus an independent streaming target."""
    return parse_config({
        "defaults": defaults,
        "target": [
            {"name": "caddy", "url": "http://127.0.0.1:1/", "unit": "caddy",
             "depends_on": ["web", "streaming"]},
            {"name": "web", "url": "http://127.0.0.1:2/", "unit": "web", "depends_on": ["db"]},
            {"name": "streaming", "url": "http://127.0.0.1:3/", "unit": "streaming"},
            {"name": "db", "tcp": "127.0.0.1:4", "unit": "postgresql"},
        ],
    })


def _result(name: str, ok: bool) -> ProbeResult:
    if ok:
        return ProbeResult(name, True, "status 200", status_code=200, latency=0.01)
    return ProbeResult(name, False, "connection refused", FailureClass.REFUSED)


FAULT = ProbeResult("", False, "env_file /etc/prober/x.env: no such file or directory",
                    FailureClass.PROBER_FAULT)


def _marked(name: str, mark: str) -> ProbeResult:
    """'P' passed, 'F' failed, 'X' a prober fault (prober could not judge it)."""
    return replace(FAULT, name=name) if mark == "X" else _result(name, mark == "P")


def _run(config: Config, runs: str, name: str = "caddy") -> list[Health]:
    """Feed 'F'/'P'/'X' runs for one target; the health after each."""
    return [verdict.health for verdict in _verdicts(config, runs, name)]


def _verdicts(config: Config, runs: str, name: str = "caddy") -> list[tracker.Verdict]:
    state, seen = State(), []
    for i, mark in enumerate(runs):
        folded = tracker.fold(config, state, [_marked(name, mark)], now=i * 30.0)
        state = folded.state
        seen.append(folded.verdicts[0])
    return seen


H, F, D, R, U = Health.HEALTHY, Health.FAILING, Health.DOWN, Health.RECOVERING, Health.UNKNOWN


@pytest.mark.parametrize(
    ("settings", "runs", "expected"),
    [
        ({}, "P", [H]),
        ({}, "FF", [F, F]),
        ({}, "FFF", [F, F, D]),
        ({}, "FFFF", [F, F, D, D]),
        ({}, "FFPFF", [F, F, H, F, F]),
        ({"failure_threshold": 1}, "F", [D]),
        ({"failure_threshold": 2}, "FFP", [F, D, H]),
        ({"success_threshold": 2}, "FFFPP", [F, F, D, R, H]),
        ({"success_threshold": 3}, "FFFPPFPPP", [F, F, D, R, R, F, R, R, H]),
        ({"success_threshold": 2}, "PP", [H, H]),
        ({}, "FFX", [F, F, F]),
        ({}, "FFXXXF", [F, F, F, F, F, D]),
        ({}, "FXP", [F, F, H]),
        ({}, "PXXXX", [H, H, H, H, H]),
        ({"failure_threshold": 1}, "XXX", [U, U, U]),
        ({"success_threshold": 2}, "FFFPXP", [F, F, D, R, R, H]),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_thresholds(settings: dict[str, Any], runs: str, expected: list[Health]) -> None:
    """failure_threshold failures in a row make a target down; success_threshold passes heal."""
    assert _run(_config(**settings), runs) == expected


@pytest.mark.parametrize(
    ("failing", "blame"),
    [
        ({"caddy"}, {"caddy": None}),
        ({"caddy", "web"}, {"caddy": "web", "web": None}),
        ({"caddy", "web", "db"}, {"caddy": "db", "web": "db", "db": None}),
        ({"caddy", "db"}, {"caddy": None, "db": None}),  # web passes: caddy's own fault
        ({"web", "db"}, {"web": "db", "db": None}),
        ({"caddy", "streaming"}, {"caddy": "streaming", "streaming": None}),
        ({"caddy", "streaming", "web", "db"},
         {"caddy": "db", "web": "db", "streaming": None, "db": None}),
    ],
    ids=lambda v: "+".join(sorted(v)) if isinstance(v, set) else None,
)
def test_failures_are_blamed_on_the_deepest_failing_dependency(
    failing: set[str], blame: dict[str, str | None]
) -> None:
    """A failing target whose dependency also fails is not a restart candidate; the deepest is."""
    config = _config(failure_threshold=1)
    results = [_result(n, n not in failing) for n in config.names]
    verdicts = tracker.fold(config, State(), results, now=0.0).verdicts
    got = {v.name: v.blamed_on for v in verdicts if not v.result.ok}
    assert got == blame
    wants = {v.name for v in verdicts if v.wants_restart}
    assert wants == {n for n, b in blame.items() if b is None}


def test_a_prober_fault_counts_for_nothing() -> None:
    """A prober fault neither grows nor resets the streak, records no history, never asks for
    a restart (even of a target already down) and is remembered as the last result."""
    verdicts = _verdicts(_config(), "FFFX")
    assert [v.consecutive_failures for v in verdicts] == [1, 2, 3, 3]
    assert [v.wants_restart for v in verdicts] == [False, False, True, False]
    config = _config()
    state = State()
    for i, mark in enumerate("FX"):
        state = tracker.fold(config, state, [_marked("caddy", mark)], now=float(i)).state
    caddy = state.get("caddy")
    assert [t.event for t in caddy.history] == [Event.FAILING]
    assert (caddy.last_failure, caddy.last_reason) == ("prober-fault", FAULT.reason)
    assert tracker.has_prober_fault(caddy)


@pytest.mark.parametrize(
    ("faulty", "failing", "blame"),
    [
        ({"web"}, {"caddy"}, {"caddy": None, "web": None}),
        ({"db"}, {"caddy", "web"}, {"caddy": "web", "web": None, "db": None}),
        ({"caddy"}, {"web"}, {"caddy": None, "web": None}),
    ],
    ids=["proxy-not-blamed-on-its-faulty-backend", "faulty-db-takes-no-blame",
         "faulty-proxy-blames-nobody"],
)
def test_a_prober_fault_blames_no_one(faulty: set[str], failing: set[str],
                                      blame: dict[str, str | None]) -> None:
    """A target prober cannot judge is no failing dependency: what depends on it is judged on
    its own; and it is blamed on nothing, nor restarted."""
    config = _config(failure_threshold=1)
    results = [_marked(n, "X" if n in faulty else "F" if n in failing else "P")
               for n in config.names]
    verdicts = tracker.fold(config, State(), results, now=0.0).verdicts
    assert {v.name: v.blamed_on for v in verdicts if not v.result.ok} == blame
    assert {v.name for v in verdicts if v.wants_restart} == \
        {n for n, b in blame.items() if b is None and n not in faulty}


def test_state_counts_and_history() -> None:
    """The state keeps streak counters, first transition times and a history of changes."""
    config = _config()
    state = State()
    for i, ok in enumerate([True, False, False, False, True]):
        state = tracker.fold(config, state, [_result("caddy", ok)], now=100.0 + i).state
    caddy = state.get("caddy")
    assert caddy.health is Health.HEALTHY and caddy.consecutive_passes == 1
    assert [(t.event, t.at) for t in caddy.history] == [
        (Event.FAILING, 101.0), (Event.DOWN, 103.0), (Event.RECOVERED, 104.0)]
    assert caddy.since == 104.0


def test_failure_times_are_bounded_by_the_threshold() -> None:
    """Only the latest failure_threshold failure times are kept, whatever the streak length."""
    config = _config(failure_threshold=3)
    state = State()
    for i in range(50):
        state = tracker.fold(config, state, [_result("caddy", False)], now=float(i)).state
    assert state.get("caddy").failure_times == (47.0, 48.0, 49.0)
    assert state.get("caddy").consecutive_failures == 50


def test_history_stays_bounded_over_thousands_of_runs() -> None:
    """Flapping for 12,000 runs keeps at most HISTORY_LIMIT transitions, trimmed to `history`."""
    config = _config(failure_threshold=1)
    state = State()
    for i in range(12_000):
        state = tracker.fold(config, state, [_result("caddy", i % 2 == 0)], now=float(i)).state
    assert len(state.get("caddy").history) == tracker.HISTORY_LIMIT
    assert state.get("caddy").history[-1].at == 11999.0
    trimmed = tracker.trim_history(state, config.history)
    assert [len(t.history) for t in trimmed.targets.values()] == [500]
    assert trimmed.get("caddy").history[-1].at == 11999.0


def test_forget_and_prune() -> None:
    """reset forgets counters but notes itself; prune drops targets no longer configured."""
    config = _config(failure_threshold=1)
    state = tracker.fold(config, State(), [_result("caddy", False)], now=1.0).state
    state = tracker.forget(state, ["caddy"], now=2.0)
    caddy = state.get("caddy")
    assert caddy.consecutive_failures == 0 and caddy.health is Health.UNKNOWN
    assert caddy.history[-1].event is Event.RESET
    assert tracker.prune(state, ["web"]).targets == {}


@pytest.mark.parametrize(
    ("classes", "starving"),
    [
        ("T", [True]),
        ("TS", [True, True]),
        ("TR", [True, False]),
        ("RT", [False, False]),
        ("TRPT", [True, False, False, True]),
        ("TTP", [True, True, False]),
    ],
)
def test_streak_starving_means_every_failure_was_timeout_or_slow(classes: str,
                                                                 starving: list[bool]) -> None:
    """A streak counts as starving only while each of its failures was a timeout or slow; a pass
    ends the streak (T timeout, S slow, R refused, P pass)."""
    failures = {"T": FailureClass.TIMEOUT, "S": FailureClass.SLOW, "R": FailureClass.REFUSED}
    config = _config()
    state, seen = State(), []
    for i, mark in enumerate(classes):
        result = ProbeResult("caddy", mark == "P", "x", failures.get(mark))
        state = tracker.fold(config, state, [result], now=float(i)).state
        seen.append(state.get("caddy").streak_starving)
    assert seen == starving


# Failures that may mean only starving (held under pressure), and those that mean broken
# whatever the load. An exec check that times out is a `timeout` like any other.
MEANS_STARVING = {
    "timeout": True, "slow": True,
    "refused": False, "tls": False, "dns": False, "connect": False,
    "protocol": False, "status": False, "body": False, "too-large": False, "redirect": False,
    "exit": False, "output": False, "exec": False, "unit": False, "oom": False, "error": False,
    "prober-fault": False,
}


@pytest.mark.parametrize("failure", list(FailureClass), ids=lambda f: f.value)
def test_which_failures_may_mean_starving(failure: FailureClass) -> None:
    """Only timeouts and slowness may mean a starving service; every class is in the table."""
    assert failure.means_starving is MEANS_STARVING[failure.value]


def test_top_memory_is_noted_on_down_and_restart_entries() -> None:
    """This run's down entry carries the largest memory users; other entries do not."""
    from prober.core.psi import MemoryUser

    config = _config(failure_threshold=1)
    folded = tracker.fold(config, State(), [_result("caddy", False)], now=5.0)
    users = (MemoryUser("convert (pid 42)", 900 << 20),)
    state, changes = tracker.with_top_memory(folded.state, folded.changes, users)
    assert [(c.event, c.transition.top_memory) for c in changes] == [(Event.DOWN, users)]
    assert state.get("caddy").history[-1].top_memory == users


# Failures that can only mean nothing listens any more (confirmed within the run), and those
# that a slow deploy, a starving host or the network also give.
MEANS_GONE = {
    "refused": True,
    "timeout": False, "slow": False, "tls": False, "dns": False, "connect": False,
    "protocol": False, "status": False, "body": False, "too-large": False, "redirect": False,
    "exit": False, "output": False, "exec": False, "unit": False, "oom": False, "error": False,
    "prober-fault": False,
}


@pytest.mark.parametrize("failure", list(FailureClass), ids=lambda f: f.value)
def test_which_failures_mean_nothing_listens(failure: FailureClass) -> None:
    """Only a refused connection is confirmed within a run; every class is in the table."""
    assert failure.means_gone is MEANS_GONE[failure.value]


_CLASSES = {"R": FailureClass.REFUSED, "T": FailureClass.TIMEOUT, "S": FailureClass.STATUS,
            "C": FailureClass.CONNECT}


def _mark(name: str, mark: str) -> ProbeResult:
    if mark == "P":
        return _result(name, True)
    return ProbeResult(name, False, "x", _CLASSES[mark])


@pytest.mark.parametrize(
    ("settings", "runs", "left"),
    [
        ({}, "R", 2),
        ({}, "RR", 1),
        ({}, "RRR", 0),  # down already: the run acts
        ({}, "TR", 1),  # a streak begun by a timeout counts too
        ({}, "RT", 0),
        ({}, "S", 0),
        ({}, "C", 0),
        ({}, "P", 0),
        ({}, "RP", 0),
        ({"failure_threshold": 5}, "R", 4),
        ({"failure_threshold": 1}, "R", 0),
        ({"confirm_interval": "0s"}, "R", 0),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_confirmations_left(settings: dict[str, Any], runs: str, left: int) -> None:
    """A target nothing listens on is probed again until failure_threshold failures in a row."""
    config = _config(**settings)
    state = State()
    for i, mark in enumerate(runs):
        state = tracker.fold(config, state, [_mark("caddy", mark)], now=float(i)).state
    got = tracker.confirmations_left(config.target("caddy"), state.get("caddy"),
                                     _mark("caddy", runs[-1]), now=float(len(runs)))
    assert got == left


def test_a_paused_target_is_not_confirmed() -> None:
    """An operator's pause counts toward nothing, so nothing is confirmed either."""
    config = _config()
    state = tracker.pause(State(), ["caddy"], until=100.0, reason="", now=0.0)
    folded = tracker.fold(config, state, [_mark("caddy", "R")], now=1.0)
    assert tracker.confirmations_left(config.target("caddy"), folded.state.get("caddy"),
                                      _mark("caddy", "R"), now=1.0) == 0


def test_each_confirmation_counts_as_one_more_run() -> None:
    """Probes again within a run fold like runs: failing, then down at the threshold, each
    change at its own time; the targets not probed again are not counted twice."""
    config = _config()
    results = [_mark("caddy", "R"), _mark("web", "P")]
    folded = tracker.fold(config, State(), results, now=0.0)
    for at in (2.0, 4.0):
        folded = tracker.confirm(config, folded, [_mark("caddy", "R")], now=at)
    caddy, web = folded.verdicts
    assert (caddy.health, caddy.consecutive_failures, caddy.wants_restart) == (Health.DOWN, 3, True)
    assert folded.state.get("web").consecutive_passes == 1 and web.health is Health.HEALTHY
    assert [(c.event, c.transition.at) for c in folded.changes] == [
        (Event.FAILING, 0.0), (Event.DOWN, 4.0)]


def test_a_confirmed_target_is_still_blamed_on_a_failing_dependency() -> None:
    """Blame is judged on every target's latest result, those not probed again included."""
    config = _config()
    folded = tracker.fold(config, State(), [_mark("caddy", "R"), _mark("web", "T")], now=0.0)
    for at in (2.0, 4.0):
        folded = tracker.confirm(config, folded, [_mark("caddy", "R")], now=at)
    caddy, web = folded.verdicts
    assert caddy.health is Health.DOWN and caddy.blamed_on == "web" and not caddy.wants_restart
    assert web.consecutive_failures == 1
