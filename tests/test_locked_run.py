"""`check` and `watch` share one locked run (prober/shell/locked.py): each case below is run by
both, in this process against a real loopback server, and both must say and do the same."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prober.core.config import Config, parse_config
from prober.core.runs import RunReport, Skipped
from prober.shell.check import run_check
from prober.shell.state import StateStore
from prober.shell.watcher import Watcher
from tests.support.servers import Server, answer, serve

Runner = Callable[[Config, StateStore, bool], RunReport | Skipped]


def by_check(config: Config, store: StateStore, dry_run: bool) -> RunReport | Skipped:
    return run_check(config, store, None, dry_run=dry_run)


def by_watch(config: Config, store: StateStore, dry_run: bool) -> RunReport | Skipped:
    """One cycle of the watcher, as `prober watch` would run it."""
    told: list[RunReport | Skipped] = []
    watcher = Watcher(lambda: config, store, None, dry_run=dry_run,
                      on_report=lambda result, config: told.append(result))
    asyncio.run(watcher.run(runs=1))
    (result,) = told
    return result


RUNNERS = {"check": by_check, "watch": by_watch}


@pytest.fixture
def broken() -> Iterator[Server]:
    with serve(answer(500, b"broken")) as server:
        yield server


def config_of(server: Server, threshold: int = 3) -> Config:
    return parse_config({"target": [{"name": "web", "url": server.url("/health"),
                                     "unit": "web.service", "failure_threshold": threshold}]})


def both(run: Callable[[Runner], RunReport | Skipped]) -> dict[str, RunReport | Skipped]:
    return {name: run(runner) for name, runner in RUNNERS.items()}


def test_a_busy_lock_skips_the_run_alike(tmp_path: Path, broken: Server) -> None:
    """While another run holds the lock, both leave the run to it in the same words and
    write nothing. Before, the watcher said "this cycle" where check said "this run"."""
    path = tmp_path / "state.json"
    holder = StateStore(str(path))
    with holder.locked():
        results = both(lambda runner: runner(config_of(broken), StateStore(str(path)), False))
    expected = Skipped(f"another prober run holds {holder.lock_path}; leaving this run to it")
    assert results == {"check": expected, "watch": expected}
    assert not path.exists()


def test_an_unusable_state_runs_the_probes_and_restarts_nothing_alike(
        tmp_path: Path, broken: Server) -> None:
    """A FIFO state file: both probe, decide no restart for the down target because the state
    is unusable, and report the same error; the FIFO is left as it was."""
    path = tmp_path / "state.json"
    os.mkfifo(path)
    results = both(lambda runner: runner(config_of(broken, threshold=1), StateStore(str(path)),
                                         False))
    seen = {}
    for name, result in results.items():
        assert isinstance(result, RunReport), result
        (target,) = result.targets
        assert not target.result.ok
        seen[name] = (result.state_error, target.decision.reason, target.outcome)
    assert seen["check"] == seen["watch"]
    state_error, reason, outcome = seen["check"]
    assert state_error is not None and state_error.startswith(str(path))
    assert state_error.endswith("; the probes ran, nothing was restarted")
    assert "no restarts while the state is unusable" in reason
    assert outcome is None
    assert path.is_fifo()


def test_a_dry_run_counts_on_and_writes_nothing_alike(tmp_path: Path, broken: Server) -> None:
    """Over a real run's state (1 failure of 3), a dry run by either says the next run would
    see 2, and leaves the state file and its heartbeat as they were."""
    path = tmp_path / "state.json"
    config = config_of(broken)
    assert isinstance(run_check(config, StateStore(str(path)), None), RunReport)
    beat = path.with_name(path.name + ".last-run")

    def files() -> tuple[bytes, int, int]:
        return path.read_bytes(), path.stat().st_mtime_ns, beat.stat().st_mtime_ns

    before = files()
    results = both(lambda runner: runner(config, StateStore(str(path)), True))
    for result in results.values():
        assert isinstance(result, RunReport), result
        assert result.dry_run and result.state_error is None
        assert result.targets[0].state.consecutive_failures == 2
    assert files() == before
