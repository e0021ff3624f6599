"""The outage record: every event prober saw, kept for weeks, as values. Pure.

A run that recorded something (a target failing, a restart, a pause ...) appends one `Entry`
per event to the record file (prober/shell/record.py); a healthy run records nothing and never
touches it. Each line of the file is one entry as JSON, `{"v": 1, ...}`; a line is read as
hostile input (`parse_line`): one that is not an entry of a known version is skipped.

`timeline` reads the entries back as `status --since` and `report` show them: oldest first,
each recovery with the length of the outage it ended.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from prober.core.keys import format_duration
from prober.core.psi import MemoryUser
from prober.core.text import LATEST_TIME, one_line, utc
from prober.core.tracker import Change, Event, PressureEpisode, TargetState, Transition

RECORD_VERSION = 1
LINE_MAX = 8 << 10  # the longest line prober writes is far shorter; a longer one is damage
TEXT_MAX = 1000  # a reason, a name: clipped to this when read
USERS_MAX = 10
_LATEST = LATEST_TIME
RANGES = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}  # the page's views of the record


class Kind(StrEnum):
    """What an entry records; the values are the `event` field and what status and report show.

    The first ten are the tracker's events (`prober.core.tracker.Event`), with their values."""

    FAILING = "failing"
    DOWN = "down"
    RECOVERED = "recovered"  # `duration`: how long the outage lasted
    RESTART = "restart"  # the restart was done and verified, or done and not enough
    RESTART_FAILED = "restart-failed"
    GIVEN_UP = "given-up"
    RESET = "reset"
    PAUSED = "paused"
    RESUMED = "resumed"
    HELD = "held"  # `psi`: the reading that held the restart back
    BLAMED = "blamed"  # `on`: the failing dependency the failure is blamed on
    RESTART_ASKED = "restart-asked"  # asked of the actuator; its outcome follows
    PRESSURE_START = "pressure-start"  # the host's memory pressure reached the threshold
    PRESSURE_END = "pressure-end"  # below half of it again: `psi` the peak, `top_memory` then
    SYSTEMD_UNREACHABLE = "systemd-unreachable"  # systemd could not be asked about a unit
    SYSTEMD_REACHABLE = "systemd-reachable"  # it answers again: `duration` since it did not
    CONFIG_RELOADED = "config-reloaded"  # the watcher's config, reloaded
    CONFIG_REJECTED = "config-rejected"  # a reload that did not load: the reason why

    @property
    def starts_outage(self) -> bool:
        return self in (Kind.FAILING, Kind.DOWN)


_KINDS = {kind.value: kind for kind in Kind}
# Each of the tracker's events is a kind of the same value (tests/test_record.py keeps it so).
_FROM_EVENT = {event: _KINDS[event.value] for event in Event if event.value in _KINDS}
_TO_EVENT = {kind: event for event, kind in _FROM_EVENT.items()}


@dataclass(frozen=True)
class Entry:
    """One event of the record. `target` is "" for what concerns no one target."""

    at: float
    target: str
    kind: Kind
    reason: str = ""
    unit: str = ""  # the target's unit, for `journalctl -u`
    on: str = ""  # blamed: the dependency
    psi: float | None = None  # memory pressure, percent `some avg10`, when it was read
    duration: float | None = None  # recovered: seconds since the outage began
    top_memory: tuple[MemoryUser, ...] = ()  # the largest memory users then


def entry_json(entry: Entry) -> dict[str, Any]:
    """An entry as one line of the record holds it (and `status --since --json` shows it)."""
    out: dict[str, Any] = {"v": RECORD_VERSION, "at": entry.at, "target": entry.target,
                           "event": entry.kind.value, "reason": entry.reason}
    for name in ("unit", "on"):
        if getattr(entry, name):
            out[name] = getattr(entry, name)
    for name in ("psi", "duration"):
        if getattr(entry, name) is not None:
            out[name] = getattr(entry, name)
    if entry.top_memory:
        out["top_memory"] = [{"name": u.name, "bytes": u.bytes} for u in entry.top_memory]
    return out


def dump_line(entry: Entry) -> bytes:
    return (json.dumps(entry_json(entry), sort_keys=True) + "\n").encode()


class BadLine(ValueError):
    """A line of the record that is not an entry prober writes."""


def parse_line(line: bytes) -> Entry:
    """One line of the record as an entry; BadLine saying what is wrong with it."""
    if len(line) > LINE_MAX:
        raise BadLine("a line longer than any entry")
    try:
        data = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        raise BadLine("not JSON") from None
    if type(data) is not dict:
        raise BadLine("not an object")
    if data.get("v") != RECORD_VERSION or type(data.get("v")) is not int:
        raise BadLine(f"not version {RECORD_VERSION}")
    name = data.get("event")
    kind = _KINDS.get(name) if type(name) is str else None
    if kind is None:
        raise BadLine("an event of no known kind")
    return Entry(
        at=_time(data.get("at")), target=_text(data.get("target"), "target"), kind=kind,
        reason=_text(data.get("reason", ""), "reason"), unit=_text(data.get("unit", ""), "unit"),
        on=_text(data.get("on", ""), "on"), psi=_number(data.get("psi"), 100.0, "psi"),
        duration=_number(data.get("duration"), _LATEST, "duration"),
        top_memory=_users(data.get("top_memory", [])))


def _time(value: Any) -> float:
    if type(value) in (int, float) and 0 <= value <= _LATEST:  # not NaN
        return float(value)
    raise BadLine("at: not a time in seconds since 1970")


def _text(value: Any, name: str) -> str:
    if type(value) is not str:
        raise BadLine(f"{name}: not a string")
    return one_line(value[:TEXT_MAX])


def _number(value: Any, most: float, name: str) -> float | None:
    if value is None:
        return None
    if type(value) in (int, float) and 0 <= value <= most:
        return float(value)
    raise BadLine(f"{name}: not a number from 0 to {most:g}")


def _users(value: Any) -> tuple[MemoryUser, ...]:
    if type(value) is not list or len(value) > USERS_MAX:
        raise BadLine("top_memory: not a short list")
    users = []
    for item in value:
        count = item.get("bytes") if type(item) is dict else None
        if type(count) is not int or not 0 <= count < 1 << 62:
            raise BadLine("top_memory: not a name and a count of bytes")
        users.append(MemoryUser(_text(item.get("name"), "top_memory"), count))
    return tuple(users)


# --- from a run's changes -----------------------------------------------------------------


def outage_began(history: Sequence[Transition], before: float) -> float | None:
    """When the outage that a recovery at `before` ends began: its first failing or down entry
    after the previous recovery (None if the history no longer holds it)."""
    began = None
    for entry in reversed(history):
        if entry.at > before:
            continue
        if entry.event is Event.RECOVERED and entry.at < before:
            break
        if entry.event in (Event.FAILING, Event.DOWN):
            began = entry.at
    return began


def from_changes(changes: Iterable[Change], states: Mapping[str, TargetState],
                 units: Mapping[str, str], *, blamed_on: Mapping[str, str] | None = None,
                 psi: float | None = None) -> list[Entry]:
    """A run's changes as entries: a recovery with its outage's length (from the target's
    history in `states`), a failure blamed on a dependency followed by who (`blamed_on`), the
    memory reading (`psi`) beside a hold and the largest memory users."""
    blamed_on = blamed_on or {}
    out: list[Entry] = []
    for change in changes:
        name, entry = change.target, change.transition
        kind = _FROM_EVENT.get(entry.event)
        if kind is None:
            continue
        duration = None
        if kind is Kind.RECOVERED:
            began = outage_began(states[name].history, entry.at) if name in states else None
            duration = None if began is None else max(0.0, entry.at - began)
        noted = Entry(entry.at, name, kind, entry.reason, units.get(name, ""),
                      psi=psi if kind is Kind.HELD or entry.top_memory else None,
                      duration=duration, top_memory=entry.top_memory[:USERS_MAX])
        out.append(noted)
        first = kind.starts_outage and name in states and \
            outage_began(states[name].history, entry.at) == entry.at
        if first and name in blamed_on:
            out.append(replace(noted, kind=Kind.BLAMED, on=blamed_on[name], top_memory=(),
                               reason=f"its dependency {blamed_on[name]} is failing"))
    return out


def from_histories(states: Mapping[str, TargetState], units: Mapping[str, str]) -> list[Entry]:
    """The entries of the state's per-target histories, oldest first: what a record file that
    did not exist yet starts with, so that nothing the state remembered is lost to it."""
    changes = sorted((Change(name, t) for name, s in states.items() for t in s.history),
                     key=lambda c: c.transition.at)
    return from_changes(changes, states, units)


# --- what concerns no one target: memory pressure, systemd ------------------------------


def pressure_peaks(episode: PressureEpisode | None, psi: float | None,
                   threshold: float) -> bool:
    """Whether this reading starts an episode or passes its peak: when to note who holds the
    most memory (a walk of the cgroup tree, only then)."""
    if psi is None or threshold <= 0:
        return False
    return psi >= threshold if episode is None else psi > episode.peak


def pressure_step(episode: PressureEpisode | None, psi: float | None, threshold: float,
                  now: float, users: tuple[MemoryUser, ...] = ()
                  ) -> tuple[PressureEpisode | None, list[Entry]]:
    """The episode after this run's host reading (PSI `some avg10`), and what to record: its
    start at `threshold`; its end below half of it (so that a reading around the threshold is
    one episode, not many), with the peak and who held the memory then. `threshold` 0: off."""
    if threshold <= 0:
        return None, []
    if psi is None:
        return episode, []
    if episode is None:
        if psi < threshold:
            return None, []
        return PressureEpisode(now, psi, now, users[:USERS_MAX]), [Entry(
            now, "", Kind.PRESSURE_START, f"memory pressure some {psi:.1f}% of the last 10s "
            f"(threshold {threshold:g}%)", psi=psi, top_memory=users[:USERS_MAX])]
    if psi < threshold / 2:
        return None, [Entry(
            now, "", Kind.PRESSURE_END, f"memory pressure down to {psi:.1f}%; its peak "
            f"{episode.peak:.1f}% at {utc(episode.peak_at, '%H:%M:%S')} UTC",
            psi=episode.peak, duration=max(0.0, now - episode.since),
            top_memory=episode.top_memory)]
    if psi > episode.peak:
        return replace(episode, peak=psi, peak_at=now,
                       top_memory=users[:USERS_MAX] or episode.top_memory), []
    return episode, []


def systemd_reached(*, asked: bool, read: bool, faulted: bool, failing: bool) -> bool:
    """Whether a run in which systemd was not found unreachable shows it answers again: it
    answered about a systemd target's unit (`asked`); or a unit_health probe read its unit
    (`read`) and none failed to (`faulted`); or nothing needed it, no target failing."""
    return asked or (read and not faulted) or not failing


def systemd_step(since: float | None, unreachable: str | None, reached: bool,
                 now: float) -> tuple[float | None, list[Entry]]:
    """Since when systemd could not be asked, after this run (`unreachable`: why it could not,
    this run; `reached`: it answers, as `systemd_reached` tells), and what to record: once
    when it stops answering, once when it answers again, with how long it did not."""
    if unreachable is not None and since is None:
        return now, [Entry(now, "", Kind.SYSTEMD_UNREACHABLE, unreachable)]
    if since is not None and unreachable is None and reached:
        lasted = max(0.0, now - since)
        return None, [Entry(now, "", Kind.SYSTEMD_REACHABLE, "systemd answers again, after "
                            f"{format_duration(round(lasted))}", duration=lasted)]
    return since, []


# --- reading back ---------------------------------------------------------------------------


def within(entries: Iterable[Entry], since: float, target: str | None = None) -> list[Entry]:
    """The entries at or after `since` (of `target` alone, if given), oldest first."""
    chosen = [e for e in entries if e.at >= since and (target is None or e.target == target)]
    return sorted(chosen, key=lambda e: e.at)


def kept(entries: Sequence[Entry], now: float, max_age: float, max_bytes: int) -> list[Entry]:
    """What compaction keeps: the entries younger than `max_age`, the newest of them only as
    many as fit in `max_bytes` written out."""
    young = [e for e in entries if now - e.at <= max_age]
    out: list[Entry] = []
    total = 0
    for entry in reversed(young):
        total += len(dump_line(entry))
        if total > max_bytes:
            break
        out.append(entry)
    return out[::-1]


@dataclass(frozen=True)
class Outage:
    """One target's outage as the record tells it."""

    target: str
    began: float
    ended: float | None  # None: not over by the record's end
    unit: str = ""
    culprit: str = ""  # the largest memory user noted during it

    def lasted(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.began


def outages(entries: Sequence[Entry]) -> list[Outage]:
    """Each outage in `entries` (oldest first), from a target's first failing or down entry to
    its recovery."""
    open_: dict[str, Outage] = {}
    done: list[Outage] = []
    for entry in entries:
        current = open_.get(entry.target)
        if entry.kind.starts_outage and current is None:
            open_[entry.target] = Outage(entry.target, entry.at, None, entry.unit)
        elif entry.kind is Kind.RECOVERED:
            began = entry.at - entry.duration if entry.duration is not None else \
                current.began if current is not None else entry.at
            done.append(Outage(entry.target, began, entry.at, entry.unit,
                               current.culprit if current is not None else ""))
            open_.pop(entry.target, None)
        if entry.top_memory and entry.target in open_ and not open_[entry.target].culprit:
            open_[entry.target] = replace(open_[entry.target], culprit=entry.top_memory[0].name)
    return sorted([*done, *open_.values()], key=lambda o: o.began)


def transitions(entries: Iterable[Entry], target: str) -> tuple[Transition, ...]:
    """One target's entries that are the tracker's events, as its history holds them."""
    return tuple(Transition(e.at, _TO_EVENT[e.kind], e.reason, e.top_memory) for e in entries
                 if e.target == target and e.kind in _TO_EVENT)


def culprits(entries: Iterable[Entry]) -> list[MemoryUser]:
    """The largest memory users the entries name, each once at its largest, largest first."""
    most: dict[str, int] = {}
    for entry in entries:
        for user in entry.top_memory:
            most[user.name] = max(most.get(user.name, 0), user.bytes)
    return [MemoryUser(n, b) for n, b in sorted(most.items(), key=lambda i: -i[1])]
