"""A Mastodon host at 4 a.m., as a `Snapshot`: what the metrics, web and page tests render.

Six targets: caddy healthy after an outage in the night (held back once under memory pressure,
then restarted), web down with restarts, streaming paused for an upgrade, sidekiq given up,
redis healthy and monitor-only, postgres never probed. Secrets sit where an operator puts them
(a URL password, a header, an exec target's env) and must never show up in any output; a reason
carries markup that must come out escaped.
"""

from __future__ import annotations

from dataclasses import replace

from prober.core.config import Config, parse_config
from prober.core.policy import Action, Decision
from prober.core.psi import Pressure
from prober.core.results import Certificate, FailureClass, ProbeResult
from prober.core.runs import RunReport, Snapshot, TargetReport
from prober.core.tracker import Event, Health, State, TargetState, Transition

NOW = 1_764_389_520.0  # 2025-11-29 04:12:00 UTC
HOUR = 3600.0
SECRETS = ("hunter2-url-password", "Bearer-header-SECRET", "env-SECRET-value")
MARKUP = "<script>alert('x')</script>"
PAUSE_REASON = f"upgrading to Mastodon 4.3 {MARKUP}"
CERT_NOT_AFTER = NOW + 60 * 24 * HOUR
PRESSURE = Pressure(some_avg10=23.4, some_avg60=12.0, full_avg10=4.1, full_avg60=1.0)


def config() -> Config:
    return parse_config({
        "interval": "30s",
        "defaults": {"timeout": "5s"},
        "target": [
            {"name": "caddy", "url": "https://mastodon.example.org/health",
             "resolve": "127.0.0.1", "unit": "caddy", "depends_on": ["web"]},
            {"name": "web", "url": f"http://prober:{SECRETS[0]}@127.0.0.1:3000/health",
             "headers": {"Authorization": SECRETS[1]}, "unit": "mastodon-web"},
            {"name": "streaming", "url": "http://127.0.0.1:4000/api/v1/streaming/health",
             "unit": "mastodon-streaming"},
            {"name": "sidekiq", "command": ["/usr/local/lib/prober/sidekiq-alive",
                                            "--this-host"],
             "env": {"REDISCLI_AUTH": SECRETS[2]}, "unit": "mastodon-sidekiq"},
            {"name": "redis", "tcp": "127.0.0.1:6379"},
            {"name": "postgres", "command": ["/usr/bin/pg_isready", "-q"]},
        ],
    }, path="/etc/prober/prober.toml")


def _t(hours_ago: float, event: Event, reason: str) -> Transition:
    return Transition(NOW - hours_ago * HOUR, event, reason)


def _states() -> dict[str, TargetState]:
    checked = NOW - 2
    caddy = TargetState(
        health=Health.HEALTHY, since=NOW - 5 * HOUR, consecutive_passes=420,
        last_checked_at=checked, last_ok=True, last_reason="status 200",
        last_status_code=200, last_latency_ms=3.2, restarts=(), restarts_total=4,
        last_restart_at=NOW - 5.2 * HOUR,
        history=(
            _t(30, Event.RESTART, "an old outage, before the window"),
            _t(5.6, Event.FAILING, "timeout: no answer within 5s"),
            _t(5.5, Event.DOWN, "timeout: no answer within 5s"),
            _t(5.4, Event.HELD, "memory pressure some 41.0% >= 10%: restart held back"),
            _t(5.2, Event.RESTART, "restarted (job done); answering again"),
            _t(5.0, Event.RECOVERED, "status 200"),
        ))
    web = TargetState(
        health=Health.DOWN, since=NOW - 0.7 * HOUR, consecutive_failures=84,
        last_checked_at=checked, last_ok=False, last_reason="timeout: no answer within 5s",
        last_failure="timeout", last_latency_ms=5000.0,
        down_since=NOW - 0.7 * HOUR, restarts=(NOW - 0.6 * HOUR, NOW - 120),
        restarts_total=9, unhelpful_restarts=2, last_restart_at=NOW - 120,
        history=(
            _t(12, Event.FAILING, "status 502, expected 2xx"),
            _t(11.9, Event.RECOVERED, "status 200"),
            _t(0.75, Event.FAILING, "timeout: no answer within 5s"),
            _t(0.7, Event.DOWN, "timeout: no answer within 5s"),
            _t(0.6, Event.RESTART, "restarted (job done); still failing: timeout"),
            _t(120 / HOUR, Event.RESTART_FAILED, "restart failed: job timeout"),
        ))
    streaming = TargetState(
        health=Health.HEALTHY, since=NOW - 20 * HOUR, last_checked_at=checked, last_ok=False,
        last_reason="status 502, expected 2xx", last_failure="status", last_status_code=502,
        last_latency_ms=1.8, paused_until=NOW + 25 * 60, paused_reason=PAUSE_REASON,
        history=(_t(0.1, Event.PAUSED, f"paused until 04:37 UTC: {PAUSE_REASON}"),))
    sidekiq = TargetState(
        health=Health.DOWN, since=NOW - 3 * HOUR, consecutive_failures=360,
        last_checked_at=checked, last_ok=False,
        last_reason="exit 1, expected 0: heartbeat 3h old", last_failure="exit",
        last_latency_ms=41.0, down_since=NOW - 3 * HOUR,
        restarts=(NOW - 2.9 * HOUR, NOW - 2.7 * HOUR, NOW - 2.4 * HOUR), restarts_total=3,
        unhelpful_restarts=3, last_restart_at=NOW - 2.4 * HOUR, given_up=True,
        given_up_reason="3 restarts within 1h did not bring it back",
        history=(
            _t(3.1, Event.FAILING, "exit 1, expected 0: heartbeat 90s old"),
            _t(3, Event.DOWN, "exit 1, expected 0: heartbeat 2m old"),
            _t(2.9, Event.RESTART, "restarted (job done); still failing"),
            _t(2.7, Event.RESTART, "restarted (job done); still failing"),
            _t(2.4, Event.RESTART, "restarted (job done); still failing"),
            _t(2.3, Event.GIVEN_UP, "3 restarts within 1h did not bring it back"),
        ))
    redis = TargetState(health=Health.HEALTHY, since=NOW - 40 * HOUR, last_checked_at=checked,
                        last_ok=True, last_reason="connected", last_latency_ms=0.3)
    return {"caddy": caddy, "web": web, "streaming": streaming, "sidekiq": sidekiq,
            "redis": redis}


def _item(cfg: Config, name: str, state: TargetState, action: Action, reason: str,
          result: ProbeResult, outcome: str | None = None) -> TargetReport:
    target = cfg.target(name)
    return TargetReport(target=target, result=result, health=state.health,
                        decision=Decision(name, action, reason, target.unit), state=state,
                        outcome=outcome)


def report(cfg: Config, states: dict[str, TargetState]) -> RunReport:
    certificate = Certificate("CN=mastodon.example.org", CERT_NOT_AFTER)
    timeout = ProbeResult("", False, "timeout: no answer within 5s", FailureClass.TIMEOUT,
                          latency=5.0)
    items = (
        _item(cfg, "caddy", states["caddy"], Action.NONE, "status 200",
              ProbeResult("caddy", True, "status 200", status_code=200, latency=0.0032,
                          certificate=certificate)),
        _item(cfg, "web", states["web"], Action.WAIT,
              "cooldown: next restart allowed in 2m", replace(timeout, name="web")),
        _item(cfg, "streaming", states["streaming"], Action.PAUSED,
              f"paused until 04:37 UTC: {PAUSE_REASON}",
              ProbeResult("streaming", False, "status 502, expected 2xx",
                          FailureClass.STATUS, 502, latency=0.0018)),
        _item(cfg, "sidekiq", states["sidekiq"], Action.GIVEN_UP,
              "3 restarts within 1h did not bring it back",
              ProbeResult("sidekiq", False, "exit 1, expected 0: heartbeat 3h old",
                          FailureClass.EXIT, latency=0.041)),
        _item(cfg, "redis", states["redis"], Action.NONE, "connected",
              ProbeResult("redis", True, "connected", latency=0.0003)),
    )
    return RunReport(targets=items, started_at=NOW - 1.3, duration=0.81, pressure=PRESSURE)


def snapshot(*, with_report: bool = True) -> Snapshot:
    """The host at NOW, after a run (or, without it, as a watcher knows it before its first)."""
    cfg = config()
    states = _states()
    state = State(targets=states, updated_at=NOW - 0.6)
    return Snapshot(cfg, state, report(cfg, states) if with_report else None, NOW)


def healthy_snapshot() -> Snapshot:
    """One healthy target, right after its first run."""
    cfg = parse_config({"target": [{"name": "solo", "url": "http://127.0.0.1:9/"}]})
    state = TargetState(health=Health.HEALTHY, since=NOW, consecutive_passes=1,
                        last_checked_at=NOW, last_ok=True, last_reason="status 200",
                        last_latency_ms=1.0)
    item = _item(cfg, "solo", state, Action.NONE, "status 200",
                 ProbeResult("solo", True, "status 200", status_code=200, latency=0.001))
    return Snapshot.after_run(cfg, RunReport(targets=(item,), started_at=NOW, duration=0.01),
                              NOW + 0.01)


FAULT_REASON = "env_file /etc/prober/redis.env: no such file or directory"


def prober_fault_snapshot(*, with_report: bool = True) -> Snapshot:
    """One healthy exec target whose env_file has gone missing: a prober fault, its streak
    untouched."""
    cfg = parse_config({"target": [{"name": "cache", "command": ["/usr/bin/redis-cli", "ping"],
                                    "env_file": "/etc/prober/redis.env", "unit": "redis"}]})
    state = TargetState(health=Health.HEALTHY, since=NOW - HOUR, consecutive_passes=7,
                        last_checked_at=NOW, last_ok=False, last_reason=FAULT_REASON,
                        last_failure=FailureClass.PROBER_FAULT.value)
    result = ProbeResult("cache", False, FAULT_REASON, FailureClass.PROBER_FAULT, latency=0.0001)
    item = _item(cfg, "cache", state, Action.PROBER_FAULT,
                 f"prober's own fault, not the target's: {FAULT_REASON}; no failure counted, "
                 "nothing restarted", result)
    report = RunReport(targets=(item,), started_at=NOW, duration=0.01)
    if not with_report:
        return Snapshot(cfg, State(targets={"cache": state}, updated_at=NOW), None, NOW + 0.01)
    return Snapshot.after_run(cfg, report, NOW + 0.01)
