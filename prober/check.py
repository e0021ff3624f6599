"""One run end to end: probe, track, decide, act, remember. `watch` loops over it.

This is the imperative shell around the pure core (tracker, policy): it owns the clock, the
lock, the state file and the actuator.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from prober import policy, tracker
from prober.config import Bus, Config, NotifyEvent, Target, format_duration
from prober.errors import ProberError, StateError
from prober.policy import Action, Decision, Outcome, UnitFacts
from prober.pressure import Pressure, read_memory_pressure
from prober.probe import probe_all, probe_one
from prober.results import ProbeResult
from prober.state import LockBusy, StateStore
from prober.tracker import Health, State, TargetState, Verdict

log = logging.getLogger("prober")

VERIFY_INTERVAL = 0.5
PRESSURE_WORTH_SAYING = 10.0  # percent of the last 10 s that some task stalled on memory


class Status(StrEnum):
    """The run's overall status, Nagios style; the values are the JSON `status` field."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}[self.value]


@dataclass(frozen=True)
class RestartResult:
    """What the actuator reports about one restart."""

    ok: bool  # the restart job completed ("done")
    detail: str  # one line: "job done in 0.2s", "job failed", "via systemctl: ..."
    main_pid_before: int = 0
    main_pid_after: int = 0


class Actuator(Protocol):
    """What the run needs from systemd. `systemd.SystemdActuator` is the real one."""

    async def unit_facts(self, unit: str, bus: Bus) -> UnitFacts: ...

    async def restart(self, target: Target) -> RestartResult: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class TargetReport:
    """Everything one run found and did about one target."""

    target: Target
    result: ProbeResult
    health: Health
    decision: Decision
    state: TargetState
    outcome: str | None = None  # how a restart went, one line

    @property
    def status(self) -> Status:
        if self.decision.action.is_critical or self.health is Health.DOWN:
            return Status.CRITICAL
        if self.health in (Health.FAILING, Health.RECOVERING):
            return Status.WARNING
        return Status.OK


@dataclass(frozen=True)
class RunReport:
    targets: tuple[TargetReport, ...]
    dry_run: bool = False
    started_at: float = 0.0
    duration: float = 0.0
    pressure: Pressure | None = None
    state_error: str | None = None  # the state could not be used: the run is unknown (exit 3)

    @property
    def status(self) -> Status:
        if self.state_error is not None:
            return Status.UNKNOWN
        statuses = [t.status for t in self.targets]
        for status in (Status.CRITICAL, Status.WARNING):
            if status in statuses:
                return status
        return Status.OK


def select_targets(config: Config, names: Sequence[str]) -> tuple[Target, ...]:
    """The targets named (all when none are), in config order."""
    if not names:
        return config.targets
    wanted = set(names)
    return tuple(t for t in config.targets if t.name in wanted)


def _needs_facts(target: Target, verdict: Verdict, state: TargetState) -> bool:
    return verdict.wants_restart and target.unit is not None and not state.given_up


async def _gather_facts(
    actuator_factory: Callable[[], Actuator] | None,
    wanted: Sequence[Target],
) -> tuple[Actuator | None, dict[str, UnitFacts], dict[str, str]]:
    if not wanted or actuator_factory is None:
        return None, {}, {t.name: "no actuator" for t in wanted}
    actuator = actuator_factory()
    facts: dict[str, UnitFacts] = {}
    errors: dict[str, str] = {}
    answers = await asyncio.gather(
        *(actuator.unit_facts(t.unit or "", t.policy.bus) for t in wanted),
        return_exceptions=True,
    )
    for target, answer in zip(wanted, answers, strict=True):
        if isinstance(answer, UnitFacts):
            facts[target.name] = answer
        elif isinstance(answer, ProberError):
            errors[target.name] = str(answer)
        else:
            raise answer
    return actuator, facts, errors


async def verify(target: Target, budget: float) -> ProbeResult:
    """Probe again until the target passes or `budget` seconds have gone."""
    deadline = time.monotonic() + budget
    result = await probe_one(target)
    while not result.ok and time.monotonic() + VERIFY_INTERVAL < deadline:
        await asyncio.sleep(VERIFY_INTERVAL)
        result = await probe_one(target)
    return result


async def _restart_and_verify(
    actuator: Actuator, target: Target
) -> tuple[Outcome, str, ProbeResult | None]:
    log.warning("target=%s unit=%s: restarting", target.name, target.unit)
    try:
        restarted = await actuator.restart(target)
    except ProberError as exc:
        log.error("target=%s unit=%s: restart refused: %s", target.name, target.unit, exc)
        return Outcome.JOB_FAILED, str(exc), None
    if not restarted.ok:
        log.error("target=%s unit=%s: restart failed: %s", target.name, target.unit,
                  restarted.detail)
        return Outcome.JOB_FAILED, f"restart failed: {restarted.detail}", None
    result = await verify(target, target.policy.verify_timeout)
    if result.ok:
        log.info("target=%s unit=%s: recovered after restart (%s)", target.name, target.unit,
                 restarted.detail)
        return Outcome.RECOVERED, f"restarted ({restarted.detail}); answering again", result
    log.error("target=%s unit=%s: still failing after restart: %s", target.name, target.unit,
              result.reason)
    return (Outcome.NOT_RECOVERED,
            f"restarted ({restarted.detail}); still failing: {result.reason}", result)


async def _restart_units(
    actuator: Actuator | None, targets: Sequence[Target], decisions: Sequence[Decision],
    clock: Callable[[], float],
) -> dict[str, tuple[Outcome, str, ProbeResult | None, float]]:
    """Restart every unit some decision asks for, once each and all at once, so that a run's
    deadline holds one restart_timeout + verify_timeout however many units are down."""
    chosen: dict[str, Target] = {}
    for target, decision in zip(targets, decisions, strict=True):
        if decision.action is Action.RESTART and target.unit and target.unit not in chosen:
            chosen[target.unit] = target
    if actuator is None or not chosen:
        return {}

    async def one(target: Target) -> tuple[Outcome, str, ProbeResult | None, float]:
        outcome, text, verified = await _restart_and_verify(actuator, target)
        return outcome, text, verified, clock()

    done = await asyncio.gather(*(one(t) for t in chosen.values()))
    return dict(zip(chosen, done, strict=True))


async def run_once(
    config: Config,
    state: State,
    clock: Callable[[], float],
    actuator_factory: Callable[[], Actuator] | None,
    *,
    dry_run: bool = False,
    only: Sequence[str] = (),
    no_restart_reason: str = "",
) -> tuple[State, RunReport]:
    """One check: the new state and what was found and done."""
    started = clock()
    targets = select_targets(config, only)
    results = await probe_all(targets)
    now = clock()
    given_up_before = {name for name, t in state.targets.items() if t.given_up}
    state, verdicts = tracker.fold(config, state, results, now)
    _log_probe_results(state, verdicts)
    for name in sorted(given_up_before):
        if not state.get(name).given_up:
            log.warning("target=%s: passing again: restarts re-armed", name)
    wanted = [t for t, v in zip(targets, verdicts, strict=True)
              if _needs_facts(t, v, state.get(t.name))]
    actuator, facts, errors = await _gather_facts(actuator_factory, wanted)
    if no_restart_reason:
        errors = {t.name: no_restart_reason for t in wanted}
    try:
        decisions = [
            policy.decide(target, verdict, state.get(target.name), facts.get(target.name), now,
                          dry_run=dry_run, facts_error=errors.get(target.name, ""))
            for target, verdict in zip(targets, verdicts, strict=True)
        ]
        outcomes = await _restart_units(actuator, targets, decisions, clock)
        reports = []
        for target, verdict, planned in zip(targets, verdicts, decisions, strict=True):
            decision = planned
            target_state = policy.apply_decision(target, state.get(target.name), decision, now)
            outcome_text = None
            if decision.action is Action.RESTART and target.unit in outcomes:
                outcome, outcome_text, verified, at = outcomes[target.unit]
                target_state = policy.apply_restart(target, target_state, outcome, outcome_text,
                                                    at, verified)
                if outcome is Outcome.JOB_FAILED:
                    decision = Decision(target.name, Action.RESTART_FAILED, outcome_text,
                                        target.unit)
            _log_decision(target, decision)
            state = state.with_target(target.name, target_state)
            reports.append(TargetReport(
                target=target, result=verdict.result, health=target_state.health,
                decision=decision, state=target_state, outcome=outcome_text,
            ))
    finally:
        if actuator is not None:
            await actuator.close()
    if config.notify is not None:
        from prober.notify import deliver

        await deliver(config.notify, notifications(reports, now))
    pressure = read_memory_pressure()
    if pressure is not None and pressure.some_avg10 >= PRESSURE_WORTH_SAYING and any(
            not r.result.ok for r in reports):
        log.warning("%s while targets fail", pressure.describe())
    report = RunReport(targets=tuple(reports), dry_run=dry_run, started_at=started,
                       duration=clock() - started, pressure=pressure)
    return state, report


_NOTIFIED = {e.value for e in NotifyEvent}


def notifications(reports: Sequence[TargetReport], since: float) -> list[dict[str, Any]]:
    """The events this run recorded (restart, restart-failed, given-up, recovered)."""
    from prober.notify import event_payload

    out = []
    for item in reports:
        for change in item.state.history:
            if change.at >= since and change.event.value in _NOTIFIED:
                out.append(event_payload(NotifyEvent(change.event.value), item.target.name,
                                         item.target.unit, change.reason, change.at))
    return out


def _log_probe_results(state: State, verdicts: Sequence[Verdict]) -> None:
    for verdict in verdicts:
        result = verdict.result
        if not result.ok:
            log.warning("target=%s: probe failed (%s): %s [%d in a row]", verdict.name,
                        result.failure, result.reason, verdict.consecutive_failures)
        for change in state.get(verdict.name).history[-2:]:
            if change.at != state.updated_at:
                continue
            if change.event is tracker.Event.DOWN:
                log.error("target=%s: down: %d failed runs in a row", verdict.name,
                          verdict.consecutive_failures)
            elif change.event is tracker.Event.RECOVERED:
                log.info("target=%s: recovered: %s", verdict.name, result.reason)


def _log_decision(target: Target, decision: Decision) -> None:
    action = decision.action
    if action in (Action.NONE, Action.RESTART, Action.DEPENDENCY):
        return
    level = logging.WARNING if action in (Action.WAIT, Action.WOULD_RESTART) else logging.ERROR
    log.log(level, "target=%s unit=%s: %s: %s", target.name, target.unit or "-", action.value,
            decision.reason)


@dataclass(frozen=True)
class Skipped:
    """A run that chose not to probe, and why."""

    reason: str


def is_fresh(state: State, max_age: float, now: float) -> bool:
    """Whether another run (the timer's) wrote the state less than `max_age` ago."""
    return state.updated_at is not None and 0 <= now - state.updated_at < max_age


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """No cyclic garbage collection during a run; it catches up after.

    A run's objects live only as long as the run. Collecting while it goes on took 90-120 ms of
    a 200-target run here (of 0.5-0.7 s), and each pause stalls probes whose latency is measured.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    """Lock, load, run once, save; or say why the run was skipped.

    An unusable state file (read-only or full disk, a path that cannot be created) does not stop
    the probes: they run and are reported, but nothing is restarted, since restart budgets and
    the lock against concurrent runs live in that state. The report carries the error.
    """
    with cycle_collection_paused():
        return _run_check_locked(config, store, actuator_factory, dry_run=dry_run, only=only,
                                 if_stale=if_stale, clock=clock)


def _run_check_locked(
    config: Config,
    store: StateStore,
    actuator_factory: Callable[[], Actuator] | None,
    *,
    dry_run: bool,
    only: Sequence[str],
    if_stale: float | None,
    clock: Callable[[], float],
) -> RunReport | Skipped:
    try:
        with store.locked():
            state = tracker.prune(store.load(), config.names)
            if if_stale is not None and is_fresh(state, if_stale, clock()):
                return Skipped(f"the state was updated less than {format_duration(if_stale)} "
                               "ago: the timer is running, nothing to do")
            new_state, report = asyncio.run(
                run_once(config, state, clock, actuator_factory, dry_run=dry_run, only=only)
            )
            try:
                store.save(tracker.trim_history(new_state, config.history))
            except StateError as exc:
                return replace(report, state_error=f"{exc}; this run's results are not "
                               "remembered")
            return report
    except LockBusy:
        return Skipped(f"another prober run holds {store.lock_path}; leaving this run to it")
    except StateError as exc:
        _, report = asyncio.run(run_once(
            config, State(), clock, None, dry_run=dry_run, only=only,
            no_restart_reason=f"no restarts while the state is unusable ({exc.message})",
        ))
        return replace(report, state_error=f"{exc}; the probes ran, nothing was restarted")


def watch(
    config: Config,
    store: StateStore,
    actuator_factory: Callable[[], Actuator] | None,
    *,
    interval: float,
    dry_run: bool = False,
    on_report: Callable[[RunReport | Skipped], None] = lambda _: None,
    runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run checks forever (or `runs` times), starting `interval` apart.

    Tells systemd READY=1 once and WATCHDOG=1 after every run and during the pauses, so a hung
    watcher is restarted by systemd (WatchdogSec= in units/prober-watch.service).
    """
    from prober.sdnotify import notify, watchdog_interval

    ping = watchdog_interval()
    notify("READY=1")
    done = 0
    while runs is None or done < runs:
        # Runs start `interval` apart (or at once after a run that overran), so a hung target
        # delays the next run by less than its timeout.
        wake = clock() + interval
        result = run_check(config, store, actuator_factory, dry_run=dry_run)
        done += 1
        on_report(result)
        summary = result.reason if isinstance(result, Skipped) else \
            f"{result.status.value}: {len(result.targets)} targets in {result.duration:.2f}s"
        notify(f"WATCHDOG=1\nSTATUS=last run {summary}")
        if runs is not None and done >= runs:
            break
        while (left := wake - clock()) > 0:
            sleep(min(left, ping) if ping else left)
            if ping:
                notify("WATCHDOG=1")
