"""`prober watch`: checks in a loop, for units/prober-watch.service (Type=notify, a watchdog).

One event loop and one set of probe contexts (httpx clients, SSL contexts) serve the process's
whole life; every probe still opens a fresh connection. Each cycle:

- takes the state lock, or skips the cycle when another run (`check`, the cron fallback) holds it;
- uses the state it already has, unless another process (`reset`, `pause`, a `check`) changed
  the file since: then it reads it again, so their changes are never overwritten by a stale copy;
- runs once, and writes the state only when its essentials (tracker.essential) changed, not
  every cycle: a crash loses the run in flight and, of earlier runs, only what essential leaves
  out (check times, latencies, a healthy target's passes in a row). That a run happened is
  said by the mtime of `state.json.last-run` beside it instead (`check --if-stale` and
  `status` read it);
- tells systemd WATCHDOG=1 and a STATUS= line, and logs a summary only when the status changes
  or something happened.

SIGHUP re-reads the config between runs: RELOADING=1, then READY=1; a config that does not load
changes nothing but the STATUS= line and one error line. SIGTERM (or SIGINT) cancels the run in
flight: its probes stop, and a restart already asked of systemd is recorded as asked, its outcome
unknown, so that budgets and cooldowns still count it after the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from prober.core import policy, tracker
from prober.core.actuator import Actuator
from prober.core.config import Config, Target
from prober.core.errors import ProberError, StateError
from prober.core.keys import format_duration
from prober.core.policy import Action, Decision, Outcome, RestartOutcome
from prober.core.record import RANGES, Entry, Kind
from prober.core.runs import ConfigReload, RunReport, Skipped, Snapshot, Status
from prober.core.tracker import State, TargetState
from prober.outputs.report import run_summary
from prober.probes.probing import Probing
from prober.shell.check import run_once
from prober.shell.locked import Held, locked_run
from prober.shell.record import CachedRecord, RecordFile, command_entries
from prober.shell.sdnotify import notify, notify_socket, watchdog_interval
from prober.shell.state import StateStore

if TYPE_CHECKING:
    from prober.outputs.web import WebServer

log = logging.getLogger("prober")

Listener = Callable[[RunReport | Skipped, Config], None]


@dataclass(frozen=True)
class _Known:
    """The state as the watcher holds it, the file's signature when last read or written, and
    the essentials (tracker.essential) of what the file holds: state that differs from them in
    its essentials needs a write. A prune makes them differ, as the file still has the target."""

    state: State
    signature: tuple[int, int, int] | None
    essential: dict[str, TargetState]


class Watcher:
    """The loop behind `prober watch`."""

    def __init__(
        self,
        load: Callable[[], Config],
        store: StateStore,
        actuator_factory: Callable[[], Actuator] | None,
        *,
        interval: float | None = None,
        dry_run: bool = False,
        listen: tuple[str, int] | None = None,
        on_report: Listener = lambda result, config: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`load` reads and validates the config (at start and on SIGHUP); `interval` and
        `listen`, when given, win over the config's."""
        self._load = load
        self.config = load()
        self.reload = ConfigReload(successful=True, last_success_at=time.time())
        self._store = store
        self._actuator_factory = actuator_factory
        self._interval = interval
        self._dry_run = dry_run
        self._writes = not dry_run  # whether the state read last is written back
        self._on_report = on_report
        self._clock = clock
        self._known: _Known | None = None
        self._probing = Probing()
        self._stopping = False
        self._reload = False
        self._cycling: asyncio.Task[None] | None = None  # run()'s task, while in a cycle
        self._cancelled = False  # stop() cancelled that cycle
        self._waking: asyncio.Future[None] | None = None  # the pause between cycles
        self._last_status: Status | None = None
        self._notify_socket = notify_socket()
        self._listen = listen
        self._server: WebServer | None = None
        self.report: RunReport | None = None
        self._reloads: list[Entry] = []  # for the outage record, with the next run's events
        self._record = self._page_record()

    @property
    def interval(self) -> float:
        return self._interval or self.config.interval

    @property
    def state(self) -> State:
        return self._known.state if self._known is not None else State()

    @property
    def listen(self) -> tuple[str, int] | None:
        return self._listen or self.config.listen

    def snapshot(self) -> Snapshot:
        """What the outputs render: the config, the state and the last run, now."""
        return Snapshot(self.config, self.state, self.report, time.time(), self.reload,
                        record=self._record.entries)

    def _page_record(self) -> CachedRecord:
        """The outage record the page's timelines are drawn from, as long as its longest."""
        return CachedRecord(RecordFile.beside(self._store.path, self.config), max(RANGES.values()))

    def stop(self) -> None:
        """End the run in flight (its probes stop) or the pause, and then the loop."""
        self._stopping = True
        if self._cycling is not None and not self._cancelled:
            self._cancelled = True
            self._cycling.cancel()  # at the cycle's next await: its probes stop
        self._wake()

    def request_reload(self) -> None:
        """Re-read the config after the run in flight, or at once in a pause."""
        self._reload = True
        self._wake()

    def _wake(self) -> None:
        if self._waking is not None and not self._waking.done():
            self._waking.set_result(None)

    async def run(self, runs: int | None = None) -> None:
        """Check every `interval` until stopped (or `runs` times); while a target that nothing
        listens on fails below its threshold, every `confirm_interval` instead: these cycles
        are its confirmations, as the probes again within a one-shot run are."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        ping = watchdog_interval()
        await self._serve()
        notify("READY=1")
        try:
            done = 0
            while not self._stopping and (runs is None or done < runs):
                # Runs start `interval` apart, or at once after one that overran.
                wake = loop.time() + self.interval
                result = await self._one_run(ping)
                done += 1
                if runs is not None and done >= runs:
                    break
                spacing = confirm_spacing(result)
                if spacing is not None:
                    wake = min(wake, loop.time() + spacing)
                await self._pause_until(wake, ping)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self._stopping:
                notify("STOPPING=1")
            if self._server is not None:
                await self._server.close()
                self._server = None
            await self._probing.aclose()
            self._store.close()

    async def _one_run(self, ping: float | None) -> RunReport | Skipped | None:
        # In run()'s own task, which stop() cancels while a cycle is in flight (no task of its
        # own to start and wait for, every cycle); a task pings the watchdog meanwhile, only
        # where systemd watches.
        task = self._cycling = asyncio.current_task()
        pinging = asyncio.ensure_future(self._ping_while_on_time(ping)) if ping else None
        try:
            result = await self._cycle()
        except asyncio.CancelledError:
            if self._cancelled and task is not None and task.uncancel() == 0:
                return None  # stop()'s doing, and nobody else's
            raise
        finally:
            self._cycling, self._cancelled = None, False
            if pinging is not None:
                pinging.cancel()
        self._tell(result)
        if self._reload:
            await self._apply_reload()
        return result

    async def _ping_while_on_time(self, ping: float | None) -> None:
        """Ping the watchdog during a run for as long as the run may take (its deadline under
        the config), so that a slow run is no hang, and a run stuck past it still is one."""
        if not ping:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + self.config.run_deadline
        while loop.time() + ping < until:
            await asyncio.sleep(ping)
            notify("WATCHDOG=1")

    async def _pause_until(self, wake: float, ping: float | None) -> None:
        """Sleep until `wake`, pinging the watchdog; a stop ends it, a reload is done at once.

        One future and one timer per pause, as asyncio.sleep has: no task to wait on."""
        loop = asyncio.get_running_loop()
        while not self._stopping and (left := wake - loop.time()) > 0:
            waking = self._waking = loop.create_future()
            timer = loop.call_later(min(left, ping) if ping else left, _resolve, waking)
            try:
                await waking
            finally:
                timer.cancel()
                self._waking = None
            if self._reload:
                await self._apply_reload()
            if ping:
                notify("WATCHDOG=1")

    # --- one cycle ---------------------------------------------------------------------------

    async def _cycle(self) -> RunReport | Skipped:
        return await locked_run(self._store, self.config, dry_run=self._dry_run,
                                run=self._locked_cycle, stateless=self._stateless_cycle)

    async def _locked_cycle(self, held: Held) -> RunReport:
        config = self.config
        signature = self._store.signature()
        known = self._known
        if known is None or signature != known.signature:
            # First cycle, or another process wrote the file: read it, as it now is.
            loaded = held.load()
            self._writes = loaded.writes
            state = tracker.prune(loaded.state, config.names)
            before = tracker.essential(loaded.state)
        else:
            state, before = known.state, known.essential  # pruned at start and on reload
        asked: list[tuple[Target, float]] = []
        try:
            new_state, report = await run_once(
                config, state, self._clock, self._actuator_factory, dry_run=self._dry_run,
                probing=self._probing, on_restart_requested=lambda t, at: asked.append((t, at)),
                confirm=False)
        except asyncio.CancelledError:
            self._record_asked(state, asked)
            raise
        new_state = tracker.trim_history(new_state, config.history)
        if self._reloads:
            report = replace(report, events=(*self._reloads, *report.events))
            self._reloads = []
        after = tracker.essential(new_state)
        host = (new_state.pressure, new_state.systemd_unreachable_since)
        report = held.save(report, new_state, writes=self._writes,
                           changed=signature is None or after != before
                           or host != (state.pressure, state.systemd_unreachable_since))
        if self._writes and report.state_error is None:
            signature = self._store.signature()
        self._known = _Known(new_state, signature, after)
        return report

    def _record_asked(self, state: State, asked: list[tuple[Target, float]]) -> None:
        """Record restarts asked of systemd by a run cancelled before it learnt their outcome."""
        if not asked:
            return
        before = state
        for target, at in asked:
            decision = Decision(target.name, Action.RESTART, "", target.unit)
            outcome = RestartOutcome(Outcome.UNKNOWN, "restart requested; prober stopped before "
                                     "it learnt how it went", at)
            applied = policy.apply_restart(target, state.get(target.name), decision, outcome)
            state = state.with_target(target.name, applied.state)
        entries = [Entry(at, target.name, Kind.RESTART_ASKED, "restart asked of the actuator",
                         target.unit or "") for target, at in asked]
        unrecorded = None
        if not self._dry_run:
            try:
                RecordFile.beside(self._store.path, self.config).append(
                    [*entries, *command_entries(self.config, before, state)], time.time(),
                    self._store.directory_owner())
            except StateError as exc:
                unrecorded = exc
        try:
            self._store.save(state)
        except StateError as exc:
            log.error("%s", exc)  # a full or read-only directory fails both: one line
            return
        if unrecorded is not None:
            log.error("%s; the restarts asked are not in the record", unrecorded)

    async def _stateless_cycle(self, no_restart_reason: str) -> RunReport:
        _, report = await run_once(
            self.config, State(), self._clock, None, dry_run=self._dry_run,
            probing=self._probing, confirm=False, no_restart_reason=no_restart_reason)
        return report

    # --- telling ---------------------------------------------------------------------------

    def _tell(self, result: RunReport | Skipped) -> None:
        if isinstance(result, Skipped):
            log.info("%s", result.reason)
            notify(f"WATCHDOG=1\nSTATUS=last run skipped: {result.reason}")
            self._on_report(result, self.config)
            return
        self.report = result
        status = result.status
        eventful = status is not self._last_status or result.changes or result.state_error
        self._last_status = status
        level = logging.INFO if eventful else logging.DEBUG
        # The summary only for those who will read it: a quiet cycle off systemd needs none.
        if log.isEnabledFor(level) or self._notify_socket:
            summary = run_summary(result)
            log.log(level, "%s", summary)
            notify(f"WATCHDOG=1\nSTATUS=last run {summary}")
        if result.state_error:
            log.error("%s", result.state_error)
        self._write_textfile()
        self._on_report(result, self.config)

    def _write_textfile(self) -> None:
        if not self.config.textfile:
            return
        from prober.outputs.metrics import write_textfile

        try:
            write_textfile(self.config.textfile, self.snapshot())
        except ProberError as exc:
            log.error("%s", exc)

    async def _serve(self) -> None:
        """Serve /metrics, /status.json and the page where `listen` says (if it says)."""
        if self.listen is None:
            return
        from prober.outputs import web

        host, port = self.listen
        self._server = await web.serve(host, port, self.snapshot)
        log.info("serving /metrics, /status.json and the status page on http://%s:%d/",
                 f"[{host}]" if ":" in host else host, self._server.port)

    async def _relisten(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        try:
            await self._serve()
        except ProberError as exc:
            log.error("reload: %s; not serving until the next reload", exc)

    async def _apply_reload(self) -> None:
        self._reload = False
        notify("RELOADING=1")
        try:
            config = self._load()
        except ProberError as exc:
            log.error("reload: keeping the previous config: %s", exc)
            self.reload = replace(self.reload, successful=False, error=str(exc))
            self._reloads.append(Entry(time.time(), "", Kind.CONFIG_REJECTED,
                                       f"keeping the previous config: {exc}"))
            notify(f"READY=1\nSTATUS=reload failed, running the previous config: {exc}")
            return
        listened = self.listen
        self.config = config
        self._record = self._page_record()
        self.reload = ConfigReload(successful=True, last_success_at=time.time())
        if self.listen != listened:
            await self._relisten()
        if self._known is not None:
            state = tracker.prune(self._known.state, config.names)
            self._known = replace(self._known, state=state)
        log.info("reload: %s, %d targets, every %s", config.path, len(config.targets),
                 format_duration(self.interval))
        self._reloads.append(Entry(time.time(), "", Kind.CONFIG_RELOADED,
                                   f"{config.path}: {len(config.targets)} targets"))
        notify(f"READY=1\nSTATUS=reloaded {config.path}: {len(config.targets)} targets")


def confirm_spacing(result: RunReport | Skipped | None) -> float | None:
    """How soon the next cycle confirms that nothing listens on a target this run found so, not
    yet down: the shortest confirm_interval of those (None when there is none, or when the
    state could not be kept, so that no count could grow)."""
    if not isinstance(result, RunReport) or result.state_error is not None:
        return None
    return min((item.target.policy.confirm_interval for item in result.targets
                if tracker.confirmations_left(item.target, item.state, item.result,
                                              result.ended_at) > 0), default=None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def watch(
    load: Callable[[], Config],
    store: StateStore,
    actuator_factory: Callable[[], Actuator] | None,
    *,
    interval: float | None = None,
    dry_run: bool = False,
    listen: tuple[str, int] | None = None,
    on_report: Listener = lambda result, config: None,
    runs: int | None = None,
) -> None:
    """Run the watcher in an event loop of its own until it is stopped (or `runs` times)."""
    async def main() -> None:
        watcher = Watcher(load, store, actuator_factory, interval=interval, dry_run=dry_run,
                          listen=listen, on_report=on_report)
        await watcher.run(runs)

    asyncio.run(main())
