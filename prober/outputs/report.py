"""How runs and stored state are shown: a table for humans, JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from prober.core.actuator import restarted_as
from prober.core.config import Config
from prober.core.keys import format_duration
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
from prober.core.text import clip, redact_url, utc
from prober.core.tracker import State, transition_json
from prober.core.view import TargetView, run_views, views


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _health_cell(view: TargetView) -> str:
    failures = view.state.consecutive_failures
    if failures:
        return f"{view.health.value} {failures}/{view.target.policy.failure_threshold}"
    return view.health.value


def _latency(view: TargetView) -> str:
    latency = None if view.item is None else view.item.result.latency_ms
    return "" if latency is None else f" in {latency:g} ms"


def cause_then_did(view: TargetView) -> str:
    """The probe's reason first, then what prober did or could not do: the action follows
    its cause instead of replacing it. A pause or a notice stands where nothing was done."""
    cause = view.cause or ""
    if view.did is None:
        after = _paused(view) or view.notice
    else:
        after = view.did
        if cause and cause in after:
            return after  # a prober fault's action already quotes the probe's reason
    if view.status is Status.OK and view.did is None:
        cause += _latency(view)
    return "; ".join(filter(None, (cause, after))) or "-"


def _paused(view: TargetView) -> str | None:
    if view.pause is None:
        return None
    why = f": {view.pause.reason}" if view.pause.reason else ""
    return f"paused until {when(view.pause.until)}{why}"


def run_text(report: RunReport) -> str:
    rows = [("TARGET", "HEALTH", "DETAIL")]
    for view in run_views(report):
        rows.append((view.target.name, _health_cell(view), cause_then_did(view)))
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
        **restarted_as(item.target),
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
        **restarted_as(target),
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
        "journal": view.journal,
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
    extra = [f"{key} {name}" for key, name in restarted_as(view.target).items() if name]
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
    if view.journal is not None:
        lines.append(f"  its journal: {view.journal}")
    for h in entries:
        lines.append(f"  {when(h.at)}  {h.event.value:<14} {h.reason}")
        if h.top_memory:
            lines.append(f"  {'':<23}  {'':<14} largest memory users then: "
                         f"{describe_users(h.top_memory)}")
    return lines


# --- Nagios / Icinga --------------------------------------------------------------------------


def _perf_label(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


NAGIOS_TEXT_MAX = 200  # characters before the perfdata: what a monitoring screen shows
NAGIOS_PROBLEM_MAX = 80


def run_nagios(report: RunReport) -> str:
    """One status line and perfdata: `PROBER CRITICAL - ... | 'web'=0.012s;;5;0`."""
    shown = run_views(report)
    head = f"PROBER {report.status.value.upper()} - "
    problems = [clip(_nagios_problem(v), NAGIOS_PROBLEM_MAX)
                for v in shown if v.status is not Status.OK]
    healthy = [v.target.name for v in shown if v.status is Status.OK]
    text = _nagios_text(problems, healthy, NAGIOS_TEXT_MAX - len(head))
    perf = []
    for item in report.targets:
        latency = item.result.latency if item.result.latency is not None else 0.0
        max_latency = item.target.policy.max_latency
        warn = "" if max_latency is None else f"{max_latency:g}"
        perf.append(f"{_perf_label(item.target.name)}={latency:.6f}s;{warn};"
                    f"{item.target.policy.timeout:g};0")
    line = f"{head}{text}".replace("|", "/")
    return f"{line} | {' '.join(perf)}"


def _nagios_text(problems: Sequence[str], healthy: Sequence[str], room: int) -> str:
    """The problems that fit in `room`, then `+N more`, then the healthy ones by name when
    they fit, else by count."""
    if not problems:
        return f"{len(healthy)} targets ok"
    ok = f"ok: {', '.join(healthy)}" if healthy else ""
    if ok and len(ok) > room // 4:
        ok = f"{len(healthy)} ok"
    kept: list[str] = []
    for n, problem in enumerate(problems):
        left = len(problems) - n - 1
        tail = [f"+{left} more"] if left else []
        if kept and len("; ".join([*kept, problem, *tail, ok])) > room:
            return "; ".join(filter(None, [*kept, f"+{len(problems) - n} more", ok]))
        kept.append(problem)
    return "; ".join(filter(None, [*kept, ok]))


def _nagios_problem(view: TargetView) -> str:
    name = view.target.name
    if view.pause is not None:
        return f"{name} {_paused(view)}"
    if view.notice and view.status is Status.WARNING and not view.health.is_failing \
            and not view.prober_fault:
        return f"{name} {view.notice}"
    action = "" if view.item is None or view.did is None else \
        f" ({view.item.decision.action.value})"
    return f"{name} {_health_cell(view)}{action}: {view.cause or '-'}"
