"""One run (`run_check`) in this process, against real loopback servers."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from prober.core.config import parse_config
from prober.core.runs import RunReport
from prober.shell.check import run_check
from prober.shell.locked import cycle_collection_paused
from prober.shell.state import StateStore
from tests.support.servers import Exchange, serve


@pytest.fixture
def collector_on() -> Iterator[None]:
    """Start with the cycle collector on, and leave it as pytest had it."""
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_probes_run_without_cycle_collection(tmp_path: Path, collector_on: None) -> None:
    """The server, a thread of this process, sees the collector off while it is probed."""
    seen: list[bool] = []

    def record(exchange: Exchange) -> None:
        seen.append(gc.isenabled())
        exchange.respond(200, b"OK")

    with serve(record) as server:
        config = parse_config({"target": [{"name": "web", "url": server.url("/health")}]})
        report = run_check(config, StateStore(str(tmp_path / "state.json")), None)
    assert isinstance(report, RunReport) and report.targets[0].result.ok
    assert seen == [False]
    assert gc.isenabled()


@pytest.mark.parametrize("enabled", [True, False])
def test_pausing_restores_the_collector_as_it_was(enabled: bool, collector_on: None) -> None:
    if not enabled:
        gc.disable()
    with pytest.raises(RuntimeError), cycle_collection_paused():
        assert not gc.isenabled()
        raise RuntimeError("the run failed")
    assert gc.isenabled() is enabled
