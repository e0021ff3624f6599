"""The failure tracker: folds each run's probe results into per-target state. Pure.

Per target it counts consecutive failed and passed runs and decides whether the target is
healthy, failing (below failure_threshold) or down (at or over it). A failing target whose
dependency (`depends_on`) fails in the same run is blamed on the deepest failing dependency:
only that one may be restarted, so a dead backend gets restarted rather than the proxy in
front of it.

Whatever it records in a target's history it also returns as a `Change`: logging and
notifications consume those, and never compare timestamps to work out what happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from prober.core.config import Config, Target
from prober.core.psi import MemoryUser
from prober.core.results import FailureClass, ProbeResult
from prober.core.text import utc
from prober.core.unit_seen import UnitSeen

HISTORY_LIMIT = 10_000  # hard cap per target; runs trim to the config's `history` (500)


class Health(StrEnum):
    UNKNOWN = "unknown"  # never probed
    HEALTHY = "healthy"
    RECOVERING = "recovering"  # passing again, fewer than success_threshold times in a row
    FAILING = "failing"  # failing, fewer than failure_threshold times in a row
    DOWN = "down"  # failed failure_threshold runs in a row

    @property
    def is_failing(self) -> bool:
        return self in (Health.FAILING, Health.DOWN)


class Event(StrEnum):
    """What the history records; the values are what status and logs show."""

    FAILING = "failing"
    DOWN = "down"
    RECOVERED = "recovered"
    RESTART = "restart"
    RESTART_FAILED = "restart-failed"
    GIVEN_UP = "given-up"
    RESET = "reset"
    PAUSED = "paused"
    RESUMED = "resumed"
    HELD = "held"  # a restart held back while the host (or the unit) starves for memory


@dataclass(frozen=True)
class Transition:
    """One entry of a target's history."""

    at: float
    event: Event
    reason: str
    top_memory: tuple[MemoryUser, ...] = ()  # down and restart under pressure: who held memory


@dataclass(frozen=True)
class Change:
    """Something that happened to a target: what its history just recorded."""

    target: str
    transition: Transition

    @property
    def event(self) -> Event:
        return self.transition.event


@dataclass(frozen=True)
class TargetState:
    """Everything remembered about one target between runs. Times are epoch seconds."""

    health: Health = Health.UNKNOWN
    since: float | None = None  # when `health` last changed
    consecutive_failures: int = 0
    consecutive_passes: int = 0
    failure_times: tuple[float, ...] = ()  # the current streak's latest failures, for grace
    last_checked_at: float | None = None
    last_ok: bool | None = None
    last_reason: str = ""
    last_failure: str | None = None
    last_status_code: int | None = None
    last_latency_ms: float | None = None
    last_notice: str = ""  # the last run's warning that is no failure (a certificate to renew)
    down_since: float | None = None  # when the current outage began (down, not yet recovered)
    streak_starving: bool = False  # every failure of the current streak was timeout or slow
    held_at: float | None = None  # when this outage's restart was first held under pressure
    restarts: tuple[float, ...] = ()  # when the prober restarted the unit, within the window
    restarts_total: int = 0
    unhelpful_restarts: int = 0  # restarts in a row that did not bring the target back
    last_restart_at: float | None = None
    given_up: bool = False
    given_up_reason: str = ""
    paused_until: float | None = None  # an operator's pause: probed, reported, never restarted
    paused_reason: str = ""
    unit_seen: UnitSeen | None = None  # what the unit_health kind last read, and its incidents
    history: tuple[Transition, ...] = ()


@dataclass(frozen=True)
class PressureEpisode:
    """The host's memory pressure over the threshold, since when, and its peak so far."""

    since: float
    peak: float  # PSI `some avg10`, percent
    peak_at: float
    top_memory: tuple[MemoryUser, ...] = ()  # the largest memory users at the peak


@dataclass(frozen=True)
class State:
    targets: Mapping[str, TargetState] = field(default_factory=dict)
    updated_at: float | None = None
    trial: bool = False  # a dry run's own counts, which a real run never uses
    pressure: PressureEpisode | None = None  # the episode going on, for the outage record
    systemd_unreachable_since: float | None = None  # systemd could not be asked, since then

    def get(self, name: str) -> TargetState:
        return self.targets.get(name, TargetState())

    def with_target(self, name: str, target_state: TargetState) -> State:
        return replace(self, targets={**self.targets, name: target_state})


@dataclass(frozen=True)
class Verdict:
    """The tracker's judgement of one target after this run."""

    name: str
    health: Health
    result: ProbeResult
    consecutive_failures: int
    blamed_on: str | None = None  # the deepest failing dependency, if the failure is its fault
    paused: bool = False

    @property
    def wants_restart(self) -> bool:
        return self.health is Health.DOWN and self.blamed_on is None and not self.paused \
            and not self.result.prober_fault


@dataclass(frozen=True)
class Folded:
    """The tracker's answer for one run."""

    state: State
    verdicts: list[Verdict]
    changes: list[Change]


def record(state: TargetState, at: float, event: Event, reason: str) -> TargetState:
    """Append a transition to the target's history, keeping it bounded."""
    history = (*state.history, Transition(at, event, reason))[-HISTORY_LIMIT:]
    return replace(state, history=history)


def recorded_since(old: TargetState, new: TargetState) -> tuple[Transition, ...]:
    """The transitions `new` recorded on top of `old`'s history."""
    if not new.history or (old.history and new.history[-1] is old.history[-1]):
        return ()
    added = 0
    last = old.history[-1] if old.history else None
    for entry in reversed(new.history):
        if entry is last:
            break
        added += 1
    return new.history[-added:]


def _next_health(target: Target, failures: int, passes: int, previous: Health) -> Health:
    if failures >= target.policy.failure_threshold:
        return Health.DOWN
    if failures > 0:
        return Health.FAILING
    was_bad = previous in (Health.FAILING, Health.DOWN, Health.RECOVERING)
    if was_bad and passes < target.policy.success_threshold:
        return Health.RECOVERING
    return Health.HEALTHY


def is_paused(state: TargetState, now: float) -> bool:
    return state.paused_until is not None and now < state.paused_until


def has_prober_fault(state: TargetState) -> bool:
    """Whether prober could not judge the target last time, through its own fault."""
    return state.last_failure == FailureClass.PROBER_FAULT.value


def fold_result(target: Target, state: TargetState, result: ProbeResult, now: float) -> TargetState:
    """One target's state after one more probe result.

    A paused target's result, or a prober fault (prober could not judge the target), is
    remembered, but counts toward no threshold: the streak neither grows nor resets. A pause
    that has run out ends here, and the history says so.
    """
    if result.seen is not None:
        state = replace(state, unit_seen=result.seen)
    if state.paused_until is not None and not is_paused(state, now):
        state = _resumed(state, now, "the pause ran out")
    if is_paused(state, now) or result.prober_fault:
        return replace(state, last_checked_at=now, last_ok=result.ok, last_reason=result.reason,
                       last_failure=None if result.failure is None else result.failure.value,
                       last_status_code=result.status_code, last_latency_ms=result.latency_ms)
    times: tuple[float, ...] = ()
    starving = False
    if result.ok:
        failures, passes = 0, state.consecutive_passes + 1
    else:
        failures, passes = state.consecutive_failures + 1, 0
        times = (*state.failure_times, now)[-target.policy.failure_threshold :]
        starving = result.failure is not None and result.failure.means_starving and (
            failures == 1 or state.streak_starving)
    health = _next_health(target, failures, passes, state.health)
    new = replace(
        state,
        health=health,
        since=state.since if health is state.health else now,
        consecutive_failures=failures,
        consecutive_passes=passes,
        failure_times=times,
        streak_starving=starving,
        last_checked_at=now,
        last_ok=result.ok,
        last_reason=result.reason,
        last_failure=None if result.failure is None else result.failure.value,
        last_status_code=result.status_code,
        last_latency_ms=result.latency_ms,
    )
    return _record_change(new, state, now, result.reason)


def _record_change(new: TargetState, old: TargetState, now: float, reason: str) -> TargetState:
    if new.health is old.health:
        return new
    if new.health is Health.FAILING and old.down_since is None:
        return record(new, now, Event.FAILING, reason)
    if new.health is Health.DOWN and old.down_since is None:
        # Once per outage: after a restart that did not help it is down again, not anew.
        return record(replace(new, down_since=now), now, Event.DOWN, reason)
    if new.health is Health.HEALTHY and old.health is not Health.UNKNOWN:
        return recovered(new, now, reason)
    return new


def recovered(state: TargetState, now: float, reason: str) -> TargetState:
    """The target answers again: the outage is over, restarts are re-armed."""
    fresh = replace(state, given_up=False, given_up_reason="", unhelpful_restarts=0,
                    down_since=None, held_at=None)
    return record(fresh, now, Event.RECOVERED, reason)


def fold(config: Config, state: State, results: Iterable[ProbeResult], now: float) -> Folded:
    """The state after this run's results, a verdict per probed target, and what changed."""
    by_name = {r.name: r for r in results}
    targets = {**state.targets}
    config_targets = {t.name: t for t in config.targets}
    changes: list[Change] = []
    for name, result in by_name.items():
        old = state.get(name)
        targets[name] = fold_result(config_targets[name], old, result, now)
        changes += [Change(name, t) for t in recorded_since(old, targets[name])]
    return Folded(replace(state, targets=targets, updated_at=now),
                  _verdicts(config, targets, by_name, now), changes)


def _verdicts(config: Config, targets: Mapping[str, TargetState],
              results: Mapping[str, ProbeResult], now: float) -> list[Verdict]:
    failed = {name for name, r in results.items() if not r.ok and not r.prober_fault}
    blamed_on = blame(config, failed)
    return [
        Verdict(
            name=name,
            health=targets[name].health,
            result=result,
            consecutive_failures=targets[name].consecutive_failures,
            blamed_on=blamed_on.get(name),
            paused=is_paused(targets[name], now),
        )
        for name, result in results.items()
    ]


def confirmations_left(target: Target, state: TargetState, result: ProbeResult,
                       now: float) -> int:
    """How many more failed probes, soon, would make this target down, when its latest result
    means nothing listens (FailureClass.means_gone); 0 when that is not certain, when it is
    already down, paused, or its confirm_interval is 0."""
    gone = result.failure is not None and result.failure.means_gone
    if not gone or target.policy.confirm_interval <= 0 or is_paused(state, now):
        return 0
    return max(0, target.policy.failure_threshold - state.consecutive_failures)


def confirm(config: Config, folded: Folded, results: Iterable[ProbeResult], now: float) -> Folded:
    """`folded` after probing some of its targets again within the same run: each result
    counts as one more probe of its target; blame is judged again on every target's latest
    result, so a target blamed on a dependency that passes now is judged on its own."""
    config_targets = {t.name: t for t in config.targets}
    targets = {**folded.state.targets}
    changes = list(folded.changes)
    latest = {v.name: v.result for v in folded.verdicts}
    for result in results:
        old = targets[result.name]
        targets[result.name] = fold_result(config_targets[result.name], old, result, now)
        changes += [Change(result.name, t) for t in recorded_since(old, targets[result.name])]
        latest[result.name] = result
    return Folded(replace(folded.state, targets=targets, updated_at=now),
                  _verdicts(config, targets, latest, now), changes)


def blame(config: Config, failed: set[str]) -> dict[str, str | None]:
    """For each failed target, the failing dependency furthest down its chain (None if none).

    Ties between equally deep chains go to the dependency listed first. Iterative and linear in
    targets + links (the config has no cycles), so long or dense dependency graphs stay cheap.
    """
    deps = {t.name: [d for d in t.depends_on if d in failed]
            for t in config.targets if t.name in failed}
    best: dict[str, tuple[int, str | None]] = {}  # name -> (depth, deepest failing dependency)
    for root, root_deps in deps.items():
        if root in best:
            continue
        stack = [(root, iter(root_deps))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is not None:
                if child not in best:
                    stack.append((child, iter(deps[child])))
                continue
            stack.pop()
            depth, deepest = 0, None
            for dep in deps[node]:
                dep_depth, dep_deepest = best[dep]
                if dep_depth + 1 > depth:
                    depth, deepest = dep_depth + 1, dep_deepest or dep
            best[node] = (depth, deepest)
    return {name: deepest for name, (_, deepest) in best.items()}


def forget(state: State, names: Iterable[str], now: float) -> State:
    """Drop what is remembered about these targets, keeping a note in their history."""
    targets = {**state.targets}
    for name in names:
        old = targets.get(name, TargetState())
        fresh = TargetState(history=old.history)
        targets[name] = record(fresh, now, Event.RESET, "state reset by an operator")
    return replace(state, targets=targets)


def pause(state: State, names: Iterable[str], until: float, reason: str, now: float) -> State:
    """Pause these targets until `until`: still probed and reported, never restarted.

    Their failure streaks start afresh, so that a service mid-upgrade is judged on what it does
    after the pause, not before it.
    """
    targets = {**state.targets}
    note = f"paused until {utc(until)}" + (f": {reason}" if reason else "")
    for name in names:
        paused = replace(targets.get(name, TargetState()), paused_until=until,
                         paused_reason=reason, consecutive_failures=0, consecutive_passes=0,
                         failure_times=())
        targets[name] = record(paused, now, Event.PAUSED, note)
    return replace(state, targets=targets)


def resume(state: State, names: Iterable[str], now: float) -> tuple[State, list[str]]:
    """End the pause of those of these targets that are paused; the new state and their names."""
    targets = {**state.targets}
    resumed = []
    for name in names:
        current = targets.get(name, TargetState())
        if current.paused_until is not None:
            targets[name] = _resumed(current, now, "resumed by an operator")
            resumed.append(name)
    return replace(state, targets=targets), resumed


def _resumed(state: TargetState, now: float, reason: str) -> TargetState:
    return record(replace(state, paused_until=None, paused_reason=""), now, Event.RESUMED,
                  reason)


def transition_json(entry: Transition) -> dict[str, Any]:
    """One history entry as the state file stores it and `status --json` shows it."""
    out: dict[str, Any] = {"at": entry.at, "event": entry.event.value, "reason": entry.reason}
    if entry.top_memory:
        out["top_memory"] = [{"name": u.name, "bytes": u.bytes} for u in entry.top_memory]
    return out


def with_top_memory(state: State, changes: Iterable[Change],
                    users: tuple[MemoryUser, ...]) -> tuple[State, list[Change]]:
    """This run's `down` and `restart` entries, noting who held the most memory then, so that
    `status` can say it afterwards."""
    out: list[Change] = []
    targets = {**state.targets}
    for change in changes:
        entry = change.transition
        if not users or entry.event not in (Event.DOWN, Event.RESTART):
            out.append(change)
            continue
        noted = replace(entry, top_memory=users)
        history = targets[change.target].history
        targets[change.target] = replace(targets[change.target], history=tuple(
            noted if item is entry else item for item in history))
        out.append(Change(change.target, noted))
    return replace(state, targets=targets), out


def essential(state: State) -> dict[str, TargetState]:
    """What of the state matters between runs: without what changes every run while nothing
    happens (check times, latencies, the pass count of a healthy target). Equal essentials
    need no write."""
    out = {}
    for name, target in state.targets.items():
        passes = 0 if target.health is Health.HEALTHY else target.consecutive_passes
        out[name] = replace(target, last_checked_at=None, last_latency_ms=None,
                            consecutive_passes=passes)
    return out


def trim_history(state: State, keep: int) -> State:
    """Keep only the latest `keep` transitions of each target."""
    if all(len(t.history) <= keep for t in state.targets.values()):
        return state
    return replace(state, targets={name: replace(t, history=t.history[-keep:])
                                  for name, t in state.targets.items()})


def prune(state: State, names: Iterable[str]) -> State:
    """Keep only the targets still in the config."""
    keep = set(names)
    return replace(state, targets={n: s for n, s in state.targets.items() if n in keep})
