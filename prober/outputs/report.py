"""How runs and stored state are shown: a table for humans, JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from prober.core.config import Config
from prober.core.keys import format_duration
from prober.core.policy import Action
from prober.core.psi import describe_users
from prober.core.results import ProbeResult
from prober.core.runs import (
    RunReport,
    Snapshot,
    Status,
    TargetReport,
    remembered,
    remembered_status,
    stale_after,
    too_old,
)
from prober.core.text import redact_url, utc
from prober.core.tracker import State, transition_json
from prober.core.view import TargetView, run_views, views


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _health_cell(item: TargetReport) -> str:
    failures = item.state.consecutive_failures
    if failures:
        return f"{item.health.value} {failures}/{item.target.policy.failure_threshold}"
    return item.health.value


def _detail(item: TargetReport) -> str:
    result = item.result
    if result.ok and not item.outcome:
        latency = "" if result.latency_ms is None else f" in {result.latency_ms:g} ms"
        return f"{result.reason}{latency}" + (f"; {item.notice}" if item.notice else "")
    detail = item.decision.reason if item.decision.reason != result.reason else result.reason
    if item.outcome:
        detail = f"{detail}; {item.outcome}"
    return detail


def run_text(report: RunReport) -> str:
    rows = [("TARGET", "HEALTH", "ACTION", "DETAIL")]
    for item in report.targets:
        rows.append((item.target.name, _health_cell(item), item.decision.action.value,
                     _detail(item)))
    summary = run_summary(report)
    if report.dry_run:
        summary += " (dry run: nothing was restarted)"
    if report.pressure is not None and (report.pressure.some_avg10 > 0 or
                                        report.status is not Status.OK):
        summary += f"\n{report.pressure.describe()}"
    if report.top_memory:
        summary += f"\nlargest memory users: {describe_users(report.top_memory)}"
    return _table(rows) + "\n" + summary


def run_summary(report: RunReport) -> str:
    """One line: `CRITICAL: 1 critical, 2 ok of 3 targets in 2.01s`."""
    return f"{report.status.value.upper()}: {_summary(report)}"


def _summary(report: RunReport) -> str:
    counts: dict[str, int] = {}
    for item in report.targets:
        counts[item.status.value] = counts.get(item.status.value, 0) + 1
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    return ", ".join(parts) + f" of {len(report.targets)} targets in {report.duration:.2f}s"


def run_json(report: RunReport) -> dict[str, Any]:
    return {
        "status": report.status.value,
        "dry_run": report.dry_run,
        "duration_ms": round(report.duration * 1000, 1),
        "targets": [_target_json(item, view)
                    for item, view in zip(report.targets, run_views(report), strict=True)],
        "memory_pressure": None if report.pressure is None else {
            "some_avg10": report.pressure.some_avg10, "some_avg60": report.pressure.some_avg60,
            "full_avg10": report.pressure.full_avg10, "full_avg60": report.pressure.full_avg60,
        },
        "top_memory": [{"name": u.name, "bytes": u.bytes} for u in report.top_memory],
    }


def _target_json(item: TargetReport, view: TargetView) -> dict[str, Any]:
    result = item.result
    return {
        "name": item.target.name,
        "ok": result.ok,
        "reason": result.reason,
        "failure": None if result.failure is None else result.failure.value,
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "consecutive_failures": item.state.consecutive_failures,
        "health": item.health.value,
        "unit": item.target.unit,
        "action": item.decision.action.value,
        "action_reason": item.decision.reason,
        "outcome": item.outcome,
        "status": view.status.value,
        "endpoint": redact_url(item.target.endpoint),
        "kind": item.target.kind.name,
        "cert_not_after": None if result.certificate is None else
        result.certificate.not_after,
        "notice": view.notice,
        "paused_until": None if view.pause is None else view.pause.until,
        "paused_reason": None if view.pause is None else view.pause.reason,
    }


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2)


def probe_text(result: ProbeResult, endpoint: str, notice: str | None = None) -> str:
    verdict = "OK" if result.ok else f"FAIL ({result.failure})"
    if result.ok and notice:
        verdict = "WARNING"
    latency = "" if result.latency_ms is None else f" in {result.latency_ms:g} ms"
    said = f"; {notice}" if notice else ""
    return f"{verdict}: {redact_url(endpoint)}: {result.reason}{latency}{said}"


def probe_json(result: ProbeResult, endpoint: str, notice: str | None = None
               ) -> dict[str, Any]:
    return {
        "endpoint": redact_url(endpoint),
        "ok": result.ok,
        "reason": result.reason,
        "failure": None if result.failure is None else result.failure.value,
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "attempts": result.attempts,
        "notice": notice,
    }


# --- stored state -------------------------------------------------------------------------


def when(at: float | None) -> str:
    if at is None:
        return "-"
    return utc(at)


def _ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{format_duration(max(0.0, round(now - at)))} ago"


def status_json(config: Config, state: State, now: float, history: int = 10) -> dict[str, Any]:
    """`prober status --json`, and `/status.json`: what the last run left, as remembered."""
    snapshot = Snapshot(config, state, None, now)
    return {"status": remembered(config, state, now).value, "updated_at": state.updated_at,
            "too_old": too_old(config, state.updated_at, now),
            "targets": [_view_json(view, history) for view in views(snapshot)]}


def _view_json(view: TargetView, history: int) -> dict[str, Any]:
    target, t = view.target, view.state
    return {
        "name": target.name,
        "unit": target.unit,
        "endpoint": redact_url(target.endpoint),
        "status": view.status.value,
        "health": t.health.value,
        "paused": view.paused,
        "notice": view.notice,
        "since": view.since,
        "last_checked_at": t.last_checked_at,
        "last_ok": t.last_ok,
        "last_reason": t.last_reason,
        "consecutive_failures": t.consecutive_failures,
        "consecutive_passes": t.consecutive_passes,
        "restarts_in_window": view.budget.used,
        "restarts_total": t.restarts_total,
        "last_restart_at": t.last_restart_at,
        "next_restart_allowed_at": view.next_restart_at,
        "given_up": view.given_up,
        "given_up_reason": view.given_up_reason if t.given_up_reason else None,
        "paused_until": None if view.pause is None else view.pause.until,
        "paused_reason": None if view.pause is None else view.pause.reason,
        "prober_fault": view.prober_fault,
        "history": [transition_json(h) for h in t.history[-history:]],
    }


def unknown_reason(config: Config, state: State, now: float) -> str | None:
    """Why `prober status` is unknown (exit 3), in one line; None when it is not."""
    if remembered(config, state, now) is not Status.UNKNOWN:
        return None
    if state.updated_at is None:
        return "no run recorded yet (hint: is prober.timer or prober-watch running?)"
    if too_old(config, state.updated_at, now):
        return (f"the last run was {_ago(state.updated_at, now)}, more than "
                f"{format_duration(stale_after(config))}: too old to trust (hint: is "
                "prober.timer or prober-watch running?)")
    names = [t.name for t in config.targets
             if remembered_status(state.get(t.name), now) is Status.UNKNOWN]
    return f"not judged by a run since added or reset: {', '.join(names)}"


def status_text(config: Config, state: State, now: float, history: int = 5) -> str:
    shown = views(Snapshot(config, state, None, now))
    rows = [("TARGET", "HEALTH", "SINCE", "RESTARTS", "LAST RESULT")]
    for view in shown:
        health = ("paused" if view.paused else view.health.value) + \
            (" (given up)" if view.given_up else "") + \
            (" (prober fault)" if view.prober_fault else "")
        restarts = f"{view.budget.used}/{view.budget.allowed}"
        last = "; ".join(filter(None, (view.cause, view.notice))) or "-"
        rows.append((view.target.name, health, _ago(view.since, now), restarts, last))
    lines = [_table(rows)]
    if state.updated_at is not None:
        lines.append(f"last run: {when(state.updated_at)} ({_ago(state.updated_at, now)})")
    else:
        lines.append("no run recorded yet")
    for view in shown:
        lines.extend(_status_details(view, history))
    return "\n".join(lines)


def _status_details(view: TargetView, history: int) -> list[str]:
    extra = []
    if view.target.unit:
        extra.append(f"unit {view.target.unit}")
    if view.next_restart_at is not None:
        extra.append(f"next restart allowed at {when(view.next_restart_at)}")
    if view.given_up_reason is not None:
        extra.append(view.given_up_reason)
    if view.pause is not None:
        why = f": {view.pause.reason}" if view.pause.reason else ""
        extra.append(f"paused until {when(view.pause.until)}{why}")
    entries = view.state.history[-history:]
    if not view.state.history and not extra:
        return []
    name = view.target.name
    lines = [f"\n{name}: " + "; ".join(extra) if extra else f"\n{name}:"]
    for h in entries:
        lines.append(f"  {when(h.at)}  {h.event.value:<14} {h.reason}")
        if h.top_memory:
            lines.append(f"  {'':<23}  {'':<14} largest memory users then: "
                         f"{describe_users(h.top_memory)}")
    return lines


# --- Nagios / Icinga --------------------------------------------------------------------------


def _perf_label(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def run_nagios(report: RunReport) -> str:
    """One status line and perfdata: `PROBER CRITICAL - ... | 'web'=0.012s;;5;0`."""
    problems = [_nagios_problem(i) for i in report.targets if i.status is not Status.OK]
    healthy = [i.target.name for i in report.targets if i.status is Status.OK]
    text = "; ".join(problems) if problems else f"{len(healthy)} targets ok"
    if problems and healthy:
        text += f"; ok: {', '.join(healthy)}"
    perf = []
    for item in report.targets:
        latency = item.result.latency if item.result.latency is not None else 0.0
        max_latency = item.target.policy.max_latency
        warn = "" if max_latency is None else f"{max_latency:g}"
        perf.append(f"{_perf_label(item.target.name)}={latency:.6f}s;{warn};"
                    f"{item.target.policy.timeout:g};0")
    line = f"PROBER {report.status.value.upper()} - {text}".replace("|", "/")
    return f"{line} | {' '.join(perf)}"


def _nagios_problem(item: TargetReport) -> str:
    if item.decision.action is Action.PAUSED:
        return f"{item.target.name} {item.decision.reason}"
    if item.notice and item.result.ok:
        return f"{item.target.name} {item.notice}"
    return (f"{item.target.name} {item.health.value} ({item.decision.action.value}: "
            f"{item.decision.reason})")
