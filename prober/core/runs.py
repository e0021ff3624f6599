"""What one run found and did: the types every output (text, JSON, Nagios, metrics, the status
page, notifications) reads. Plain data; `check.py` builds them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from prober.core.config import Config, Target
from prober.core.policy import Action, Decision
from prober.core.psi import MemoryUser, Pressure
from prober.core.results import ProbeResult
from prober.core.tracker import Change, Health, State, TargetState, has_prober_fault, is_paused

if TYPE_CHECKING:
    from prober.core.record import Entry


class Status(StrEnum):
    """A target's or a run's status, Nagios style; the values are the JSON `status` field."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES = {Status.OK: 0, Status.WARNING: 1, Status.CRITICAL: 2, Status.UNKNOWN: 3}


def worst(statuses: list[Status]) -> Status:
    for status in (Status.UNKNOWN, Status.CRITICAL, Status.WARNING):
        if status in statuses:
            return status
    return Status.OK


@dataclass(frozen=True)
class TargetReport:
    """Everything one run found and did about one target."""

    target: Target
    result: ProbeResult
    health: Health
    decision: Decision
    state: TargetState
    outcome: str | None = None  # how a restart went, one line
    notice: str | None = None  # a warning that is no failure: a certificate about to expire
    blamed_on: str | None = None  # the failing dependency its failure is blamed on

    @property
    def status(self) -> Status:
        if self.decision.action is Action.PAUSED:  # an operator is at work: say, never page
            return Status.OK if self.result.ok else Status.WARNING
        if self.decision.action is Action.PROBER_FAULT:  # the admin's to fix, every run
            return Status.CRITICAL if self.health is Health.DOWN else Status.WARNING
        if self.decision.action.is_critical or self.health is Health.DOWN:
            return Status.CRITICAL
        if self.health in (Health.FAILING, Health.RECOVERING) or self.notice:
            return Status.WARNING
        return Status.OK


def remembered_status(state: TargetState, now: float) -> Status:
    """A target's status as the last run left it, judged as `TargetReport.status` judges it:
    what `prober status` exits with."""
    if is_paused(state, now):
        return Status.WARNING if state.last_ok is False else Status.OK
    if has_prober_fault(state):
        return Status.CRITICAL if state.health is Health.DOWN else Status.WARNING
    if state.health is Health.DOWN or state.given_up:
        return Status.CRITICAL
    if state.health in (Health.FAILING, Health.RECOVERING) or state.last_notice:
        return Status.WARNING
    if state.health is Health.UNKNOWN:
        return Status.UNKNOWN  # never judged, or reset since
    return Status.OK


STALE_AFTER_RUNS = 10
STALE_AFTER_AT_LEAST = 300.0  # past the longest run the default policy makes (restart + verify)


def stale_after(config: Config) -> float:
    """How old the last run may be before what it left is too old to trust."""
    return max(STALE_AFTER_RUNS * config.interval, STALE_AFTER_AT_LEAST)


def too_old(config: Config, last_run_at: float | None, now: float) -> bool:
    return last_run_at is None or now - last_run_at > stale_after(config)


def remembered(config: Config, state: State, now: float) -> Status:
    """`prober status`'s verdict: the worst target's (a target down before one never judged),
    or unknown if no run is recent enough to trust (state.updated_at: the last run's time)."""
    if too_old(config, state.updated_at, now):
        return Status.UNKNOWN
    statuses = [remembered_status(state.get(t.name), now) for t in config.targets]
    return Status.CRITICAL if Status.CRITICAL in statuses else worst(statuses)


@dataclass(frozen=True)
class RunReport:
    targets: tuple[TargetReport, ...]
    dry_run: bool = False
    started_at: float = 0.0
    duration: float = 0.0
    pressure: Pressure | None = None
    state_error: str | None = None  # the state could not be used: the run is unknown (exit 3)
    changes: tuple[Change, ...] = ()  # what this run recorded in the targets' histories
    top_memory: tuple[MemoryUser, ...] = ()  # the largest memory users, when targets starve
    restarts_asked: tuple[tuple[str, float], ...] = ()  # (target, when) asked of the actuator
    events: tuple[Entry, ...] = ()  # what concerns no one target: memory pressure, systemd

    @property
    def status(self) -> Status:
        if self.state_error is not None:
            return Status.UNKNOWN
        return worst([t.status for t in self.targets])

    @property
    def ended_at(self) -> float:
        return self.started_at + self.duration


@dataclass(frozen=True)
class Skipped:
    """A run that chose not to probe, and why."""

    reason: str


@dataclass(frozen=True)
class ConfigReload:
    """The watcher's config: whether its last reload loaded, and when a config last did. A
    rejected reload leaves the watcher on the config it had, `error` saying why."""

    successful: bool
    last_success_at: float
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """What the watcher knows between runs, as every output (metrics, `/status.json`, the status
    page) renders it: the config, the state, the last run's report (None before the first run)
    and the time of rendering."""

    config: Config
    state: State
    report: RunReport | None
    now: float
    reload: ConfigReload | None = None  # the watcher's; a one-shot run has no reload
    # The outage record, read on demand; it gives None while there is none to read.
    record: Callable[[], Sequence[Entry] | None] | None = None

    @classmethod
    def after_run(cls, config: Config, report: RunReport, now: float) -> Snapshot:
        """The snapshot a one-shot run leaves: the state its report carries, for its targets."""
        targets = {item.target.name: item.state for item in report.targets}
        return cls(config, State(targets=targets, updated_at=report.ended_at), report, now)


def pressure_threshold(config: Config) -> float:
    """The config's default `pressure_threshold` (percent of memory `some avg10`; 0: off)."""
    return config.default_policy.pressure_threshold
