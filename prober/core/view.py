"""One view of each target, built once per snapshot: every fact an output shows about a target
(its status, budget, next restart allowed, pause, hold, culprit, prober fault), derived here
and nowhere else. The text and JSON of `check` and `status`, the page, `/status.json`, the
metrics and the notifications only format it."""

from __future__ import annotations

from dataclasses import dataclass

from prober.core.actuator import restarted_as
from prober.core.config import Target
from prober.core.policy import Action, cooldown_for, restarts_within
from prober.core.psi import MemoryUser
from prober.core.runs import RunReport, Snapshot, Status, TargetReport, remembered_status
from prober.core.text import utc
from prober.core.tracker import Event, Health, TargetState, has_prober_fault, is_paused


@dataclass(frozen=True)
class Pause:
    until: float
    reason: str | None


@dataclass(frozen=True)
class Budget:
    """Restarts within the target's window, of the most it allows there."""

    used: int
    allowed: int
    window: float


@dataclass(frozen=True)
class TargetView:
    """One target as every output shows it."""

    target: Target
    state: TargetState
    item: TargetReport | None  # the last run's, when the snapshot's report has this target
    status: Status
    cause: str | None  # the last probe's reason
    did: str | None  # what this run did or could not do, when it did more than wait or probe
    budget: Budget
    next_restart_at: float | None  # the earliest restart allowed, while it is ahead
    pause: Pause | None
    held: bool  # a restart held back because the host starves for memory
    culprit: tuple[MemoryUser, ...]  # the largest memory users when it went down or restarted
    prober_fault: bool
    given_up_reason: str | None  # None unless given up
    notice: str | None

    @property
    def paused(self) -> bool:
        return self.pause is not None

    @property
    def given_up(self) -> bool:
        return self.given_up_reason is not None

    @property
    def health(self) -> Health:
        return self.state.health

    @property
    def since(self) -> float | None:
        return self.state.since

    @property
    def down_since(self) -> float | None:
        return self.state.down_since

    @property
    def journal(self) -> str | None:
        """For a failing target, not paused, with a systemd unit: the command that shows its unit's
        journal from the start of the outage."""
        began = self.down_since or self.since
        unit = systemd_unit(self.target)
        if not self.health.is_failing or self.paused or not unit or began is None:
            return None
        return journal_command(unit, began)


def systemd_unit(target: Target) -> str | None:
    """The systemd unit whose journal tells about the target: the one that restarts it, else
    the one its kind watches (unit_health's); None for a container (its logs are the
    engine's) and for a target with neither."""
    return restarted_as(target).get("unit") or target.kind.watches(target.probe)


def journal_command(unit: str, since: float) -> str:
    """`journalctl -u UNIT --since "<UTC time>"`: every output that suggests it says it so."""
    return f'journalctl -u {unit} --since "{utc(since)}"'


def views(snapshot: Snapshot) -> tuple[TargetView, ...]:
    """Each target of the config, in its order, as the snapshot shows it."""
    items = {} if snapshot.report is None else \
        {item.target.name: item for item in snapshot.report.targets}
    return tuple(target_view(target, snapshot.state.get(target.name), items.get(target.name),
                             snapshot.now)
                 for target in snapshot.config.targets)


def run_views(report: RunReport) -> tuple[TargetView, ...]:
    """Each target of a run, as the run left it."""
    return tuple(target_view(item.target, item.state, item, report.ended_at)
                 for item in report.targets)


def target_view(target: Target, state: TargetState, item: TargetReport | None,
                now: float) -> TargetView:
    pause = Pause(state.paused_until, state.paused_reason or None) \
        if state.paused_until is not None and is_paused(state, now) else None
    notice = item.notice if item is not None else state.last_notice or None
    return TargetView(
        target=target, state=state, item=item,
        status=item.status if item is not None else remembered_status(state, now),
        cause=state.last_reason or None,
        did=_did(item, state),
        budget=Budget(restarts_within(state, target.policy.restart_window, now),
                      target.policy.max_restarts, target.policy.restart_window),
        next_restart_at=next_restart_at(target, state, now),
        pause=pause,
        held=_held(item, state),
        culprit=_culprit(state),
        prober_fault=(item.result.prober_fault or item.decision.action is Action.PROBER_FAULT)
        if item is not None else has_prober_fault(state),
        given_up_reason=(state.given_up_reason or "restarts did not help")
        if state.given_up else None,
        notice=notice,
    )


def next_restart_at(target: Target, state: TargetState, now: float) -> float | None:
    """When the cooldown after the last restart ends, while that is ahead: whether the target
    fails now or not, the time a restart would be allowed if it did."""
    if state.last_restart_at is None:
        return None
    allowed = state.last_restart_at + cooldown_for(target, state)
    return allowed if allowed > now else None


def _did(item: TargetReport | None, state: TargetState) -> str | None:
    if item is None or item.decision.action in (Action.NONE, Action.PAUSED) or (
            item.decision.action is Action.GIVEN_UP and state.given_up):
        return None
    text = f"{item.decision.action.value}: {item.decision.reason}"
    return f"{text}; {item.outcome}" if item.outcome else text


def _held(item: TargetReport | None, state: TargetState) -> bool:
    if item is not None:
        return item.decision.held
    return state.health.is_failing and bool(state.history) and \
        state.history[-1].event is Event.HELD


def _culprit(state: TargetState) -> tuple[MemoryUser, ...]:
    if not state.health.is_failing:
        return ()
    for entry in reversed(state.history):
        if state.since is not None and entry.at < state.since:
            break  # an earlier outage's
        if entry.top_memory:
            return entry.top_memory
    return ()
