"""Under real memory pressure, in a sealed systemd with a memory controller
(tests/support/harness.py):
prober keeps restarting what broke, is never the process the kernel kills, ends its runs within
their deadline, and its watchdog does not fire while runs are slow. Its readers of pressure and
memory users work for real, under the shipped units' hardening.

The restart policy's judgment (pressure_threshold, pressure_hold) is proven on a backend that
starves for real: the thrasher's processes moved into its cgroup, so that its own PSI, which
the policy reads first, climbs as Sidekiq's does when its jobs' children thrash.

PSI is host-wide and moved by other jobs on this machine: nothing here asserts the host's
reading. Stalls are read from the units' own cgroups; durations are checked against the run's
deadline only, never against a figure (`make bench` has those).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prober.memory.cgroups import Layout
from tests.support.deploy import UNITS, Installed, install
from tests.support.e2e import (
    answers,
    booted_sandbox,
    freeze,
    has_event,
    refuses,
    saved_state,
    wait_for,
)
from tests.support.harness import GROWER, THRASHER, MemoryPressure, kernel_log_readable
from tests.support.sandbox import (
    UNIT_DIR,
    Sandbox,
    SandboxError,
    Stack,
    _cgroup2_dir,
    memory_cgroup2_parent,
    memory_layout,
    start_stack,
    systemd_quote,
    v1_hierarchies,
)

pytestmark = pytest.mark.e2e

THRESHOLD = 3
TIMEOUT, CONFIRM_INTERVAL, RESTART_TIMEOUT, VERIFY_TIMEOUT = 1, 1, 5, 3
# The longest one run may take: a probe, the confirmations of a refused one, a restart, its
# verification.
DEADLINE = TIMEOUT + (THRESHOLD - 1) * (CONFIRM_INTERVAL + TIMEOUT) + RESTART_TIMEOUT + \
    VERIFY_TIMEOUT
WATCHDOG = DEADLINE + 1  # shorter than the shipped 3min by far, still above a run's deadline
LIMIT_MIB = 300
# A target made to starve gets more thrash workers than the default: the more of its tasks wait
# on refaults, the more of the time at least one does, so its own PSI clears the default
# pressure_threshold with a margin even on a machine whose disk answers refaults quickly.
STARVING_WORKERS = 4
RUN_LINE = re.compile(r"\b(?:OK|WARNING|CRITICAL|UNKNOWN): .* targets in ([\d.]+)s")
FAILED = re.compile(r"target=caddy: probe failed \(([\w-]+)\): .*\[(\d+) in a row\]")


@pytest.fixture
def box(sandbox_workdir: Path) -> Iterator[Sandbox]:
    """A sandbox whose systemd has a memory controller, with a `prober` user."""
    with booted_sandbox(sandbox_workdir, users=["prober"], memory=True) as sandbox:
        yield sandbox


@pytest.fixture
def stack(box: Sandbox) -> Stack:
    return start_stack(box)


@pytest.fixture
def harness(box: Sandbox) -> Iterator[MemoryPressure]:
    """The whole sandbox limited to LIMIT_MIB (hogs started by each test)."""
    with MemoryPressure(box, limit_mib=LIMIT_MIB) as pressure:
        yield pressure


def config(stack: Stack) -> str:
    return f"""\
interval = "1s"

[defaults]
timeout = "{TIMEOUT}s"
confirm_interval = "{CONFIRM_INTERVAL}s"
failure_threshold = {THRESHOLD}
startup_grace = "0s"
cooldown = "1s"
restart_timeout = "{RESTART_TIMEOUT}s"
verify_timeout = "{VERIFY_TIMEOUT}s"

[[target]]
name = "caddy"
url = "{stack.caddy_url}/health"
expect_body = "OK"
unit = "{stack.caddy_unit}"
depends_on = ["backend"]

[[target]]
name = "backend"
url = "{stack.backend_url}/health"
expect_body = "OK"
unit = "{stack.backend_unit}"
"""


def start_prober(box: Sandbox, stack: Stack, mode: str, targets: str = "") -> Installed:
    """The shipped units as an operator installs them; the timer every 1 s, or the watcher;
    `targets`: more [[target]] tables for the config."""
    text = f"{config(stack)}\n{targets}"
    if mode == "timer":
        installed = install(box, text, period="1s")
        box.systemctl("start", "prober.timer")
    else:
        installed = install(box, text, watchdog=f"{WATCHDOG}s")
        # The watcher logs a run's summary at info only when something changed: -v logs every
        # run's, which these tests count and time.
        box.write_unit("prober-watch.service.d/verbose.conf",
                       "[Service]\nExecStart=\nExecStart=/usr/local/bin/prober -v watch\n")
        box.systemctl("start", "prober-watch.service")
    wait_for(lambda: run_durations(installed) != [], 30, "a first run of the prober")
    return installed


def run_durations(installed: Installed) -> list[float]:
    """How long each run took, from the summary line each run logs (watch) or prints (timer)."""
    return [float(x) for x in RUN_LINE.findall(installed.log.read_text())]


def failures_until_restart(log: str) -> list[tuple[str, int]]:
    """caddy's failures (class, count in a row) logged before its first restart request."""
    seen: list[tuple[str, int]] = []
    for line in log.splitlines():
        if "target=caddy unit=caddy.service: restarting" in line:
            return seen
        found = FAILED.search(line)
        if found:
            seen.append((found[1], int(found[2])))
    raise AssertionError(f"caddy was never restarted; the log:\n{log[-3000:]}")


def check_prober_survived(box: Sandbox, harness: MemoryPressure, installed: Installed,
                          mode: str, watcher_pid: int) -> None:
    """prober's units are as they were, none of their processes was OOM-killed, and every run
    ended within its deadline."""
    durations = run_durations(installed)
    assert durations and max(durations) < DEADLINE, durations
    if mode == "watch":
        unit = "prober-watch.service"
        assert box.unit_property(unit, "ActiveState") == "active"
        assert box.main_pid(unit) == watcher_pid
        assert box.unit_property(unit, "NRestarts") == "0"
        assert harness.oom_kills(harness.cgroup(unit)) == 0
        assert "Watchdog timeout" not in box.console_tail(500)
    else:
        assert box.unit_property("prober.service", "Result") == "success"
        assert box.unit_property("prober.timer", "ActiveState") == "active"
    log = installed.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-2000:]
    kills = harness.kernel_oom_kills()
    assert not [k for k in kills if k.cgroup.startswith("/prober.slice")], kills


# --- the harness itself ----------------------------------------------------------------------


def test_memory_sandbox_enforces_limits_in_the_hosts_layout(box: Sandbox) -> None:
    """Sandbox(memory=True) mirrors the host's layout (hybrid here) and systemd's MemoryMax=
    becomes the kernel's limit (v1 memory.limit_in_bytes here); per-unit PSI files exist."""
    assert box.cgroup_layout == memory_layout()
    harness = MemoryPressure(box, limit_mib=LIMIT_MIB, group="system.slice")
    harness.limit(200)  # raises unless the kernel's limit reads back as 200 MiB
    assert harness.memory_limit("/system.slice") == 200 * 1024 * 1024
    mounts = harness.mounts()
    expected = Layout.HYBRID if box.cgroup_layout == "hybrid" else Layout.UNIFIED
    assert mounts.layout is expected
    reading = harness.unit_pressure("dbus.service")
    assert reading is not None and reading.cgroup == "/system.slice/dbus.service"
    harness.stop()
    assert harness.memory_limit("/system.slice") is None
    with MemoryPressure(box, limit_mib=LIMIT_MIB) as whole:
        assert whole.memory_limit("/") == LIMIT_MIB * 1024 * 1024
    assert whole.memory_limit("/") is None


def _own_sandbox_cgroups() -> list[Path]:
    """The cgroups this process's sandboxes have now, in every hierarchy they join."""
    parents = [_cgroup2_dir(), *(h.cgroup for h in v1_hierarchies(
        Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text()))]
    with contextlib.suppress(SandboxError):
        parents.append(memory_cgroup2_parent())
    return [p for parent in parents for p in parent.glob(f"prober-sandbox-{os.getpid()}-*")]


def test_memory_sandbox_leaves_no_cgroup_behind(sandbox_workdir: Path) -> None:
    """A memory sandbox that ran units and hogs leaves none of its cgroups, in any hierarchy."""
    before = set(_own_sandbox_cgroups())
    with booted_sandbox(sandbox_workdir, memory=True) as sandbox:
        created = set(_own_sandbox_cgroups()) - before
        with MemoryPressure(sandbox, limit_mib=LIMIT_MIB) as harness:
            harness.grow(rate_mib=64, max_mib=16)
            wait_for(lambda: "holding" in harness.hog_log(GROWER), 20, "the grower holding")
            assert any((c / "system.slice").is_dir() for c in created)
    expected = 1 + (len(v1_hierarchies(Path("/proc/self/mountinfo").read_text(),
                                        Path("/proc/self/cgroup").read_text()))
                    if sandbox.cgroup_layout == "hybrid" else 0)
    assert len(created) == expected, created
    assert [p for p in created if p.exists()] == []


def test_pinned_psi_is_what_prober_reads(box: Sandbox, stack: Stack) -> None:
    """pin_psi() fixes what /proc/pressure/memory reads inside only: `prober check --json` shows
    it, and so does the hardened watcher's metrics file, a re-pin too; the host's file is not
    touched."""
    textfile = box.workdir / "prober-state" / "metrics.prom"
    installed = install(box, f'textfile = "{textfile}"\n' + config(stack),
                        watchdog=f"{WATCHDOG}s")
    box.pin_psi(45, 30, units=["prober-watch.service"])
    done = box.run([sys.executable, "-m", "prober", "check", "--json", "--config",
                    str(installed.config), "--state", str(box.workdir / "pin-state.json")],
                   timeout=60)
    assert json.loads(done.stdout)["memory_pressure"] == {
        "some_avg10": 45.0, "some_avg60": 45.0, "full_avg10": 30.0, "full_avg60": 30.0}
    assert "total=0000000000" not in Path("/proc/pressure/memory").read_text()

    def watcher_reads(value: str) -> bool:
        with contextlib.suppress(OSError):
            return f"prober_memory_pressure_some_avg10 {value}\n" in textfile.read_text()
        return False

    box.systemctl("start", "prober-watch.service")
    wait_for(lambda: watcher_reads("45.0"), 20, "the watcher reporting the pinned 45 %")
    box.pin_psi(12.5)
    wait_for(lambda: watcher_reads("12.5"), 20, "the watcher reporting the re-pinned 12.5 %")
    box.unpin_psi()
    assert "total=0000000000" not in box.run(["cat", "/proc/pressure/memory"]).stdout


def test_readers_work_under_the_shipped_hardening(box: Sandbox, stack: Stack,
                                                  harness: MemoryPressure) -> None:
    """prober.memory.pressure's readers, run as `prober` with the shipped prober.service's settings,
    read the thrasher's own PSI, rank the grower first by anonymous memory (the thrasher's page
    cache is larger), and find the grower's process in the /proc fallback."""
    install(box, config(stack))
    harness.thrash()
    harness.wait_stalling(THRASHER, some=2)
    harness.grow(rate_mib=64, max_mib=64)
    wait_for(lambda: "holding" in harness.hog_log(GROWER), 30, "the grower holding 64 MiB")
    out = box.workdir / "readers.json"
    out.touch()
    box.run(["chown", "prober", str(out)], check=True)
    script = (
        "import json, sys\n"
        "from prober.memory.cgroups import *\n"
        "from prober.memory.pressure import read_host_pressure\n"
        "mounts = read_cgroup_mounts()\n"
        "unit = read_unit_pressure(sys.argv[1])\n"
        "host = read_host_pressure()\n"
        "print(json.dumps({'layout': mounts.layout.value,\n"
        "  'unit': unit and [unit.scope.value, unit.cgroup, unit.pressure.some_avg10],\n"
        "  'host': host and host.scope.value,\n"
        "  'top': [[u.name, u.bytes] for u in top_memory_users(3)],\n"
        "  'processes': [[u.name, u.bytes] for u in largest(process_memory_users(), 3)]}))\n")
    readers_py = box.workdir / "readers.py"
    readers_py.write_text(script)
    shipped = (UNITS / "prober.service").read_text()
    argv = [sys.executable, str(readers_py), harness.cgroup(THRASHER)]
    readers = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={systemd_quote(argv)}", shipped)
    (box.path("/etc/systemd/system") / "prober-readers.service").write_text(readers)
    dropin = (box.path(UNIT_DIR) / "prober.service.d" / "sandbox.conf").read_text()
    dropin = re.sub(r"(?m)^Standard(Output|Error)=.*$", rf"Standard\1=append:{out}", dropin)
    box.write_unit("prober-readers.service.d/sandbox.conf", dropin)
    box.systemctl("start", "prober-readers.service")
    found = json.loads(out.read_text().strip().splitlines()[-1])
    assert found["layout"] == ("hybrid" if box.cgroup_layout == "hybrid" else "unified"), found
    assert found["unit"][:2] == ["unit", harness.cgroup(THRASHER)], found
    assert found["unit"][2] > 0, found
    assert found["host"] == "host"
    assert found["top"][0][0] == GROWER and found["top"][0][1] >= 64 * 1024 * 1024, found
    assert THRASHER not in [name for name, _ in found["top"][:1]]
    grower_child = found["processes"][0]
    assert grower_child[0].startswith("python (pid ") and grower_child[1] >= 64 * 1024 * 1024


# --- the scenarios ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["timer", "watch"])
def test_caddy_that_stopped_listening_is_restarted_at_the_threshold_under_pressure(
        box: Sandbox, stack: Stack, harness: MemoryPressure, mode: str) -> None:
    """While caddy itself starves (the thrasher's processes in its cgroup, so that its own PSI,
    which the policy reads, is over the threshold), caddy unloads its servers (`POST /load`):
    refused, which means broken whatever the load, so it is restarted at exactly
    failure_threshold, by the shipped timer or watcher, never held; the watcher's short watchdog
    never fires, and every run ends within its deadline."""
    box.write_unit(f"{stack.caddy_unit}.d/delegate.conf", "[Service]\nDelegate=yes\n")
    box.systemctl("restart", stack.caddy_unit)
    box.wait_port(stack.caddy_port)
    installed = start_prober(box, stack, mode)
    watcher = box.main_pid("prober-watch.service") if mode == "watch" else 0
    harness.thrash(workers=STARVING_WORKERS)
    harness.move(THRASHER, stack.caddy_unit)
    harness.wait_stalling(stack.caddy_unit, some=15, within=90)
    caddy_before = box.main_pid(stack.caddy_unit)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=10, trust_env=False)
    assert refuses(f"{stack.caddy_url}/health")
    saved_state(installed.state, has_event("caddy", "restart"), 60,
                f"caddy's restart saved by the {mode}-driven prober under pressure")
    assert box.main_pid(stack.caddy_unit) not in (0, caddy_before)
    assert answers(f"{stack.caddy_url}/health", within=20)
    log = installed.log.read_text()
    failures = failures_until_restart(log)
    assert failures[-THRESHOLD:] == [("refused", n) for n in range(1, THRESHOLD + 1)], failures
    assert "target=caddy unit=caddy.service: wait: held" not in log
    check_prober_survived(box, harness, installed, mode, watcher)


@pytest.mark.parametrize("mode", ["timer", "watch"])
def test_grower_is_oom_killed_and_prober_survives(
        box: Sandbox, stack: Stack, harness: MemoryPressure, mode: str) -> None:
    """An anonymous-memory grower (oom_score_adj 1000) grows under the thrasher until the kernel
    kills it: the kernel's log and counters put every kill on the hogs, none on prober's units,
    which keep running, on time, without a false watchdog."""
    installed = start_prober(box, stack, mode)
    watcher = box.main_pid("prober-watch.service") if mode == "watch" else 0
    harness.thrash()
    harness.wait_stalling(THRASHER, some=5)
    harness.grow(rate_mib=16)
    lived = harness.wait_oom_killed(GROWER, within=90)
    runs_at_kill = len(run_durations(installed))
    wait_for(lambda: len(run_durations(installed)) >= runs_at_kill + 2, 30,
             "two more prober runs after the OOM kill")
    assert harness.oom_kills(harness.cgroup(GROWER)) >= 1
    if kernel_log_readable():
        kills = harness.kernel_oom_kills()
        assert kills and all(k.cgroup.startswith("/system.slice/system-hogs.slice/")
                             for k in kills), kills
    check_prober_survived(box, harness, installed, mode, watcher)
    sys.stdout.write(f"grower OOM-killed after {lived:.1f}s at {harness.grower_mib()} MiB\n")


def test_runs_longer_than_the_watchdog_do_not_trip_it_under_pressure(
        box: Sandbox, stack: Stack, harness: MemoryPressure) -> None:
    """Runs that each take longer than WatchdogSec= (a hung target, a long timeout) while the
    thrasher stalls the host: the watcher pings systemd during each run, up to the run's
    deadline, so its watchdog never fires and it is never restarted."""
    watchdog, timeout = 4, 6
    installed = install(box, f"""\
interval = "1s"

[[target]]
name = "hung"
url = "{stack.backend_url}/health"
timeout = "{timeout}s"
""", watchdog=f"{watchdog}s")
    box.write_unit("prober-watch.service.d/verbose.conf",
                   "[Service]\nExecStart=\nExecStart=/usr/local/bin/prober -v watch\n")
    freeze(box, stack.backend_unit)
    harness.thrash()
    harness.wait_stalling(THRASHER, some=5)
    box.systemctl("start", "prober-watch.service")
    watcher = box.main_pid("prober-watch.service")
    wait_for(lambda: len(run_durations(installed)) >= 3, 60, "three runs of a hung target")
    durations = run_durations(installed)
    assert all(watchdog < d < timeout + 2 for d in durations), durations
    assert box.main_pid("prober-watch.service") == watcher
    assert box.unit_property("prober-watch.service", "NRestarts") == "0"
    assert "Watchdog timeout" not in box.console_tail(500)
    assert harness.oom_kills(harness.cgroup("prober-watch.service")) == 0


@pytest.mark.parametrize("adjust", ["shipped", "reversed"])
def test_oom_score_adjust_decides_whom_the_kernel_kills(
        box: Sandbox, stack: Stack, harness: MemoryPressure, adjust: str) -> None:
    """A grower with the default oom_score_adj (0, as `convert` has) fills the sandbox: with the
    shipped OOMScoreAdjust=-900 the kernel kills the grower and never the watcher; reversed to
    +1000 (a drop-in), it kills the watcher. The setting, not the watcher's size, saves it."""
    installed = install(box, config(stack), watchdog=f"{WATCHDOG}s")
    if adjust == "reversed":
        box.write_unit("prober-watch.service.d/zz-oom.conf", "[Service]\nOOMScoreAdjust=1000\n")
    box.systemctl("start", "prober-watch.service")
    wait_for(lambda: run_durations(installed) != [], 30, "a first run of the watcher")
    watcher = box.main_pid("prober-watch.service")
    harness.thrash()
    harness.wait_stalling(THRASHER, some=5)
    harness.grow(rate_mib=16, oom_score_adj=0)
    if adjust == "shipped":
        harness.wait_oom_killed(GROWER, within=90)
        check_prober_survived(box, harness, installed, "watch", watcher)
        return
    wait_for(lambda: box.main_pid("prober-watch.service") not in (0, watcher), 90,
             "the watcher, made the kernel's first choice, killed and restarted by systemd")
    assert box.unit_property("prober-watch.service", "NRestarts") != "0"
    if kernel_log_readable():
        kills = harness.kernel_oom_kills()
        assert any(k.cgroup == "/prober.slice/prober-watch.service" for k in kills), kills


# --- restarts with judgment ---------------------------------------------------------------

HELD = re.compile(r"target=backend unit=backend\.service: wait: held: memory pressure of "
                  r"/system\.slice/backend\.service: some ([\d.]+)%")


def start_starving_backend(box: Sandbox, stack: Stack, harness: MemoryPressure, mode: str,
                           hold: str) -> tuple[Installed, list[int]]:
    """The prober (with `pressure_hold = hold`), and a backend starving for memory: the
    thrasher's processes moved into its cgroup (its own PSI climbs, as Sidekiq's does when its
    jobs' children thrash), and its answers slower than the probe's timeout."""
    box.write_unit(f"{stack.backend_unit}.d/delegate.conf", "[Service]\nDelegate=yes\n")
    box.systemctl("restart", stack.backend_unit)
    box.wait_port(stack.backend_port)
    installed = start_prober(box, stack, mode)
    installed.config.write_text(config(stack).replace(
        'startup_grace = "0s"', f'startup_grace = "0s"\npressure_hold = "{hold}"'))
    if mode == "watch":
        box.systemctl("reload", "prober-watch.service")
        wait_for(lambda: "reloaded" in box.unit_property("prober-watch.service", "StatusText"),
                 20, "the watcher reloaded")
    harness.thrash(workers=STARVING_WORKERS)
    thrashers = harness.move(THRASHER, stack.backend_unit)
    harness.wait_stalling(stack.backend_unit, some=15, within=90)
    assert stack.slow_file is not None
    stack.slow_file.write_text("3")
    return installed, thrashers


@pytest.mark.parametrize("mode", ["timer", "watch"])
def test_slow_backend_is_held_under_pressure_and_left_alone_when_it_passes(
        box: Sandbox, stack: Stack, harness: MemoryPressure, mode: str) -> None:
    """A backend that only times out while it starves for memory is held, not restarted, with
    the reading and the hold left in the reason; when the pressure ends and it answers again,
    nothing was restarted: the outage ended without a cold start on a starving host."""
    installed, thrashers = start_starving_backend(box, stack, harness, mode, "5m")
    backend_before = box.main_pid(stack.backend_unit)
    wait_for(lambda: HELD.search(installed.log.read_text()), 60,
             "the backend's restart held under pressure")
    held = HELD.search(installed.log.read_text())
    assert held is not None and float(held[1]) >= 10
    assert "restarting backend.service in" in installed.log.read_text()
    harness.kill(thrashers)
    assert stack.slow_file is not None
    stack.slow_file.unlink()
    wait_for(lambda: "target=backend: recovered" in installed.log.read_text(), 60,
             "the backend answering again")
    assert box.main_pid(stack.backend_unit) == backend_before
    assert "target=backend unit=backend.service: restarting" not in installed.log.read_text()
    saved = saved_state(installed.state, has_event("backend", "recovered"), 60,
                        "the recovery saved (after the run that logged it)")
    history = [e["event"] for e in saved["targets"]["backend"]["history"]]
    assert history[-3:] == ["down", "held", "recovered"], history


@pytest.mark.parametrize("mode", ["timer", "watch"])
def test_a_hold_runs_out_and_the_backend_is_restarted(
        box: Sandbox, stack: Stack, harness: MemoryPressure, mode: str) -> None:
    """Slowness that outlasts pressure_hold gets the restart after all, at the hold's end: by
    the first run after it (a run's deadline at the latest), with who held the memory noted."""
    hold = 8.0
    installed, _ = start_starving_backend(box, stack, harness, mode, f"{hold:g}s")
    backend_before = box.main_pid(stack.backend_unit)
    wait_for(lambda: HELD.search(installed.log.read_text()), 60, "the restart held")
    wait_for(lambda: box.main_pid(stack.backend_unit) not in (0, backend_before), 60,
             "the backend restarted once the hold ran out")

    def backend() -> dict[str, Any]:
        return dict(json.loads(installed.state.read_text())["targets"]["backend"])

    wait_for(lambda: any(e["event"] == "restart" for e in backend()["history"]), 30,
             "the restart recorded (after its verification)")
    history = backend()["history"]
    at = {e["event"]: e["at"] for e in history}
    assert hold <= at["restart"] - at["down"] <= hold + DEADLINE, history
    assert at["down"] <= at["held"] <= at["restart"]
    for event in ("down", "restart"):  # starving: the largest memory users noted
        entry = next(e for e in history if e["event"] == event)
        assert entry.get("top_memory"), entry


@pytest.mark.parametrize("mode", ["timer", "watch"])
def test_the_report_names_the_grower_while_a_target_starves(
        box: Sandbox, stack: Stack, harness: MemoryPressure, mode: str) -> None:
    """While a starving target fails and the anonymous-memory grower grows, the report names
    the grower among the largest memory users (by anonymous memory: not the thrasher's file)."""
    installed, _ = start_starving_backend(box, stack, harness, mode, "5m")
    wait_for(lambda: HELD.search(installed.log.read_text()), 60, "a starving, failing target")
    harness.grow(rate_mib=8)
    wait_for(lambda: "the largest memory users: grower.service" in installed.log.read_text(),
             60, "the grower named first among the largest memory users")
    harness.wait_oom_killed(GROWER, within=120)
    assert box.unit_property("prober.timer" if mode == "timer" else "prober-watch.service",
                             "ActiveState") == "active"
