"""One view of a target (prober/core/view.py): a table of cases for the pure view, and the
outputs that format it agreeing with each other on one snapshot."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from prober.core.config import parse_config
from prober.core.policy import Action, Decision
from prober.core.psi import MemoryUser
from prober.core.results import FailureClass, ProbeResult
from prober.core.runs import RunReport, Snapshot, TargetReport
from prober.core.text import utc
from prober.core.tracker import Change, Event, Health, State, TargetState, Transition
from prober.core.view import Budget, Pause, TargetView, views
from prober.outputs import web
from tests.support import snapshots

NOW = snapshots.NOW
CONFIG = parse_config({"target": [
    {"name": "web", "url": "http://127.0.0.1:3000/health", "unit": "mastodon-web"},
    {"name": "caddy", "url": "http://127.0.0.1:80/", "unit": "caddy", "depends_on": ["web"]},
]})
SIDEKIQ = MemoryUser("mastodon-sidekiq.service", 3 << 30)
TIMEOUT = ProbeResult("web", False, "timeout: no answer within 5s", FailureClass.TIMEOUT)
DOWN = TargetState(health=Health.DOWN, since=NOW - 300, down_since=NOW - 300,
                   consecutive_failures=10, last_checked_at=NOW - 1, last_ok=False,
                   last_reason=TIMEOUT.reason, last_failure="timeout")
RESTARTED = replace(DOWN, restarts=(NOW - 10,), restarts_total=1, last_restart_at=NOW - 10)


def _item(name: str, state: TargetState, action: Action, reason: str,
          outcome: str | None = None, *, held: bool = False,
          result: ProbeResult = TIMEOUT) -> TargetReport:
    return TargetReport(CONFIG.target(name), result, state.health,
                        Decision(name, action, reason, CONFIG.target(name).unit, held), state,
                        outcome)


def _view(state: TargetState, item: TargetReport | None = None,
          name: str = "web") -> TargetView:
    states = {"web": TargetState(), "caddy": TargetState(), name: state}
    report = None if item is None else RunReport(targets=(item,))
    shown = views(Snapshot(CONFIG, State(targets=states, updated_at=NOW - 1), report, NOW))
    return next(view for view in shown if view.target.name == name)


def _facts(view: TargetView) -> dict[str, Any]:
    """What the view says beyond the defaults of a healthy target."""
    facts: dict[str, Any] = {"status": view.status.value, "cause": view.cause,
                             "did": view.did, "budget": view.budget,
                             "next_restart_at": view.next_restart_at, "pause": view.pause,
                             "held": view.held, "culprit": view.culprit,
                             "prober_fault": view.prober_fault,
                             "given_up_reason": view.given_up_reason, "notice": view.notice}
    return {key: value for key, value in facts.items()
            if value != _DEFAULTS.get(key, value) or key == "status"}


_DEFAULTS: dict[str, Any] = {"cause": None, "did": None, "budget": Budget(0, 3, 3600.0),
                             "next_restart_at": None, "pause": None, "held": False,
                             "culprit": (), "prober_fault": False, "given_up_reason": None,
                             "notice": None}
HEALTHY = TargetState(health=Health.HEALTHY, since=NOW - 600, last_checked_at=NOW - 1,
                      last_ok=True, consecutive_passes=20)
FAILING = TargetState(health=Health.FAILING, since=NOW - 30, consecutive_failures=2,
                      last_ok=False, last_reason=TIMEOUT.reason)
CASES: list[tuple[str, TargetView, dict[str, Any]]] = [
    ("healthy", _view(HEALTHY), {"status": "ok"}),
    ("never probed", _view(TargetState()), {"status": "unknown"}),
    ("failing below the threshold",
     _view(FAILING, _item("web", FAILING, Action.NONE, TIMEOUT.reason)),
     {"status": "warning", "cause": TIMEOUT.reason}),
    ("down and restarted this run",
     _view(RESTARTED, _item("web", RESTARTED, Action.RESTART, "down: timeout",
                            "restarted (job done)")),
     {"status": "critical", "cause": TIMEOUT.reason, "budget": Budget(1, 3, 3600.0),
      "did": "restart: down: timeout; restarted (job done)", "next_restart_at": NOW + 50}),
    ("down, the restart a run ago, no report",
     _view(RESTARTED),
     {"status": "critical", "cause": TIMEOUT.reason, "budget": Budget(1, 3, 3600.0),
      "next_restart_at": NOW + 50}),
    ("given up",
     _view(replace(DOWN, given_up=True,
                  given_up_reason="3 restarts within 1h did not bring it back")),
     {"status": "critical", "cause": TIMEOUT.reason,
      "given_up_reason": "3 restarts within 1h did not bring it back"}),
    ("paused while failing",
     _view(replace(HEALTHY, last_ok=False, last_reason="status 502",
                  paused_until=NOW + 600, paused_reason="upgrade")),
     {"status": "warning", "cause": "status 502", "pause": Pause(NOW + 600, "upgrade")}),
    ("a pause that has run out",
     _view(replace(HEALTHY, paused_until=NOW - 1)), {"status": "ok"}),
    ("held for memory pressure this run",
     _view(DOWN, _item("web", DOWN, Action.WAIT, "memory pressure: restart held",
                       held=True)),
     {"status": "critical", "cause": TIMEOUT.reason, "held": True,
      "did": "wait: memory pressure: restart held"}),
    ("held, from the state alone, with who held the memory",
     _view(replace(DOWN, history=(
         Transition(NOW - 900, Event.DOWN, "an older outage", (MemoryUser("old", 1),)),
         Transition(NOW - 300, Event.DOWN, "timeout", (SIDEKIQ,)),
         Transition(NOW - 200, Event.HELD, "memory pressure: restart held")))),
     {"status": "critical", "cause": TIMEOUT.reason, "held": True, "culprit": (SIDEKIQ,)}),
    ("prober's own fault",
     _view(replace(HEALTHY, last_ok=False, last_reason="no env_file",
                  last_failure=FailureClass.PROBER_FAULT.value)),
     {"status": "warning", "cause": "no env_file", "prober_fault": True}),
    ("blamed on a dependency",
     _view(DOWN, _item("caddy", DOWN, Action.DEPENDENCY, "web is down: restarting it instead"),
           "caddy"),
     {"status": "critical", "cause": TIMEOUT.reason,
      "did": "dependency: web is down: restarting it instead"}),
]


@pytest.mark.parametrize(("view", "expected"), [(v, e) for _, v, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_the_view_of_a_target(view: TargetView, expected: dict[str, Any]) -> None:
    assert _facts(view) == expected


def _served(snapshot: Snapshot, path: str) -> str:
    render = web.route("GET", path)
    assert not isinstance(render, web.Response)
    return render(snapshot, "host.example.org").body.decode()


def _restarted(health: Health, seconds_ago: float) -> Snapshot:
    config = parse_config({"target": [{"name": "web", "url": "http://127.0.0.1:3000/health",
                                       "unit": "mastodon-web", "cooldown": "5m"}]})
    failing = health.is_failing
    state = TargetState(health=health, since=NOW - seconds_ago, last_checked_at=NOW - 2,
                        last_ok=not failing, last_reason="timeout" if failing else "status 200",
                        consecutive_failures=5 if failing else 0,
                        restarts=(NOW - seconds_ago,), restarts_total=1,
                        last_restart_at=NOW - seconds_ago)
    return Snapshot(config, State(targets={"web": state}, updated_at=NOW - 1), None, NOW)


@pytest.mark.parametrize(("health", "seconds_ago"), [
    (Health.HEALTHY, 60),  # answering again after a restart, its cooldown not over
    (Health.DOWN, 60),  # still down, its cooldown not over
    (Health.HEALTHY, 600),  # the cooldown over: no next restart to wait for
])
def test_page_and_status_json_agree_on_the_next_restart_allowed(health: Health,
                                                                 seconds_ago: float) -> None:
    """The status page and /status.json of the same snapshot name the same next restart
    allowed, or neither does: one rule, whenever it is still ahead."""
    snapshot = _restarted(health, seconds_ago)
    allowed = json.loads(_served(snapshot, "/status.json"))["targets"][0][
        "next_restart_allowed_at"]
    shown = re.search(r"next allowed (\d\d:\d\d:\d\d) UTC", _served(snapshot, "/"))
    assert (shown.group(1) if shown else None) == \
        (None if allowed is None else utc(allowed, "%H:%M:%S"))
    assert (allowed is None) == (seconds_ago >= 300)


def test_page_and_status_json_agree_on_each_status_before_the_first_run() -> None:
    """Before the watcher's first run (the page judging from the state alone), each card's
    status is the one /status.json gives: a remembered notice warns on both."""
    snapshot = snapshots.snapshot(with_report=False)
    expiring = replace(snapshot.state.get("caddy"), last_notice="certificate expires in 3 days")
    given_up_fault = replace(snapshot.state.get("sidekiq"), health=Health.FAILING,
                             last_failure=FailureClass.PROBER_FAULT.value)
    states = {**snapshot.state.targets, "caddy": expiring, "sidekiq": given_up_fault}
    snapshot = replace(snapshot, state=replace(snapshot.state, targets=states))
    served = json.loads(_served(snapshot, "/status.json"))["targets"]
    cards = dict(re.findall(r'data-target="([^"]+)" data-status="(\w+)"',
                            _served(snapshot, "/")))
    assert cards == {target["name"]: target["status"] for target in served}


def test_a_failing_containers_next_step_is_its_engine_log() -> None:
    """A container has no journal of its own: its next step is `docker logs` since the outage
    began; a unit's stays its journal."""
    from prober.outputs.page import next_step

    config = parse_config({"target": [
        {"name": "web", "url": "http://127.0.0.1:3000/health", "container": "mastodon-web-1"}]})
    state = State(targets={"web": DOWN}, updated_at=NOW - 1)
    (view,) = views(Snapshot(config, state, None, NOW))
    assert next_step(view, None) == \
        f'docker logs --since "{utc(NOW - 300, "%Y-%m-%dT%H:%M:%SZ")}" mastodon-web-1'
    assert view.journal is None  # status, its JSON and the notifications offer no journalctl
    assert next_step(_view(DOWN), None) == \
        f'journalctl -u mastodon-web.service --since "{utc(NOW - 300)}"'


@pytest.mark.parametrize(("keys", "unit"), [
    ({"url": "http://127.0.0.1:3000/health", "unit": "mastodon-web"}, "mastodon-web.service"),
    ({"unit_health": "netdata"}, "netdata.service"),
    ({"unit_health": "systemd-journald.service"}, "systemd-journald.service"),
    ({"url": "http://127.0.0.1:3000/health", "container": "mastodon-web-1"}, None),
    ({"url": "http://127.0.0.1:3000/health"}, None),
], ids=["restarted unit", "watched unit", "watched, never restartable", "container",
        "monitored only"])
def test_a_failing_targets_journal_is_the_unit_that_restarts_it_or_that_it_watches(
        keys: dict[str, str], unit: str | None) -> None:
    """The journal line (status, its JSON, the page's next step) names the unit that restarts
    the target, else the unit a unit_health target watches: netdata's journal is what tells
    why it failed, though prober restarts nothing. A container and a bare URL have none."""
    from prober.outputs.page import next_step

    config = parse_config({"target": [{"name": "t", **keys}]})
    (view,) = views(Snapshot(config, State(targets={"t": DOWN}, updated_at=NOW - 1), None, NOW))
    journal = None if unit is None else f'journalctl -u {unit} --since "{utc(NOW - 300)}"'
    assert view.journal == journal
    if "container" not in keys:
        assert next_step(view, None) == journal


def test_a_watched_units_notification_carries_its_journal_and_restarts_nothing() -> None:
    """A unit_health target's `down` carries its watched unit's journal line, while its
    `unit` (what restarts it) stays None: prober restarts nothing of it."""
    from prober.outputs.notify import payloads

    config = parse_config({"target": [{"name": "netdata", "unit_health": "netdata"}]})
    down = Transition(NOW, Event.DOWN, "netdata.service was OOM-killed 3 times in 1m")
    (sent,) = payloads([Change("netdata", down)], config,
                       states={"netdata": replace(DOWN, history=(down,))})
    assert sent["unit"] is None and sent["container"] is None
    assert sent["journal"] == f'journalctl -u netdata.service --since "{utc(NOW)}"'
