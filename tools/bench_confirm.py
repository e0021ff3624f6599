"""`make bench`, the confirmation figure: how long the shipped timer takes to restart a caddy that
stopped listening, with `confirm_interval` at its default and off (the behaviour before it).

In the systemd sandbox of tests/support/sandbox.py, the shipped units (tests/support/deploy.py)
run `prober check`
on the shipped timer's period. Each repetition waits for a run to end, unloads caddy's servers
over its admin API (`POST /load {}`: the unit stays active, its port refuses), and measures the
seconds until systemd starts the restart prober asked for (caddy leaves `active`). Breaking caddy
right after a run ends is the worst phase: a whole period passes before the next probe. The two
settings alternate, so that load from elsewhere hits them alike; each figure is a median.

The config is the default one but for what would stop a repetition from restarting at all
(`startup_grace`, `cooldown` and `max_restarts` gate restarts, not how soon a refusal is seen).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMER_PERIOD = 30.0  # the shipped prober.timer's OnUnitInactiveSec=
TARGET_MARGIN = 10.0  # the bound: the timer's period + this
REPS = 3
CONFIG = """\
[defaults]
confirm_interval = "{confirm}"
startup_grace = "0s"
cooldown = "1s"
max_restarts = 100

[[target]]
name = "caddy"
url = "{caddy}/health"
expect_body = "OK"
unit = "caddy.service"
depends_on = ["backend"]

[[target]]
name = "backend"
url = "{backend}/health"
expect_body = "OK"
unit = "backend.service"
"""
SETTINGS = {"default": "2s", "off": "0s"}


def figure_confirm(bench: Any) -> None:
    """The row: refused -> restart under the shipped timer, the default beside `0s`.

    `bench` is tools.bench's Bench (typed loosely, as in tools/bench_watch.py).
    """
    from tools.bench import REPO, BenchError, Row, sandbox_missing

    name = f"refused -> restart, shipped timer ({TIMER_PERIOD:g} s), confirm_interval 2s"
    target = f"<= {TIMER_PERIOD + TARGET_MARGIN:g} s"
    reason = sandbox_missing()
    if reason:
        bench.rows.append(Row(name, "-", "-", target, f"pending: no systemd sandbox ({reason})"))
        return
    from tests.support.sandbox import Sandbox, SandboxError

    workdir = REPO / ".sandbox" / f"bench-confirm-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        with Sandbox(workdir, users=["prober"]) as box:
            found = _measure(box)
    except SandboxError as exc:
        raise BenchError(f"the sandbox failed: {exc}") from None
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    _add_row(bench, name, target, found)


def _measure(box: Any) -> dict[str, list[float]]:
    from tests.support.deploy import install
    from tests.support.sandbox import start_stack

    stack = start_stack(box)
    box.write_unit("caddy.service.d/bench.conf", "[Unit]\nStartLimitIntervalSec=0\n",
                   reload=False)
    installed = install(box, _config(stack, "default"))
    box.systemctl("start", "prober.timer")
    found: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(REPS):
        for setting in SETTINGS:
            installed.config.write_text(_config(stack, setting))
            found[setting].append(_refused_to_restart(box, stack, installed))
    box.systemctl("stop", "prober.timer")
    return found


def _config(stack: Any, setting: str) -> str:
    return CONFIG.format(confirm=SETTINGS[setting], caddy=stack.caddy_url,
                         backend=stack.backend_url)


def _refused_to_restart(box: Any, stack: Any, installed: Any) -> float:
    """Seconds from caddy refusing, right after a run that found it answering, to systemd
    starting the restart prober asked for."""
    import httpx

    for _ in range(2):  # the second run began after caddy was back and the config was read
        _wait_next_run(installed)
    before = box.main_pid(stack.caddy_unit)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=10, trust_env=False)
    onset = time.monotonic()
    _wait(lambda: _exited_at(box, stack.caddy_unit) > onset, 4 * TIMER_PERIOD,
          "the timer-driven prober restarting caddy")
    restarted = _exited_at(box, stack.caddy_unit)
    _wait(lambda: box.main_pid(stack.caddy_unit) not in (0, before), 60, "caddy back")
    box.wait_port(stack.caddy_port, timeout=30)
    return restarted - onset


def _add_row(bench: Any, name: str, target: str, found: dict[str, list[float]]) -> None:
    from tools.bench import Row, verdict

    confirmed, off = (statistics.median(found[s]) for s in SETTINGS)
    bench.rows.append(Row(
        name, f"{confirmed:.1f} s", f"confirm_interval 0s {off:.1f} s", target,
        verdict(confirmed <= TIMER_PERIOD + TARGET_MARGIN,
                f"median of {REPS}, worst {max(found['default']):.1f} s; "
                f"{off / confirmed:.1f}x sooner than 0s"),
        {"default_seconds": found["default"], "off_seconds": found["off"]}))
    bench.notes.append(
        "Confirmation: the shipped timer and units in the systemd sandbox; caddy's servers "
        "unloaded (POST /load {}) right after a run ended, the worst phase; measured to systemd "
        "starting the restart. The default config but startup_grace 0s, cooldown 1s and "
        "max_restarts 100, which gate the repeated restarts, not how soon a refusal is seen; "
        "confirm_interval 2s (the default) and 0s alternate.")


def _wait_next_run(installed: Any) -> None:
    """Until the next run has ended: every run touches the heartbeat beside the state."""
    beat = installed.state.with_name(installed.state.name + ".last-run")
    seen = _mtime(beat)
    _wait(lambda: _mtime(beat) > seen, 3 * TIMER_PERIOD, "the next run of the timer")


def _exited_at(box: Any, unit: str) -> float:
    """When `unit` last left `active` (CLOCK_MONOTONIC, as time.monotonic()), in seconds."""
    return int(box.unit_property(unit, "ActiveExitTimestampMonotonic") or 0) / 1e6


def _wait(predicate: Callable[[], object], within: float, what: str) -> None:
    from tools.bench import BenchError

    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"not within {within:g} s: {what}")
        time.sleep(0.05)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
