"""One locked run, the protocol `check` and `watch` share around the state file.

    take the lock          busy: the run is skipped, left to whoever holds it
    load (size-capped)     a state that cannot be used: the probes run on an empty state and
                           nothing is restarted, since budgets and the lock live in that state
    run once
    save, heartbeat        only where the run writes back (a dry run: a trial's own file);
                           a failed save leaves the report, saying its results are not kept

The caller supplies the run itself (`check` once, the watcher with the state it already holds);
the lock, the fallback, the write rule and their messages are here alone.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace

from prober.core.config import Config
from prober.core.errors import StateError
from prober.core.runs import RunReport, Skipped
from prober.core.tracker import State
from prober.shell.state import LockBusy, StateStore, size_limit

log = logging.getLogger("prober")


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """No cyclic garbage collection during a run; it catches up after.

    A run's objects live only as long as the run. Collecting while it goes on took a fair share
    of a 200-target run here (`make bench`), and each pause stalls probes whose latency is
    measured.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class Loaded:
    """The state as read under the lock, and whether this run writes it back."""

    state: State
    writes: bool


@dataclass(frozen=True)
class Held:
    """The state file while its lock is held."""

    store: StateStore
    config: Config
    dry_run: bool

    def load(self) -> Loaded:
        """Read the state, never more than its config can have written; an unusable file
        raises StateError, which turns the run stateless."""
        found = self.store.signature() is not None
        stored = self.store.load(size_limit(self.config), move_aside=not self.dry_run)
        return Loaded(stored, self.store.writes_back(stored, dry_run=self.dry_run, found=found))

    def save(self, report: RunReport, state: State, *, writes: bool,
             changed: bool = True) -> RunReport:
        """Write the state (when `changed`) and the heartbeat, where the run writes back; a
        failed write is the report's state error, not the run's end."""
        if not writes:
            return report
        unrecorded = None
        if (report.changes or report.restarts_asked or report.events) and not self.dry_run:
            unrecorded = self._record(report, state)
        try:
            if changed:
                self.store.save(replace(state, trial=self.dry_run))
            self.store.touch_heartbeat()
        except StateError as exc:
            # A full or read-only directory fails both: one line says so, not two.
            lost = "results and events are" if unrecorded else "results are"
            return replace(report, state_error=f"{exc}; this run's {lost} not remembered")
        if unrecorded:
            log.error("%s; this run's events are not in the record", unrecorded)
        return report

    def _record(self, report: RunReport, state: State) -> str | None:
        """Append what the run recorded to the outage record, before the state is saved; why
        the record could not be written, or None. The run goes on either way."""
        from prober.shell.record import RecordFile, run_entries, seed

        record = RecordFile.beside(self.store.path, self.config)
        entries = run_entries(report, state)
        if not record.exists():
            entries = [*seed(state, self.config, report.started_at), *entries]
        try:
            record.append(entries, report.ended_at, self.store.directory_owner())
        except StateError as exc:
            return str(exc)
        return None


async def locked_run(
    store: StateStore,
    config: Config,
    *,
    dry_run: bool,
    run: Callable[[Held], Awaitable[RunReport | Skipped]],
    stateless: Callable[[str], Awaitable[RunReport]],
) -> RunReport | Skipped:
    """`run` under the state's lock; `stateless(no_restart_reason)` when the state is
    unusable, its report carrying the error; Skipped when another run holds the lock."""
    with cycle_collection_paused():
        try:
            with store.locked():
                return await run(Held(store, config, dry_run))
        except LockBusy:
            return Skipped(f"another prober run holds {store.lock_path}; leaving this run to it")
        except StateError as exc:
            report = await stateless(f"no restarts while the state is unusable ({exc.message})")
            return replace(report, state_error=f"{exc}; the probes ran, nothing was restarted")
