"""`make bench`, the state file's load: `StateStore.load` (a regular file checked, read up to
its size cap, parsed, every field of every entry checked) beside its floor, the same bytes read
and parsed with `json.loads` and nothing checked.

Two files, each written by `StateStore.save` and full (`history` entries for every target): the
healthy check's two targets, and two hundred. Loads alternate with floors, in this process,
after a warm-up; the figure is the median of each and their ratio.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prober.core.psi import MemoryUser
from prober.core.tracker import Event, Health, State, TargetState, Transition
from prober.shell.state import StateStore

HISTORY = 500
SIZES = (2, 200)
ROUNDS = 41
RATIO_TARGET = 3.5
AT = 1_800_000_000.0


def _full_state(targets: int) -> State:
    history = tuple(
        Transition(AT + i, Event.DOWN if i % 2 else Event.RECOVERED, "status 500, expected 2xx",
                   (MemoryUser("convert (pid 4242)", 1 << 30),) if i % 10 == 0 else ())
        for i in range(HISTORY))
    entry = TargetState(health=Health.HEALTHY, since=AT, consecutive_passes=3,
                        last_checked_at=AT, last_ok=True, last_reason="status 200",
                        last_status_code=200, last_latency_ms=1.5, restarts=(AT, AT + 1),
                        restarts_total=2, last_restart_at=AT + 1, history=history)
    return State(targets={f"target-{i}": entry for i in range(targets)}, updated_at=AT)


def _parsed(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _timings(action: Callable[[], Any], floor: Callable[[], Any]
             ) -> tuple[list[float], list[float]]:
    """Seconds of each call of `action` and of `floor`, alternating, after a warm-up."""
    action(), floor()  # warm-up
    mine: list[float] = []
    floors: list[float] = []
    for _ in range(ROUNDS):
        for call, into in ((action, mine), (floor, floors)):
            started = time.perf_counter()
            call()
            into.append(time.perf_counter() - started)
    return mine, floors


def figure_state(bench: Any) -> None:
    from tools.bench import Row, verdict

    for targets in SIZES:
        path: Path = bench.path(f"state-{targets}.json")
        store = StateStore(str(path))
        store.save(_full_state(targets))
        loaded, floor = _timings(store.load, functools.partial(_parsed, path))
        mine, base = statistics.median(loaded), statistics.median(floor)
        ratio = mine / base
        bench.rows.append(Row(
            f"state load, {targets} targets x {HISTORY} history ({path.stat().st_size >> 10} "
            "KiB): median", f"{mine * 1000:.2f} ms", f"read + json.loads {base * 1000:.2f} ms",
            f"<= {RATIO_TARGET:g}x",
            verdict(ratio <= RATIO_TARGET, f"{ratio:.2f}x, median of {ROUNDS}"),
            {"seconds": loaded, "floor_seconds": floor, "ratio": ratio,
             "bytes": path.stat().st_size}))
