"""One run end to end: probe, track, decide, act, remember. `watch` loops over it.

This is the imperative shell around the pure core (tracker, policy): it owns the clock, the
lock, the state file and the actuator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from prober.core import policy, tracker
from prober.core.actuator import Actuator, Facts, RestartKey, actuator_of, restart_key
from prober.core.config import Config, Target
from prober.core.errors import ActuatorFault, ProberError
from prober.core.keys import format_duration
from prober.core.policy import Action, Applied, Decision, Outcome, RestartOutcome
from prober.core.psi import describe_users
from prober.core.results import FailureClass, ProbeResult
from prober.core.runs import RunReport, Skipped, TargetReport
from prober.core.tracker import Change, Event, State, TargetState, Verdict
from prober.memory.picture import MemoryPicture, read_memory, top_memory_now
from prober.probes.probing import Probing
from prober.shell.locked import Held, locked_run
from prober.shell.state import StateStore

if TYPE_CHECKING:
    from prober.core.record import Entry

log = logging.getLogger("prober")


def select_targets(config: Config, names: Sequence[str]) -> tuple[Target, ...]:
    """The targets named (all when none are), in config order."""
    if not names:
        return config.targets
    wanted = set(names)
    return tuple(t for t in config.targets if t.name in wanted)


async def _confirm_gone(config: Config, targets: Sequence[Target], folded: tracker.Folded,
                        probing: Probing, clock: Callable[[], float]) -> tracker.Folded:
    """Probe again, every confirm_interval, each target that nothing listens on, until it
    passes, fails some other way, or is down: each probe counts as one more failed run, so
    that this run acts on what would otherwise take failure_threshold runs to see."""

    def left(target: Target) -> int:
        verdict = next(v for v in folded.verdicts if v.name == target.name)
        return tracker.confirmations_left(target, folded.state.get(target.name),
                                          verdict.result, clock())

    async def confirm_one(target: Target) -> None:
        nonlocal folded
        while left(target) > 0:
            await asyncio.sleep(target.policy.confirm_interval)
            log.debug("target=%s: probing again to confirm that nothing listens", target.name)
            folded = tracker.confirm(config, folded, [await probing.probe(target)], clock())
            _log_results([v for v in folded.verdicts if v.name == target.name])

    due = [target for target in targets if left(target) > 0]
    if len(due) == 1:  # no task to start and wait for
        await confirm_one(due[0])
    elif due:
        async with asyncio.TaskGroup() as group:
            for target in due:
                group.create_task(confirm_one(target))
    return folded


def _needs_facts(target: Target, verdict: Verdict, state: TargetState) -> bool:
    return verdict.wants_restart and target.unit is not None and not state.given_up


@dataclass
class _Facts:
    """What the actuators said about what they restart for the targets that may need it."""

    actuator: Actuator | None
    facts: dict[str, Facts] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)  # prober's own: see ActuatorFault

    async def close(self) -> None:
        if self.actuator is not None:
            await self.actuator.close()


async def _gather_facts(
    actuator_factory: Callable[[], Actuator] | None,
    wanted: Sequence[Target],
) -> _Facts:
    if not wanted or actuator_factory is None:
        return _Facts(None, errors={t.name: "no actuator" for t in wanted})
    gathered = _Facts(actuator_factory())
    assert gathered.actuator is not None
    answers = await asyncio.gather(
        *(gathered.actuator.facts(t) for t in wanted),
        return_exceptions=True,
    )
    for target, answer in zip(wanted, answers, strict=True):
        if isinstance(answer, Facts):
            gathered.facts[target.name] = answer
        elif isinstance(answer, ActuatorFault):
            gathered.faults[target.name] = str(answer)
        elif isinstance(answer, ProberError):
            gathered.errors[target.name] = str(answer)
        else:
            await gathered.close()
            raise answer
    return gathered


async def _judged_by_managers(
    actuator_factory: Callable[[], Actuator] | None, targets: Sequence[Target],
    results: Sequence[ProbeResult],
) -> list[ProbeResult]:
    """The results with the manager's own health check counted where a target's actuator
    `judges` it: a passing probe of a target its manager calls failing fails; a manager
    prober cannot ask is prober's fault."""
    judged = [t for t in targets if t.unit is not None and actuator_of(t).judges(t)]
    if not judged or actuator_factory is None:
        return list(results)
    gathered = await _gather_facts(actuator_factory, judged)
    await gathered.close()
    return [_with_manager_health(result, gathered.facts.get(target.name),
                                 gathered.faults.get(target.name)
                                 or gathered.errors.get(target.name))
            for target, result in zip(targets, results, strict=True)]


def _with_manager_health(result: ProbeResult, facts: Facts | None, fault: str | None
                         ) -> ProbeResult:
    if not result.ok:
        return result
    if facts is not None and facts.failing:
        return replace(result, ok=False, reason=facts.failing, failure=FailureClass.ERROR)
    if fault:
        return replace(result, ok=False, reason=fault, failure=FailureClass.PROBER_FAULT)
    return result


RestartRequested = Callable[[Target, float], None]


async def _restart_and_verify(
    actuator: Actuator, probing: Probing, target: Target, clock: Callable[[], float],
    requested: RestartRequested,
) -> RestartOutcome:
    log.warning("target=%s unit=%s: restarting", target.name, target.unit)
    requested(target, clock())
    try:
        restarted = await actuator.restart(target)
    except ActuatorFault as exc:
        log.error("target=%s unit=%s: restart not done, a prober fault: %s", target.name,
                  target.unit, exc)
        return RestartOutcome(Outcome.PROBER_FAULT, str(exc), clock())
    except ProberError as exc:
        log.error("target=%s unit=%s: restart refused: %s", target.name, target.unit, exc)
        return RestartOutcome(Outcome.JOB_FAILED, str(exc), clock())
    if restarted.stopped:
        log.warning("target=%s unit=%s: not restarted: %s", target.name, target.unit,
                    restarted.detail)
        return RestartOutcome(Outcome.STOPPED, restarted.detail, clock())
    if not restarted.ok:
        log.error("target=%s unit=%s: restart failed: %s", target.name, target.unit,
                  restarted.detail)
        return RestartOutcome(Outcome.JOB_FAILED, f"restart failed: {restarted.detail}", clock())
    result = await probing.verify(target, target.policy.verify_timeout)
    if result.ok:
        log.info("target=%s unit=%s: recovered after restart (%s)", target.name, target.unit,
                 restarted.detail)
        return RestartOutcome(Outcome.RECOVERED,
                              f"restarted ({restarted.detail}); answering again", clock(), result)
    log.error("target=%s unit=%s: still failing after restart: %s", target.name, target.unit,
              result.reason)
    return RestartOutcome(Outcome.NOT_RECOVERED,
                          f"restarted ({restarted.detail}); still failing: {result.reason}",
                          clock(), result)


async def _restart_units(
    actuator: Actuator | None, probing: Probing, targets: Sequence[Target],
    decisions: Sequence[Decision], clock: Callable[[], float], requested: RestartRequested,
) -> dict[RestartKey, RestartOutcome]:
    """Restart every unit some decision asks for, once each and all at once, so that a run's
    deadline holds one restart_timeout + verify_timeout however many units are down."""
    chosen: dict[RestartKey, Target] = {}
    for target, decision in zip(targets, decisions, strict=True):
        if decision.action is Action.RESTART and target.unit and \
                restart_key(target) not in chosen:
            chosen[restart_key(target)] = target
    if actuator is None or not chosen:
        return {}
    done = await asyncio.gather(
        *(_restart_and_verify(actuator, probing, t, clock, requested) for t in chosen.values()))
    return dict(zip(chosen, done, strict=True))


def _apply(target: Target, state: TargetState, decision: Decision,
           restarts: Mapping[RestartKey, RestartOutcome], now: float) -> Applied:
    restarted = restarts.get(restart_key(target))
    if decision.action is Action.RESTART and restarted is not None:
        return policy.apply_restart(target, state, decision, restarted)
    return policy.apply_decision(target, state, decision, now)


async def run_once(
    config: Config,
    state: State,
    clock: Callable[[], float],
    actuator_factory: Callable[[], Actuator] | None,
    *,
    dry_run: bool = False,
    only: Sequence[str] = (),
    no_restart_reason: str = "",
    probing: Probing | None = None,
    on_restart_requested: RestartRequested = lambda target, at: None,
    confirm: bool = True,
) -> tuple[State, RunReport]:
    """One check: the new state and what was found and done.

    `probing` is the watcher's, kept across runs; without it the run has its own.
    `on_restart_requested` hears of each restart as it is asked for, so that a run cancelled
    midway can still record it. Without `confirm`, a target that nothing listens on is not
    probed again within the run (the watcher's next cycle comes soon instead).
    """
    if probing is None:
        async with Probing() as own:
            return await run_once(config, state, clock, actuator_factory, dry_run=dry_run,
                                  only=only, no_restart_reason=no_restart_reason, probing=own,
                                  on_restart_requested=on_restart_requested, confirm=confirm)
    started = clock()
    asked, requested = _noted(on_restart_requested)
    targets = select_targets(config, only)
    probing.recall(targets, state)
    results = await _judged_by_managers(actuator_factory, targets,
                                        await probing.probe_all(targets))
    now = clock()
    before = state
    folded = tracker.fold(config, state, results, now)
    _log_results(folded.verdicts)
    if confirm:
        confirmed = await _confirm_gone(config, targets, folded, probing, clock)
        if confirmed is not folded:  # probed again: the decisions are taken as of now
            folded, now = confirmed, clock()
    state = folded.state
    changes = list(folded.changes)
    _log_changes(before, changes)  # what the policy adds below logs itself
    wanted = [t for t, v in zip(targets, folded.verdicts, strict=True)
              if _needs_facts(t, v, state.get(t.name))]
    gathered = await _gather_facts(actuator_factory, wanted)
    if no_restart_reason:
        gathered.errors = {t.name: no_restart_reason for t in wanted}
        gathered.facts, gathered.faults = {}, {}
    memory = read_memory(targets, folded.verdicts, gathered.facts)
    try:
        decisions = [
            policy.decide(target, verdict, state.get(target.name),
                          gathered.facts.get(target.name), now, dry_run=dry_run,
                          facts_error=gathered.errors.get(target.name, ""),
                          facts_fault=gathered.faults.get(target.name, ""),
                          memory=memory.for_target(target.name))
            for target, verdict in zip(targets, folded.verdicts, strict=True)
        ]
        decisions = policy.one_restart_under_pressure(
            targets, decisions, memory.host_pressure, memory.culprit)
        restarts = await _restart_units(gathered.actuator, probing, targets, decisions, clock,
                                        requested)
    finally:
        await gathered.close()
    reports = []
    for target, verdict, decision in zip(targets, folded.verdicts, decisions, strict=True):
        applied = _apply(target, state.get(target.name), decision, restarts, now)
        changes += applied.changes
        _log_decision(target, applied.decision)
        notice = target.kind.notice(target.probe, verdict.result, now)
        target_state = replace(applied.state, last_notice=notice or "")  # for `prober status`
        state = state.with_target(target.name, target_state)
        restarted = restarts.get(restart_key(target)) if decision.action is Action.RESTART \
            else None
        reports.append(TargetReport(
            target=target, result=verdict.result, health=applied.state.health,
            decision=applied.decision, state=target_state,
            outcome=None if restarted is None else restarted.detail, notice=notice,
            blamed_on=verdict.blamed_on,
        ))
    state, events = _host_events(config, state, memory, _SystemdRun(targets, folded.verdicts,
                                                                     decisions), now)
    state, changes = tracker.with_top_memory(state, changes, memory.top)
    if memory.top:
        log.warning("memory pressure while targets fail: %s; the largest memory users: %s",
                    "; ".join(memory.worth_saying), describe_users(memory.top))
    if config.notify is not None and not dry_run:
        from prober.outputs.notify import deliver, payloads

        causes = {item.target.name: item.result.reason for item in reports}
        await deliver(config.notify, payloads(changes, config, causes, state.targets, top_memory=[
            {"name": u.name, "bytes": u.bytes} for u in memory.top]))
    report = RunReport(targets=tuple(reports), dry_run=dry_run, started_at=started,
                       duration=clock() - started, pressure=memory.host_pressure,
                       changes=tuple(changes), top_memory=memory.top,
                       restarts_asked=tuple(asked), events=events)
    return state, report


# Decisions taken on what the actuator said of the unit: it could be asked.
_ASKED = (Action.RESTART, Action.RESTART_FAILED, Action.WAIT, Action.UNIT_NOT_ACTIVE)


@dataclass(frozen=True)
class _SystemdRun:
    """What a run's targets, their verdicts and decisions tell of systemd; only targets that
    systemd restarts ask it about their units (a container's engine is not systemd)."""

    targets: Sequence[Target]
    verdicts: Sequence[Verdict]
    decisions: Sequence[Decision]

    def _asked(self) -> list[Decision]:
        return [d for t, d in zip(self.targets, self.decisions, strict=True)
                if t.unit is not None and actuator_of(t).name == "systemd"]

    def unreachable(self) -> str | None:
        return next((d.reason for d in self._asked() if d.action is Action.UNIT_UNKNOWN), None)

    def reached(self) -> bool:
        from prober.core.record import systemd_reached

        read = [v.result for t, v in zip(self.targets, self.verdicts, strict=True)
                if t.kind.name == "unit_health"]
        return systemd_reached(asked=any(d.action in _ASKED for d in self._asked()),
                               read=any(not r.prober_fault for r in read),
                               faulted=any(r.prober_fault for r in read),
                               failing=any(not v.result.ok for v in self.verdicts))


def _host_events(config: Config, state: State, memory: MemoryPicture, systemd: _SystemdRun,
                 now: float) -> tuple[State, tuple[Entry, ...]]:
    """The state's memory-pressure episode and systemd's reachability after this run, and
    what the outage record says of them."""
    threshold = config.default_policy.pressure_threshold
    psi = None if memory.host_pressure is None else memory.host_pressure.some_avg10
    unreachable = systemd.unreachable()
    if state.pressure is None and (psi is None or psi < threshold or threshold <= 0) and \
            state.systemd_unreachable_since is None and unreachable is None:
        return state, ()  # the healthy run's way: nothing to record, nothing imported for it
    from prober.core import record

    users = memory.top
    if record.pressure_peaks(state.pressure, psi, threshold) and not users:
        users = top_memory_now()
    episode, entries = record.pressure_step(state.pressure, psi, threshold, now, users)
    since, more = record.systemd_step(state.systemd_unreachable_since, unreachable,
                                      systemd.reached(), now)
    return (replace(state, pressure=episode, systemd_unreachable_since=since),
            (*entries, *more))


def _noted(then: RestartRequested) -> tuple[list[tuple[str, float]], RestartRequested]:
    """`then`, noting each restart asked (target, when) in the list first, for the record."""
    asked: list[tuple[str, float]] = []

    def requested(target: Target, at: float) -> None:
        asked.append((target.name, at))
        then(target, at)
    return asked, requested


def _log_results(verdicts: Sequence[Verdict]) -> None:
    for verdict in verdicts:
        result = verdict.result
        if result.ok:
            continue
        if result.prober_fault:
            log.error("target=%s: not judged, a prober fault: %s", verdict.name, result.reason)
        elif verdict.paused:
            log.info("target=%s: probe failed (%s), paused: %s", verdict.name, result.failure,
                     result.reason)
        else:
            log.warning("target=%s: probe failed (%s): %s [%d in a row]", verdict.name,
                        result.failure, result.reason, verdict.consecutive_failures)


def _log_changes(before: State, changes: Sequence[Change]) -> None:
    for change in changes:
        name, entry = change.target, change.transition
        if entry.event is Event.DOWN:
            log.error("target=%s: down: %s", name, entry.reason)
        elif entry.event is Event.RECOVERED:
            log.info("target=%s: recovered: %s", name, entry.reason)
            if before.get(name).given_up:
                log.warning("target=%s: passing again: restarts re-armed", name)


def _log_decision(target: Target, decision: Decision) -> None:
    action = decision.action
    if action in (Action.NONE, Action.RESTART, Action.DEPENDENCY, Action.PAUSED):
        return
    level = logging.WARNING if action in (Action.WAIT, Action.WOULD_RESTART) else logging.ERROR
    log.log(level, "target=%s unit=%s: %s: %s", target.name, target.unit or "-", action.value,
            decision.reason)


def is_fresh(last_run_at: float | None, max_age: float, now: float) -> bool:
    """Whether another run (the timer's, the watcher's) happened less than `max_age` ago."""
    return last_run_at is not None and 0 <= now - last_run_at < max_age


def run_check(
    config: Config,
    store: StateStore,
    actuator_factory: Callable[[], Actuator] | None,
    *,
    dry_run: bool = False,
    only: Sequence[str] = (),
    if_stale: float | None = None,
    clock: Callable[[], float] = time.time,
) -> RunReport | Skipped:
    """Lock, load, run once, save (prober/shell/locked.py); or say why the run was skipped. A
    dry run never notifies. `if_stale` skips the run when another updated the state that
    recently."""

    async def locked(held: Held) -> RunReport | Skipped:
        loaded = held.load()
        state = tracker.prune(loaded.state, config.names)
        if if_stale is not None and is_fresh(store.last_run_at(state), if_stale, clock()):
            return Skipped(f"the state was updated less than {format_duration(if_stale)} "
                           "ago: the timer is running, nothing to do")
        new_state, report = await run_once(config, state, clock, actuator_factory,
                                           dry_run=dry_run, only=only)
        return held.save(report, tracker.trim_history(new_state, config.history),
                         writes=loaded.writes)

    async def stateless(no_restart_reason: str) -> RunReport:
        _, report = await run_once(config, State(), clock, None, dry_run=dry_run, only=only,
                                   no_restart_reason=no_restart_reason)
        return report

    return asyncio.run(locked_run(store, config, dry_run=dry_run, run=locked,
                                  stateless=stateless))
