"""The restart policy: whether to restart a down target's unit now, wait, or give up. Pure.

Decisions take the tracker's verdict, what is remembered about the target, what its actuator
says about what it restarts (neutral `Facts`, whichever actuator), and `now`; they return an
action with its reason. Applying the outcome of an action back onto the state is here too, so
every rule about restarts lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from prober.core.actuator import Facts, Running, restart_key
from prober.core.config import DEFAULT_PRESSURE_THRESHOLD, Target
from prober.core.keys import format_duration
from prober.core.psi import Pressure, PressureReading
from prober.core.results import ProbeResult
from prober.core.text import utc
from prober.core.tracker import Change, Event, Health, TargetState, Verdict, record, recorded_since


class Action(StrEnum):
    """What a run did (or would do) for a target; the values are the JSON `action` field."""

    NONE = "none"  # healthy, or failing below the threshold
    DEPENDENCY = "dependency"  # failing because a dependency fails: that one is handled
    WAIT = "wait"  # down, but in startup grace, cooldown, or the unit is busy
    RESTART = "restart"  # the unit was restarted
    WOULD_RESTART = "would-restart"  # --dry-run: the unit would have been restarted
    RESTART_FAILED = "restart-failed"  # asked, but systemd's job failed or timed out
    GIVEN_UP = "given-up"  # restart budget spent: no more restarts until it recovers or reset
    UNIT_NOT_ACTIVE = "unit-not-active"  # the unit is stopped or failed: never started by us
    NO_UNIT = "no-unit"  # down, but no unit is configured to restart
    UNIT_UNKNOWN = "unit-unknown"  # systemd could not be asked about the unit
    PAUSED = "paused"  # an operator paused it: probed and reported, never restarted
    PROBER_FAULT = "prober-fault"  # prober could not judge it, its own fault: never restarted

    @property
    def is_critical(self) -> bool:
        """Whether this action makes the run critical (exit 2)."""
        return self not in (Action.NONE, Action.DEPENDENCY, Action.WAIT, Action.PAUSED,
                            Action.PROBER_FAULT)


@dataclass(frozen=True)
class Decision:
    name: str
    action: Action
    reason: str
    unit: str | None = None
    held: bool = False  # a wait because it starves for memory, not because it is broken


@dataclass(frozen=True)
class Memory:
    """What a run read of memory pressure, for one target's decision."""

    reading: PressureReading | None = None  # its unit's own PSI where readable, else the host's
    culprit: str | None = None  # the unit holding the most memory now, when it was looked for


def worth_saying(pressure: Pressure, threshold: float) -> bool:
    """Whether a reading is pressure worth naming the culprit for: at or above the threshold,
    or the default threshold where the hold is disabled (0)."""
    return pressure.some_avg10 >= (threshold if threshold > 0 else DEFAULT_PRESSURE_THRESHOLD)


def starves(pressure: Pressure, threshold: float) -> bool:
    """Whether a reading means starving, for a policy whose threshold is `threshold` (0: never)."""
    return threshold > 0 and pressure.some_avg10 >= threshold


def cooldown_for(target: Target, state: TargetState) -> float:
    """The wait before the next restart: doubled for each restart that did not help."""
    policy = target.policy
    # Past 2**64 times the cooldown, max_cooldown wins anyway; a larger power costs memory.
    doublings = min(state.unhelpful_restarts, 64)
    return float(min(policy.max_cooldown, policy.cooldown * 2 ** doublings))


def restarts_within(state: TargetState, window: float, now: float) -> int:
    return sum(1 for at in state.restarts if now - at < window)


def decide(
    target: Target,
    verdict: Verdict,
    state: TargetState,
    facts: Facts | None,
    now: float,
    *,
    dry_run: bool = False,
    facts_error: str = "",
    facts_fault: str = "",
    memory: Memory = Memory(),
) -> Decision:
    """What to do about one target this run, and why. `facts_fault` is why its actuator could
    not be asked, when that is prober's own fault (an `ActuatorFault`)."""

    def decision(action: Action, reason: str) -> Decision:
        return Decision(target.name, action, reason, target.unit)

    if verdict.result.prober_fault:
        return decision(Action.PROBER_FAULT, f"prober's own fault, not the target's: "
                        f"{verdict.result.reason}; no failure counted, nothing restarted")
    if verdict.paused:
        return decision(Action.PAUSED, _paused_reason(state, verdict))
    if not verdict.health.is_failing:
        return decision(Action.NONE, verdict.result.reason)
    if verdict.blamed_on is not None:
        return decision(Action.DEPENDENCY, f"its dependency {verdict.blamed_on} is failing")
    threshold = target.policy.failure_threshold
    if verdict.health is Health.FAILING:
        count = f"{verdict.consecutive_failures}/{threshold}"
        return decision(Action.NONE, f"failing {count}: {verdict.result.reason}")
    if target.unit is None:
        return decision(Action.NO_UNIT, f"down, and no unit is configured to restart: "
                        f"{verdict.result.reason}")
    if state.given_up:
        return decision(Action.GIVEN_UP, state.given_up_reason or "given up")
    if facts is None and facts_fault and not dry_run:
        return decision(Action.PROBER_FAULT, f"prober's own fault, not the target's: cannot ask "
                        f"{_manager(target)} about {target.unit}: {facts_fault}; nothing "
                        "restarted")
    if facts is None:
        if dry_run:
            return decision(Action.WOULD_RESTART, f"would restart {target.unit} "
                            f"(its state is unknown: {facts_error or 'not asked'})")
        return decision(Action.UNIT_UNKNOWN, f"cannot ask {_manager(target)} about "
                        f"{target.unit}: {facts_error or facts_fault or 'unknown error'}")
    action, reason = _judge_unit(target, state, facts, now)
    if action is Action.RESTART:
        hold = _hold(target, state, facts, now, memory)
        if hold is not None:
            return Decision(target.name, Action.WAIT, hold, target.unit, held=True)
    if action is Action.RESTART and dry_run:
        return decision(Action.WOULD_RESTART, reason.replace("restarting", "would restart", 1))
    return decision(action, reason)


def _hold(target: Target, state: TargetState, facts: Facts, now: float,
          memory: Memory) -> str | None:
    """Why a restart waits because the service may only be starving, or None.

    Only a service that answers too late (every failure of its streak `timeout` or `slow`) on a
    starving host or unit waits, and not longer than pressure_hold from when it went down;
    refused, wrong status, bad body, TLS or protocol mean broken, whatever the load. The unit
    that holds the most memory is not held: restarting it is what relieves the pressure. (Not
    every one of the three largest: on a small host those are most of its services, puma
    among them, and nothing would ever be held.)
    """
    policy = target.policy
    reading = memory.reading
    if reading is None or not state.streak_starving or policy.pressure_hold <= 0:
        return None
    if not starves(reading.pressure, policy.pressure_threshold) or facts.name == memory.culprit:
        return None
    since = state.down_since if state.down_since is not None else now
    left = since + policy.pressure_hold - now
    if left <= 0:
        return None
    failure = state.last_failure or "timeout"
    return (f"held: {reading.describe()}, at or above pressure_threshold "
            f"{policy.pressure_threshold:g}%, and it only fails as {failure}: starving, maybe "
            f"not broken; restarting {facts.name} in {format_duration(left)} (pressure_hold "
            f"{format_duration(policy.pressure_hold)}) unless it answers again")


def one_restart_under_pressure(targets: Sequence[Target], decisions: Sequence[Decision],
                               host: Pressure | None, culprit: str | None
                               ) -> list[Decision]:
    """At most one unit (or container) restarted per run while the host starves for memory:
    services booting together (puma and sidekiq) deepen a memory outage. The unit holding the
    most memory goes first, else the first in the config; the others wait, and say so. What is
    restarted is told apart by actuator and name: a unit and a container of one name are two."""
    by_name = {t.name: t for t in targets}
    restarting = [d for d in decisions if d.action in (Action.RESTART, Action.WOULD_RESTART)]
    if host is None or len({restart_key(by_name[d.name]) for d in restarting}) < 2:
        return list(decisions)
    first = next((d for d in restarting if d.unit == culprit), restarting[0])
    def waits(decision: Decision) -> bool:
        return decision in restarting and \
            restart_key(by_name[decision.name]) != restart_key(by_name[first.name]) and \
            starves(host, by_name[decision.name].policy.pressure_threshold)

    return [replace(d, action=Action.WAIT, reason=(
        f"the host is under memory pressure (some {host.some_avg10:.1f}%): one restart per run, "
        f"{first.unit} first; {d.unit} next run if still down")) if waits(d) else d
        for d in decisions]


def _paused_reason(state: TargetState, verdict: Verdict) -> str:
    why = f" ({state.paused_reason})" if state.paused_reason else ""
    return (f"paused until {utc(state.paused_until or 0.0)}{why}: probed, never restarted; "
            f"{verdict.result.reason}")


def _manager(target: Target) -> str:
    """Who the target's actuator asks and restarts through, for reasons."""
    return target.actuator or "the service manager"


def _judge_unit(
    target: Target, state: TargetState, facts: Facts, now: float
) -> tuple[Action, str]:
    policy = target.policy
    if facts.running is Running.STARTING:
        return Action.WAIT, f"{facts.describe()}, a job is under way: waiting for it"
    if facts.running is Running.STOPPED:
        return Action.UNIT_NOT_ACTIVE, (
            f"{facts.describe()}: not starting it (an admin may have stopped it; "
            f"restarting crashed services is {_manager(target)}'s own job)"
        )
    grace_end = (facts.since or 0.0) + policy.startup_grace
    counted = sum(1 for at in state.failure_times if at >= grace_end)
    if counted < policy.failure_threshold:
        return Action.WAIT, (
            f"{facts.name} started {format_duration(max(0.0, now - (facts.since or now)))}"
            f" ago, within startup_grace {format_duration(policy.startup_grace)}: "
            f"{counted}/{policy.failure_threshold} failures count"
        )
    if policy.max_restarts == 0:
        return Action.GIVEN_UP, "max_restarts is 0: restarts are disabled for this target"
    recent = restarts_within(state, policy.restart_window, now)
    if recent >= policy.max_restarts:
        return Action.GIVEN_UP, (
            f"given up: {recent} restarts within {format_duration(policy.restart_window)} did "
            f"not bring it back (max_restarts {policy.max_restarts}); no more restarts until "
            "it passes again or `prober reset`"
        )
    limit = facts.start_limit
    if limit is not None and limit.burst > 0 and limit.interval > 0:
        starts = restarts_within(state, limit.interval, now)
        if facts.since is not None and now - facts.since < limit.interval:
            starts = max(starts, 1)
        # Keep one start in hand: the manager also counts starts the prober does not know about.
        if starts + 1 >= limit.burst:
            return Action.GIVEN_UP, (
                f"given up: one more restart would come within one start of {facts.name}'s "
                f"{limit.spelled} and leave it refusing to start"
            )
    wait = cooldown_for(target, state)
    if state.last_restart_at is not None and now < state.last_restart_at + wait:
        ready = state.last_restart_at + wait
        return Action.WAIT, (
            f"cooldown {format_duration(wait)} after the last restart: next restart allowed in "
            f"{format_duration(ready - now)}"
        )
    return Action.RESTART, f"restarting {facts.name}: {facts.describe()} but not answering"


class Outcome(StrEnum):
    """How a restart went."""

    RECOVERED = "recovered"  # job done and the target answers again
    NOT_RECOVERED = "not-recovered"  # job done, the target still fails
    JOB_FAILED = "job-failed"  # systemd's job ended in failed/timeout/canceled, or no answer
    UNKNOWN = "unknown"  # asked for, and the prober stopped before it learnt how it went
    PROBER_FAULT = "prober-fault"  # the actuator could not be used, prober's own fault
    STOPPED = "stopped"  # stopped since it was judged (an admin's stop): left stopped


@dataclass(frozen=True)
class Applied:
    """A target's state after what the run did, the final decision, and what changed."""

    state: TargetState
    decision: Decision
    changes: tuple[Change, ...] = ()


def apply_decision(target: Target, state: TargetState, decision: Decision, now: float) -> Applied:
    """The state after a decision that needs no actuator (give up, wait, ...)."""
    after = state
    if decision.action is Action.GIVEN_UP and not state.given_up:
        given_up = replace(state, given_up=True, given_up_reason=decision.reason)
        after = record(given_up, now, Event.GIVEN_UP, decision.reason)
    if decision.held and state.held_at is None:
        after = record(replace(after, held_at=now), now, Event.HELD, decision.reason)
    return _applied(target, state, after, decision)


@dataclass(frozen=True)
class RestartOutcome:
    """How the actuator's restart of a target's unit went, and when it was done."""

    outcome: Outcome
    detail: str  # one line: "restarted (job done in 0.2s); answering again"
    at: float
    verified: ProbeResult | None = None  # the re-probe after the restart, if there was one


def apply_restart(target: Target, state: TargetState, decision: Decision,
                  restarted: RestartOutcome) -> Applied:
    """The state after the prober restarted the target's unit (and re-probed it), and the
    decision as it stands: a restart whose job failed is `restart-failed`."""
    now = restarted.at
    if restarted.outcome is Outcome.PROBER_FAULT:
        return _applied(target, state, state, replace(
            decision, action=Action.PROBER_FAULT,
            reason=f"prober's own fault, not the target's: {restarted.detail}; not counted"))
    if restarted.outcome is Outcome.STOPPED:  # as if the run had seen it stopped: not counted
        return _applied(target, state, state, replace(
            decision, action=Action.UNIT_NOT_ACTIVE,
            reason=f"{restarted.detail}; never started by prober"))
    window = max(target.policy.restart_window, 1.0)
    restarts = (*(at for at in state.restarts if now - at < window), now)
    if restarted.outcome is Outcome.UNKNOWN:
        # Counted against the budget and the cooldown, as systemd may well have done it; no
        # more is known, so health and backoff stay as they were.
        asked = replace(state, restarts=restarts, restarts_total=state.restarts_total + 1,
                        last_restart_at=now)
        return _applied(target, state, record(asked, now, Event.RESTART, restarted.detail),
                        decision)
    helped = restarted.outcome is Outcome.RECOVERED
    after = replace(
        state,
        restarts=restarts,
        restarts_total=state.restarts_total + 1,
        last_restart_at=now,
        unhelpful_restarts=0 if helped else state.unhelpful_restarts + 1,
        consecutive_failures=0,
        failure_times=(),
        held_at=None,
    )
    verified = restarted.verified
    if verified is not None:
        after = replace(
            after, last_ok=verified.ok, last_reason=verified.reason,
            last_failure=None if verified.failure is None else verified.failure.value,
            last_status_code=verified.status_code, last_latency_ms=verified.latency_ms,
        )
    if helped:
        health = Health.HEALTHY if target.policy.success_threshold <= 1 else Health.RECOVERING
        after = replace(after, health=health, since=now, consecutive_passes=1)
    else:
        after = replace(after, health=Health.FAILING, since=now, consecutive_passes=0)
    failed = restarted.outcome is Outcome.JOB_FAILED
    after = record(after, now, Event.RESTART_FAILED if failed else Event.RESTART,
                   restarted.detail)
    if helped:
        after = record(replace(after, down_since=None, given_up=False, given_up_reason=""),
                       now, Event.RECOVERED, "answering again after the restart")
    if failed:
        decision = replace(decision, action=Action.RESTART_FAILED, reason=restarted.detail)
    return _applied(target, state, after, decision)


def _applied(target: Target, before: TargetState, after: TargetState,
             decision: Decision) -> Applied:
    changes = tuple(Change(target.name, t) for t in recorded_since(before, after))
    return Applied(after, decision, changes)
