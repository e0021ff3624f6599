"""The status page: one server-rendered HTML document from a `Snapshot`.

No JavaScript and no external assets (the CSS is inline, the timelines are inline SVG), so that
it reads the same in any browser, with scripts off, behind any proxy. Everything printed is
escaped, and nothing secret is: endpoints come from `Target.endpoint` (passwords as ***),
header and environment values are never read here. Targets are shown worst first; each has its
health and since when, its last result, its restarts, its pause or why it was given up, and a
timeline of the last 24 hours drawn from its history.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import parse_qsl

from prober.core.actuator import restarted_as
from prober.core.policy import starves
from prober.core.psi import describe_users
from prober.core.record import RANGES, transitions
from prober.core.runs import (
    ConfigReload,
    RunReport,
    Snapshot,
    Status,
    pressure_threshold,
    worst,
)
from prober.core.text import redact_url, utc
from prober.core.tracker import Event, Health, TargetState, Transition
from prober.core.view import TargetView, views

__all__ = ["RANGES", "WINDOW", "render", "window_of"]

WINDOW = RANGES["24h"]  # the timelines' span, ending now, unless the query asks for another
_REFRESH_BOUNDS = (5, 60)  # seconds between reloads: the interval, within these

# The timeline's drawing, in SVG user units.
_WIDTH, _LEFT, _RIGHT = 960.0, 8.0, 8.0
_TRACK_Y, _TRACK_H, _PAUSE_Y, _PAUSE_H = 14.0, 12.0, 4.0, 6.0
_HEIGHT = 44.0
_BUCKET = 4.0  # marks of one kind closer than this are drawn as one


# --- words and times ---------------------------------------------------------------------


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _clock(at: float, now: float) -> str:
    """`04:12 UTC` within the day around `now`, else with the date."""
    if abs(now - at) < 20 * 3600:
        return utc(at, "%H:%M:%S UTC") if abs(now - at) < 600 else utc(at, "%H:%M UTC")
    return utc(at, "%Y-%m-%d %H:%M UTC")


def _span(seconds: float) -> str:
    """A rough duration for people: `8 s`, `41 min`, `3 h 5 min`, `2 d 4 h`."""
    whole = max(0, round(seconds))
    if whole < 90:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _relative(at: float, now: float) -> str:
    return f"in {_span(at - now)}" if at > now else f"{_span(now - at)} ago"


def _when(at: float, now: float) -> str:
    return f"{_clock(at, now)} ({_relative(at, now)})"


# --- one target --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Card:
    """One target as the page shows it: its view, its badge, its place (worst first)."""

    view: TargetView
    badge: str
    rank: int


def _badge(view: TargetView) -> str:
    state = view.state
    if view.paused:
        return "paused"
    if view.prober_fault:
        return "prober fault"
    if view.given_up:
        return "given up"
    if state.health is Health.DOWN:
        return "down"
    if state.health is Health.FAILING:
        return f"failing {state.consecutive_failures}/{view.target.policy.failure_threshold}"
    if state.health is Health.RECOVERING:
        return "recovering"
    if state.health is Health.UNKNOWN:
        return "not probed yet"
    return "ok" if view.status is Status.OK else view.status.value


_RANK = {Status.CRITICAL: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.OK: 4}


def _cards(snapshot: Snapshot) -> list[_Card]:
    cards = [_Card(view, _badge(view),
                   3 if view.paused and view.status is not Status.CRITICAL else
                   _RANK[view.status])
             for view in views(snapshot)]
    ranked = sorted(cards, key=lambda card: card.rank)  # stable: config order within a rank
    return _causes_first(ranked)


def _causes_first(cards: Sequence[_Card]) -> list[_Card]:
    """Each failing target whose dependency fails too right under that dependency: the root
    cause above what it broke."""
    failing = {card.view.target.name for card in cards if card.view.health.is_failing}
    under: dict[str, list[_Card]] = {}
    for card in cards:
        cause = _failing_dependency(card.view, failing)
        if cause is not None:
            under.setdefault(cause, []).append(card)
    placed = {id(card) for below in under.values() for card in below}
    ordered: list[_Card] = []

    def place(card: _Card) -> None:
        ordered.append(card)
        for below in under.get(card.view.target.name, []):
            place(below)

    for card in cards:
        if id(card) not in placed:
            place(card)
    return ordered


def _failing_dependency(view: TargetView, failing: set[str]) -> str | None:
    if not view.health.is_failing:
        return None
    return next((name for name in view.target.depends_on if name in failing), None)


def next_step(view: TargetView, reload: ConfigReload | None) -> str | None:
    """What to do first about a failing target: read its unit's journal from the start of
    the outage, unless restarts cannot happen at all because the config does not load."""
    if not view.health.is_failing or view.paused:
        return None
    if reload is not None and not reload.successful:
        return "restarts are not possible: the config does not load"
    container = restarted_as(view.target).get("container")
    began = view.down_since or view.since
    if container and began is not None:
        return f'docker logs --since "{utc(began, "%Y-%m-%dT%H:%M:%SZ")}" {container}'
    return view.journal


def _health_line(view: TargetView, now: float) -> str:
    state = view.state
    if state.health is Health.UNKNOWN:
        return "not probed yet"
    since = "" if state.since is None else f" since {_when(state.since, now)}"
    text = f"{state.health.value}{since}"
    if state.down_since is not None and state.health is not Health.DOWN:
        text += f"; down since {_when(state.down_since, now)}"
    if view.paused and state.last_ok is False:
        text += "; failures while paused do not count"
    return text


def _result_line(view: TargetView, now: float) -> str:
    state = view.state
    if state.last_checked_at is None:
        return "no result yet"
    verdict = "passed" if state.last_ok else "failed"
    failure = f" ({state.last_failure})" if state.last_failure and not state.last_ok else ""
    latency = "" if state.last_latency_ms is None else f" in {state.last_latency_ms:g} ms"
    return (f"{verdict}{failure}{latency}, {_relative(state.last_checked_at, now)}: "
            f"{view.cause or '-'}")


def _restart_line(view: TargetView, now: float) -> str:
    target, state, budget = view.target, view.state, view.budget
    if target.unit is None:
        return "monitored only: no unit to restart"
    text = (f"{budget.used} of {budget.allowed} in the last {_span(budget.window)}, "
            f"{state.restarts_total} in all")
    if state.last_restart_at is not None:
        text += f"; last {_when(state.last_restart_at, now)}"
    if view.next_restart_at is not None:
        text += f"; next allowed {_when(view.next_restart_at, now)}"
    return text


def _facts(view: TargetView, now: float, reload: ConfigReload | None
           ) -> list[tuple[str, str, str]]:
    """(label, text, css class) lines of a target's card."""
    lines = [("health", _health_line(view, now), ""),
             ("last result", _result_line(view, now), "")]
    if view.did:
        lines.append(("this run", view.did, "flag-critical" if view.status is Status.CRITICAL
                      else ""))
    step = next_step(view, reload)
    if step is not None:
        lines.append(("next step", step, "next-step"))
    if view.culprit:
        lines.append(("memory", f"largest users then: {describe_users(view.culprit)}",
                      "flag-warning"))
    if view.pause is not None:
        why = view.pause.reason or "no reason given"
        lines.append(("paused", f"until {_when(view.pause.until, now)}: {why}", "flag-paused"))
    if view.given_up_reason is not None:
        lines.append(("given up", view.given_up_reason, "flag-critical"))
    if view.notice:
        lines.append(("notice", view.notice, "flag-warning"))
    lines.append(("restarts", _restart_line(view, now), ""))
    return lines


def window_of(query: str) -> float:
    """The span `?range=1h|24h|7d` asks for; WINDOW for anything else, however hostile."""
    try:
        fields = parse_qsl(query[:200], max_num_fields=4)
    except ValueError:
        return WINDOW
    return next((RANGES[v] for k, v in fields if k == "range" and v in RANGES), WINDOW)


def _ranges(window: float) -> str:
    current = ' aria-current="page"'
    links = "".join(f' <a href="?range={name}"{current if span == window else ""}>{name}</a>'
                    for name, span in RANGES.items())
    return f'<nav id="range">Timelines:{links}</nav>'


def _card_html(card: _Card, now: float, reload: ConfigReload | None,
               window: float = WINDOW, history: Sequence[Transition] | None = None) -> str:
    view = card.view
    target = view.target
    unit = _e(target.unit) if target.unit else "monitor only"
    facts = "".join(
        f'<div class="fact {css}"><dt>{_e(label)}</dt><dd>{_e(text)}</dd></div>'
        for label, text, css in _facts(view, now, reload))
    return (
        f'<section class="target s-{view.status.value}{" paused" if view.paused else ""}" '
        f'id="target-{_e(target.name)}" data-target="{_e(target.name)}" '
        f'data-status="{view.status.value}" data-health="{view.health.value}" '
        f'data-paused="{str(view.paused).lower()}" '
        f'data-given-up="{str(view.given_up).lower()}">'
        f'<h2><span class="badge">{_e(card.badge)}</span> '
        f'<span class="name">{_e(target.name)}</span> '
        f'<span class="unit">{unit}</span></h2>'
        f'<p class="endpoint">{_e(target.kind.name)} '
        f"<code>{_e(redact_url(target.endpoint))}</code></p>"
        f"<dl>{facts}</dl>"
        f"{timeline_svg(target.name, view.state, now, window, history)}"
        "</section>"
    )


# --- the timeline ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Band:
    kind: str  # failing, down, paused
    start: float
    end: float
    reason: str  # of the transition that opened it
    count: int = 1  # periods drawn as this one

    def title(self, now: float) -> str:
        periods = f" ({self.count} periods)" if self.count > 1 else ""
        return (f"{self.kind} from {_clock(self.start, now)} for {_span(self.end - self.start)}"
                f"{periods}: {self.reason}")


_TROUBLE_ENDS = (Event.RECOVERED, Event.RESET)
_MARKED = (Event.FAILING, Event.DOWN, Event.HELD, Event.RESTART, Event.RESTART_FAILED,
           Event.GIVEN_UP, Event.RECOVERED, Event.PAUSED, Event.RESUMED, Event.RESET)


def _bands(history: Sequence[Transition], state: TargetState, now: float) -> list[_Band]:
    """Failing, down and paused periods from a history (a period still open ends now)."""
    bands: list[_Band] = []
    trouble: Transition | None = None  # the failing/down transition that opened a period
    pause: Transition | None = None

    def close_trouble(end: float) -> None:
        assert trouble is not None
        bands.append(_Band(trouble.event.value, trouble.at, end, trouble.reason))

    for entry in history:
        if entry.event in (Event.FAILING, Event.DOWN):
            if trouble is not None:
                close_trouble(entry.at)
            trouble = entry
        elif entry.event in _TROUBLE_ENDS and trouble is not None:
            close_trouble(entry.at)
            trouble = None
        if entry.event is Event.PAUSED:
            pause = entry
        elif entry.event in (Event.RESUMED, Event.RESET) and pause is not None:
            bands.append(_Band("paused", pause.at, entry.at, pause.reason))
            pause = None
    if trouble is not None:  # still failing, or passing again and not yet recovered
        passing_since = state.since if state.since is not None else trouble.at
        close_trouble(now if state.health.is_failing else max(passing_since, trouble.at))
    if pause is not None:
        until = state.paused_until if state.paused_until is not None else pause.at
        bands.append(_Band("paused", pause.at, min(until, now), pause.reason))
    return bands


def _x(at: float, start: float, window: float = WINDOW) -> float:
    share = min(max((at - start) / window, 0.0), 1.0)
    return round(_LEFT + share * (_WIDTH - _LEFT - _RIGHT), 1)


def _mark_shape(event: Event, x: float) -> str:
    mid, top, bottom = _TRACK_Y + _TRACK_H / 2, _TRACK_Y - 2, _TRACK_Y + _TRACK_H + 2
    if event is Event.RESTART:
        return f'<path d="M{x - 5} {top - 4}h10l-5 8z" class="m-restart"/>' \
               f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" class="m-restart"/>'
    if event is Event.RESTART_FAILED:
        return (f'<path d="M{x - 4} {mid - 4}l8 8M{x + 4} {mid - 4}l-8 8" '
                'class="m-restart-failed"/>')
    if event is Event.HELD:
        return f'<path d="M{x} {mid - 6}l5 6l-5 6l-5 -6z" class="m-held"/>'
    if event is Event.RECOVERED:
        return f'<circle cx="{x}" cy="{mid}" r="4" class="m-recovered"/>'
    if event is Event.GIVEN_UP:
        return f'<rect x="{x - 4}" y="{mid - 4}" width="8" height="8" class="m-given-up"/>'
    css = {Event.DOWN: "m-down", Event.FAILING: "m-failing"}.get(event, "m-other")
    return f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" class="{css}"/>'


def _tick(seconds: float) -> str:
    """`6h`, `15m`, `42h`, `7d`: how long before now a tick is."""
    for suffix, size in (("d", 86400 * 7), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{round(seconds / (86400 if suffix == 'd' else size))}{suffix}"
    return f"{round(seconds / 3600, 1):g}h"


def timeline_svg(name: str, state: TargetState, now: float, window: float = WINDOW,
                 history: Sequence[Transition] | None = None) -> str:
    """The last `window` of one target as inline SVG: failing/down and paused periods as bands,
    each event of its history (the state's, or the record's when given) as a mark with a
    <title> (time, event, reason)."""
    start = now - window
    events = state.history if history is None else history
    label = _tick(window)
    parts = [f'<svg class="timeline" viewBox="0 0 {_WIDTH:g} {_HEIGHT:g}" role="img" '
             f'aria-label="{_e(name)}: the last {label}" data-window="{label}" '
             'xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{_LEFT:g}" y="{_TRACK_Y:g}" width="{_WIDTH - _LEFT - _RIGHT:g}" '
             f'height="{_TRACK_H:g}" class="track"/>']
    for quarter in (1, 2, 3):
        x = _x(start + window * quarter / 4, start, window)
        parts.append(f'<line x1="{x}" y1="{_PAUSE_Y:g}" x2="{x}" y2="{_TRACK_Y + _TRACK_H:g}" '
                     'class="grid"/>')
        parts.append(f'<text x="{x}" y="{_HEIGHT - 3:g}" class="tick">'
                     f"&#8722;{_tick(window * (4 - quarter) / 4)}</text>")
    parts.append(f'<text x="{_LEFT:g}" y="{_HEIGHT - 3:g}" class="tick start">&#8722;{label}'
                 "</text>")
    parts.append(f'<text x="{_WIDTH - _RIGHT:g}" y="{_HEIGHT - 3:g}" class="tick end">now</text>')
    for band in _merged(_bands(events, state, now), start, now, window):
        x1, x2 = _x(band.start, start, window), _x(band.end, start, window)
        y, height = (_PAUSE_Y, _PAUSE_H) if band.kind == "paused" else (_TRACK_Y, _TRACK_H)
        parts.append(f'<rect x="{x1}" y="{y:g}" width="{max(x2 - x1, 1.5):g}" '
                     f'height="{height:g}" class="band b-{band.kind}" data-band="{band.kind}">'
                     f"<title>{_e(band.title(now))}</title></rect>")
    for group in _grouped(events, start, now, window):
        first, last = group[0], group[-1]
        when = _clock(first.at, now) if len(group) == 1 else \
            f"{_clock(first.at, now)} to {_clock(last.at, now)}, {len(group)} times"
        title = f"{when} {first.event.value}: {last.reason}"
        parts.append(f'<g class="mark" data-event="{first.event.value}" '
                     f'data-count="{len(group)}"><title>{_e(title)}</title>'
                     f"{_mark_shape(first.event, _x(last.at, start, window))}</g>")
    parts.append("</svg>")
    return "".join(parts)


def _bucket(at: float, start: float, window: float) -> int:
    return int(_x(at, start, window) // _BUCKET)


def _grouped(history: Sequence[Transition], start: float, now: float, window: float
             ) -> list[list[Transition]]:
    """The window's events to mark, those of one kind close together (a flapping target's)
    as one group, so that a timeline stays readable and its size bounded."""
    groups: dict[tuple[Event, int], list[Transition]] = {}
    for entry in history:
        if entry.event in _MARKED and start <= entry.at <= now:
            groups.setdefault((entry.event, _bucket(entry.at, start, window)), []).append(entry)
    return sorted(groups.values(), key=lambda group: group[0].at)


def _merged(bands: Iterable[_Band], start: float, now: float, window: float) -> list[_Band]:
    """The window's bands, those of one kind that nearly touch drawn as one."""
    out: list[_Band] = []
    for band in sorted((b for b in bands if b.end >= start and b.start <= now),
                       key=lambda b: (b.kind, b.start)):
        last = out[-1] if out else None
        if last is not None and last.kind == band.kind and \
                _x(band.start, start, window) - _x(last.end, start, window) < _BUCKET:
            out[-1] = _Band(last.kind, last.start, max(last.end, band.end), band.reason,
                            last.count + band.count)
        else:
            out.append(band)
    return sorted(out, key=lambda b: b.start)


def _legend() -> str:
    swatches = [
        ('<rect x="1" y="3" width="16" height="10" class="band b-failing"/>', "failing"),
        ('<rect x="1" y="3" width="16" height="10" class="band b-down"/>', "down"),
        ('<rect x="1" y="5" width="16" height="6" class="band b-paused"/>', "paused"),
        ('<path d="M4 1h10l-5 8z" class="m-restart"/>', "restart"),
        ('<path d="M5 4l8 8M13 4l-8 8" class="m-restart-failed"/>', "restart failed"),
        ('<path d="M9 2l5 6l-5 6l-5 -6z" class="m-held"/>', "restart held (memory pressure)"),
        ('<circle cx="9" cy="8" r="4" class="m-recovered"/>', "recovered"),
        ('<rect x="5" y="4" width="8" height="8" class="m-given-up"/>', "given up"),
    ]
    items = "".join(f'<li><svg viewBox="0 0 18 16" width="18" height="16" aria-hidden="true">'
                    f"{shape}</svg> {_e(label)}</li>" for shape, label in swatches)
    return f'<ul class="legend">{items}</ul>'


# --- the page ----------------------------------------------------------------------------


def _last_run(snapshot: Snapshot) -> tuple[str, bool]:
    """The line about the last run, and whether runs have stopped coming."""
    report, now, config = snapshot.report, snapshot.now, snapshot.config
    ended = report.ended_at if report is not None else snapshot.state.updated_at
    if ended is None:
        return "no run recorded yet", False
    stale = now - ended > 3 * config.interval + config.run_deadline
    text = f"last run {_when(ended, now)}"
    if report is None:
        text += ", before this watcher started; its first run is due"
    else:
        text += f", took {report.duration:.2f} s"
        if report.dry_run:
            text += " (dry run: nothing was restarted)"
    if stale:
        text = f"STALE: no run for {_span(now - ended)}; " + text
    return text, stale


def _pressure_line(snapshot: Snapshot) -> tuple[str, bool]:
    """The memory pressure line, and whether it is at or over the threshold."""
    report = snapshot.report
    threshold = pressure_threshold(snapshot.config)
    if report is None:
        return "memory pressure: read by the first run", False
    if report.pressure is None:
        return "memory pressure: not available (this kernel has no PSI)", False
    pressure = report.pressure
    high = starves(pressure, threshold)
    limit = f"threshold {threshold:g}%" if threshold else "no threshold"
    return (f"memory pressure now: some {pressure.some_avg10:.1f}%, full "
            f"{pressure.full_avg10:.1f}% of the last 10 s ({limit})"), high


def _memory_users(snapshot: Snapshot) -> str:
    report = snapshot.report
    if report is None or not report.top_memory:
        return ""
    return (f'<p id="memory-users" class="flag-warning">largest memory users: '
            f"{_e(describe_users(report.top_memory))}</p>")


def _reload_banner(snapshot: Snapshot) -> str:
    reload, now = snapshot.reload, snapshot.now
    if reload is None or reload.successful:
        return ""
    return (f'<p id="reload" class="flag-critical">the config reload was rejected: '
            f"{_e(reload.error or 'no reason given')}; running the config loaded "
            f"{_e(_when(reload.last_success_at, now))}</p>")


def _counts(cards: Iterable[_Card]) -> str:
    counts: dict[str, int] = {}
    for card in cards:
        key = "paused" if card.view.paused else card.badge if card.badge in (
            "down", "given up", "prober fault") else card.view.status.value
        counts[key] = counts.get(key, 0) + 1
    order = ["down", "given up", "prober fault", "critical", "unknown", "warning", "paused",
             "ok"]
    return ", ".join(f"{counts[k]} {k}" for k in order if k in counts)


def _overall(report: RunReport | None, cards: Sequence[_Card]) -> Status:
    if report is not None:
        return report.status
    return worst([card.view.status for card in cards]) if cards else Status.UNKNOWN


def render(snapshot: Snapshot, *, hostname: str | None = None, window: float = WINDOW) -> str:
    """The whole status page for `snapshot`, as one HTML document, its timelines `window`
    long, drawn from the outage record when the snapshot has one (else from the state)."""
    host = socket.gethostname() if hostname is None else hostname
    now = snapshot.now
    cards = _cards(snapshot)
    status = _overall(snapshot.report, cards)
    last_run, stale = _last_run(snapshot)
    pressure, high = _pressure_line(snapshot)
    refresh = min(max(round(snapshot.config.interval), _REFRESH_BOUNDS[0]), _REFRESH_BOUNDS[1])
    state_error = "" if snapshot.report is None or snapshot.report.state_error is None else \
        f'<p class="flag-critical" id="state-error">{_e(snapshot.report.state_error)}</p>'
    headline = status.value.upper()
    entries = None if snapshot.record is None else snapshot.record()
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{refresh}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{_e(headline)} - prober on {_e(host)}</title>"
        f"<style>{_CSS}</style></head>"
        f'<body><header class="s-{status.value}" id="overall" data-status="{status.value}">'
        f'<h1><span class="badge">{_e(headline)}</span> prober on {_e(host)}</h1>'
        f'<p id="counts">{_e(_counts(cards))} of {len(cards)} targets</p>'
        f'<p id="last-run" class="{"flag-critical" if stale else ""}">{_e(last_run)}</p>'
        f'<p id="pressure" class="{"flag-warning" if high else ""}">{_e(pressure)}</p>'
        f"{state_error}{_memory_users(snapshot)}{_reload_banner(snapshot)}</header><main>"
        + _ranges(window)
        + "".join(_card_html(card, now, snapshot.reload, window,
                             None if entries is None else transitions(entries,
                                                                      card.view.target.name))
                  for card in cards)
        + f"</main><footer>{_legend()}<p>Times in UTC; rendered {_e(_clock(now, now))}; "
        f"reloads every {refresh} s. Also: <a href=\"status.json\">status.json</a>, "
        '<a href="metrics">metrics</a>.</p></footer></body></html>\n'
    )


_CSS = """
:root{--bg:#f6f7f9;--fg:#1c1f24;--muted:#5b6470;--card:#fff;--line:#d9dde3;
--crit:#c62828;--warn:#b26a00;--ok:#2e7d32;--pause:#3558a8;--unknown:#6b7280;
--track:#e7eaee;--fail-band:#f0b429;--down-band:#d64545;--pause-band:#8aa4e0}
@media (prefers-color-scheme:dark){:root{--bg:#121417;--fg:#e6e8eb;--muted:#9aa3ad;
--card:#1b1e23;--line:#2c3139;--track:#2a2f36;--crit:#ef5350;--warn:#f0a020;
--ok:#66bb6a;--pause:#7f9cf5;--unknown:#9aa3ad}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main,footer{max-width:1240px;margin:0 auto;padding:0 16px}
header{max-width:1208px;margin:12px auto 0;padding:12px 16px;background:var(--card);
border:1px solid var(--line);border-left:8px solid var(--unknown);border-radius:6px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0}
.badge{display:inline-block;padding:1px 8px;border-radius:4px;color:#fff;font-weight:700;
text-transform:uppercase;font-size:.8em;letter-spacing:.03em;vertical-align:2px;
background:var(--unknown)}
.s-critical>h1 .badge,.s-critical>h2 .badge{background:var(--crit)}
.s-warning>h1 .badge,.s-warning>h2 .badge{background:var(--warn)}
.s-ok>h1 .badge,.s-ok>h2 .badge{background:var(--ok)}
.target.paused>h2 .badge{background:var(--pause)}
.target{background:var(--card);border:1px solid var(--line);border-left:8px solid
var(--unknown);border-radius:6px;padding:6px 12px;margin:6px 0;display:grid;
grid-template-columns:minmax(0,13em) minmax(0,1fr);gap:2px 14px;align-items:start}
.target>h2{grid-column:1;grid-row:1}
.target>.endpoint{grid-column:1;grid-row:2/span 2;margin:0}
.target>dl{grid-column:2;grid-row:1/span 2}
.target>.timeline{grid-column:2;grid-row:3;margin-top:2px}
@media (max-width:760px){.target{grid-template-columns:minmax(0,1fr)}
.target>h2,.target>.endpoint,.target>dl,.target>.timeline{grid-column:1;grid-row:auto}}
.target h2{margin:0;font-size:17px;overflow-wrap:anywhere}
.s-critical{border-left-color:var(--crit)} .s-warning{border-left-color:var(--warn)}
.s-ok{border-left-color:var(--ok)} .s-unknown{border-left-color:var(--unknown)}
.target.paused{border-left-color:var(--pause)}
.target .unit,.endpoint{color:var(--muted);font-weight:400;font-size:14px}
.endpoint{margin:2px 0 6px}
.endpoint code{word-break:break-all}
dl{margin:0;display:grid;grid-template-columns:1fr;gap:1px}
.fact{display:grid;grid-template-columns:7.5em 1fr;gap:8px}
dt{color:var(--muted)} dd{margin:0;overflow-wrap:anywhere}
.flag-critical{color:var(--crit);font-weight:600}
.flag-warning{color:var(--warn);font-weight:600}
.flag-paused{color:var(--pause);font-weight:600}
.next-step dd{font-family:ui-monospace,monospace;font-size:14px}
.timeline{display:block;width:100%;height:auto;margin-top:8px}
.track{fill:var(--track)} .grid{stroke:var(--line);stroke-width:1}
.tick{fill:var(--muted);font-size:10px;text-anchor:middle}
.tick.start{text-anchor:start} .tick.end{text-anchor:end}
.b-failing{fill:var(--fail-band)} .b-down{fill:var(--down-band)}
.b-paused{fill:var(--pause-band)}
.m-restart{fill:var(--pause);stroke:var(--pause);stroke-width:2}
.m-restart-failed{stroke:var(--crit);stroke-width:3;fill:none}
.m-held{fill:#8e44ad} .m-recovered{fill:var(--ok)} .m-given-up{fill:var(--fg)}
.m-down{stroke:var(--crit);stroke-width:2} .m-failing{stroke:var(--warn);stroke-width:2}
.m-other{stroke:var(--muted);stroke-width:2}
.legend{list-style:none;padding:0;margin:0;display:flex;flex-wrap:wrap;gap:4px 16px;
color:var(--muted);font-size:13px}
.legend svg{vertical-align:-3px}
footer p{color:var(--muted);font-size:13px}
a{color:inherit}
"""
