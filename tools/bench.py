"""`make bench`: the figures of the "Performance" issue, measured in one run on this machine.

    python -m tools.bench [--json PATH] [--reps N] [--no-sandbox]

Prints one table (each figure beside its baseline and target, with a verdict: OK, MISSED, or
"pending" and why), the machine, where a healthy check's import time goes, and notes; then the
same as JSON, at the end of stdout or in PATH. Exits non-zero only when the benchmark itself
could not run (a server, the prober or the sandbox misbehaved), never for a missed target.

Everything is real: loopback servers from tests/support/servers.py running in this process, the
prober
as a fresh process per run (this venv's `prober` console script, as an operator runs it), curl
for the operator's loop, and the systemd sandbox of tests/support/sandbox.py for restarts. Work
files
live in a fresh directory under /var/tmp (the sandbox's under .sandbox/), removed at the end.

Timing: children are timed one by one with time.perf_counter (hyperfine when installed), the
commands of a comparison interleaved so that load from other processes hits them alike; a
figure is the median. Peak RSS comes from /usr/bin/time -v (else getrusage in a fresh child).

Bytecode: the children get a bytecode cache of their own (PYTHONPYCACHEPREFIX in the work
directory, filled by a warm-up run), as a pip-installed prober has its .pyc compiled at install.
This checkout's shell may set PYTHONDONTWRITEBYTECODE, under which an editable install
recompiles prober/ on every run; one row shows what that costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from prober.core.config import DEFAULT_PRESSURE_THRESHOLD
from prober.memory.pressure import read_memory_pressure
from tests.support.processes import stop_process
from tests.support.servers import Server, hang, health, serve

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
_SCRIPT = Path(PY).parent / "prober"
PROBER = [str(_SCRIPT)] if _SCRIPT.is_file() else [PY, "-m", "prober"]
TIME = "/usr/bin/time"
MIB = 1024  # ru_maxrss and /usr/bin/time count KiB

MANY_TARGETS, MANY_HANGING, MANY_TIMEOUT = 200, 20, 2.0
MANY_RUNS = 5  # one run's wall time moves by ~0.1 s here: the median, and the worst beside it
SPEEDUP_TARGET = 10.0
RESTART_EXTRA_TARGET = 0.100
WATCH_INTERVAL, WATCH_THRESHOLD, WATCH_TIMEOUT = 1.0, 2, 1.0
WATCH_BOUND = WATCH_THRESHOLD * WATCH_INTERVAL + WATCH_TIMEOUT + 0.5
# Loaded by a healthy check, these would be paid for on every run for nothing. Not the actuator
# modules themselves: config parsing imports every registered one for its keys; what is optional
# in them (the D-Bus client, the polkit rule) is named here instead.
HEAVY = ("dbus_next", "tenacity", "prober.outputs.notify",
         "prober.actuators.polkit", "prober.shell.sdnotify", "prometheus_client",
         "prober.outputs.metrics", "prober.outputs.web", "prober.outputs.page",
         "prober.shell.record", "prober.core.record", "prober.outputs.timeline")

BASELINE = [PY, "-c", "import httpx, click"]  # issue 7's baseline, retired: now info only
# The floor of a healthy check (issue 14): the least a program can do that probes the same
# targets with httpx's async client, no prober code at all. Plain http, so, like the prober's
# client for plain http, it loads no CA certificates; and, like the prober, it skips the
# interpreter's teardown (os._exit after flushing).
FLOOR = """\
import asyncio, os, sys, httpx
async def main():
    async with httpx.AsyncClient(verify=False, trust_env=False) as client:
        for response in await asyncio.gather(*(client.get(url) for url in sys.argv[1:])):
            response.raise_for_status()
asyncio.run(main())
sys.stdout.flush()
os._exit(0)
"""
ONESHOT_RATIO_TARGET = 1.05
ONESHOT_RSS_EXTRA_MIB = 1.0
# Less still: only the imports httpx's first async request makes (asyncio, anyio's asyncio
# backend, httpcore's HTTP/1.1 connection, h11), no request at all.
STACK = """\
import os, httpx, click
import asyncio, anyio._backends._asyncio, anyio.streams.tls, h11, httpcore._async.http11
os._exit(0)
"""
# Peak RSS without /usr/bin/time: a fresh, tiny child (python -S, no imports but builtins) that
# forks the command and asks getrusage(RUSAGE_CHILDREN) once it is gone. The fork's own pages
# count too (Linux keeps the high-water mark across exec): a few MiB, below any command here.
RSS_CHILD = """\
import os, resource, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status = os.waitpid(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as out:
    out.write(f"{seconds} {os.waitstatus_to_exitcode(status)} "
              f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""
# Which modules a healthy check leaves loaded (from the inside: lazy importers included).
MODULES_CHILD = """\
import json, sys
from prober.shell.cli import run
code = run(sys.argv[1:])
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
# Where the wall time of a check goes, seen from inside a fresh process that ends as
# prober.shell.cli.main() does (no teardown).
STAGES_CHILD = """\
import time
began, started = time.time(), time.perf_counter()
import prober.shell.cli, prober.shell.check
imported = time.perf_counter()
import contextlib, io, json, os, sys
with contextlib.redirect_stdout(io.StringIO()):
    code = prober.shell.cli.run(sys.argv[1:])
print(json.dumps({"began": began, "imports": imported - started,
                  "run": time.perf_counter() - imported, "code": code, "ended": time.time()}),
      flush=True)
os._exit(0)
"""
# Run inside the sandbox: the restart path exactly as `check` takes it. The actuator is made
# and has read the unit's facts (bus connected) before the decision, as in check._gather_facts;
# the clock runs from the decision, i.e. around SystemdActuator.restart(). Interleaved with
# `systemctl restart`, and after each restart systemd's own record of the stop/start.
RESTART_CHILD = """\
import asyncio, json, subprocess, sys, time
from prober.io.systemd import Bus
from prober.core.config import Target
from prober.probes.http import HttpProbe
from prober.actuators.systemd import SystemdActuator
unit, reps = sys.argv[1], int(sys.argv[2])
target = Target(name="bench", probe=HttpProbe(url="http://127.0.0.1:9/"), unit=unit)
def own_stop_start():
    out = subprocess.run(["systemctl", "show", "--value", "-p", "ActiveExitTimestampMonotonic",
                          "-p", "ActiveEnterTimestampMonotonic", unit],
                         capture_output=True, text=True, check=True).stdout.split()
    enter, leave = (int(x) for x in out)
    return (enter - leave) / 1e6
async def main():
    result = {"systemctl": [], "prober": [], "own_systemctl": [], "own_prober": [],
              "details": []}
    for _ in range(reps):
        started = time.perf_counter()
        subprocess.run(["systemctl", "restart", unit], check=True)
        result["systemctl"].append(time.perf_counter() - started)
        result["own_systemctl"].append(own_stop_start())
        actuator = SystemdActuator()
        try:
            await actuator.unit_facts(unit, Bus.SYSTEM)
            started = time.perf_counter()
            restarted = await actuator.restart(target)
            result["prober"].append(time.perf_counter() - started)
        finally:
            await actuator.close()
        if not restarted.ok:
            raise SystemExit(f"restart failed: {restarted.detail}")
        result["details"].append(restarted.detail)
        result["own_prober"].append(own_stop_start())
    print(json.dumps(result))
asyncio.run(main())
"""
CURL_LOOP = 'for url in "$@"; do curl -s -o /dev/null -m {timeout:g} "$url"; done'


class BenchError(Exception):
    """The benchmark itself could not run as planned (not a missed target)."""


@dataclass
class Row:
    """One line of the table; `data` holds the numbers behind it for the JSON."""

    figure: str
    measured: str
    baseline: str
    target: str
    verdict: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measured:
    seconds: float
    rss_kib: int
    code: int
    out: str
    err: str


@dataclass
class Bench:
    """What every figure needs: the work directory, the children's environment, the results."""

    workdir: Path
    env: dict[str, str]
    reps: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.workdir / name


# --- formatting ---------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def mib(kib: int) -> str:
    return f"{kib / MIB:.1f} MiB"


def verdict(ok: bool, detail: str) -> str:
    return f"{'OK' if ok else 'MISSED'} ({detail})"


def table(rows: Sequence[Row]) -> str:
    cells = [("figure", "measured", "baseline", "target", "verdict")]
    cells += [(r.figure, r.measured, r.baseline, r.target, r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)),
                   row[4]]).rstrip()
        for row in cells
    )


# --- running children ---------------------------------------------------------------------


def child_env(workdir: Path) -> dict[str, str]:
    """This environment, minus what would steer the prober elsewhere, plus its own pycache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROBER_", "DBUS_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_",
                                "JOURNAL_STREAM", "STATE_DIRECTORY"))
           and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    # No system bus on this host: a unit lookup fails at once instead of finding the host's.
    env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={workdir}/no-bus"
    return env


def run(argv: Sequence[str], env: Mapping[str, str], *, expect: Sequence[int] = (0,),
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), env=dict(env), cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode not in expect:
        raise BenchError(f"`{shlex.join(argv)}` exited with {done.returncode} "
                         f"(expected {'/'.join(map(str, expect))}):\n{done.stderr[-2000:]}")
    return done


def timed(argv: Sequence[str], env: Mapping[str, str], expect: Sequence[int] = (0,)) -> float:
    """Wall time of one run; output goes nowhere, so that printing costs the same everywhere."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), env=dict(env), cwd=REPO, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                          check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in expect:
        raise BenchError(f"`{shlex.join(argv)}` exited with {done.returncode}:\n"
                         f"{done.stderr.decode(errors='replace')[-2000:]}")
    return seconds


def compare(commands: Mapping[str, Sequence[str]], env: Mapping[str, str], reps: int
            ) -> dict[str, list[float]]:
    """Wall times of each command, `reps` runs each after one warm-up run, interleaved."""
    for argv in commands.values():
        timed(argv, env)  # warm-up: fills the pycache and the page cache
    if shutil.which("hyperfine"):
        found = _hyperfine(commands, env, reps)
        if found is not None:
            return found
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):
        for name, argv in commands.items():
            times[name].append(timed(argv, env))
    return times


def _hyperfine(commands: Mapping[str, Sequence[str]], env: Mapping[str, str], reps: int
               ) -> dict[str, list[float]] | None:
    export = Path(env["PYTHONPYCACHEPREFIX"]).parent / "hyperfine.json"
    argv = ["hyperfine", "--shell=none", "--style=none", "--warmup", "1", "--runs", str(reps),
            "--export-json", str(export)]
    for name, command in commands.items():
        argv += ["--command-name", name, shlex.join(command)]
    done = subprocess.run(argv, env=dict(env), cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0 or not export.exists():
        return None
    results = json.loads(export.read_text())["results"]
    return {name: [float(t) for t in result["times"]]
            for name, result in zip(commands, results, strict=True)}


def measure(argv: Sequence[str], env: Mapping[str, str], expect: Sequence[int] = (0,)
            ) -> Measured:
    """One run: wall time, peak RSS (KiB), exit code and output."""
    if os.access(TIME, os.X_OK):
        report = Path(env["PYTHONPYCACHEPREFIX"]).parent / "time-v.txt"
        started = time.perf_counter()
        done = run([TIME, "-v", "-o", str(report), *argv], env, expect=expect)
        seconds = time.perf_counter() - started
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read_text())
        if found is None:
            raise BenchError(f"{TIME} -v printed no peak RSS")
        return Measured(seconds, int(found.group(1)), done.returncode, done.stdout, done.stderr)
    report = Path(env["PYTHONPYCACHEPREFIX"]).parent / "rusage.txt"
    done = run([PY, "-S", "-c", RSS_CHILD, str(report), *argv], env)
    took, code, rss = report.read_text().split()
    if int(code) not in expect:
        raise BenchError(f"`{shlex.join(argv)}` exited with {code}:\n{done.stderr[-2000:]}")
    return Measured(float(took), int(rss), int(code), done.stdout, done.stderr)


def write_config(path: Path, targets: Sequence[tuple[str, str]], defaults: str = "",
                 extra: str = "") -> Path:
    lines = [f"[defaults]\n{defaults}\n"] if defaults else []
    for name, url in targets:
        lines.append(f'[[target]]\nname = "{name}"\nurl = "{url}"\n{extra}')
    path.write_text("\n".join(lines))
    return path


# --- figure 1: a healthy check of 2 targets ------------------------------------------------


def host_memory_psi() -> float | None:
    """The host's memory PSI `some avg10` now, or None where it cannot be read."""
    reading = read_memory_pressure()
    return None if reading is None else reading.some_avg10


def figure_healthy(bench: Bench) -> None:
    with serve(health()) as first, serve(health()) as second:
        config = write_config(bench.path("healthy.toml"),
                              [("a", first.url("/health")), ("b", second.url("/health"))])
        state = bench.path("healthy-state.json")
        args = ["check", "--config", str(config), "--state", str(state)]
        check = [*PROBER, *args]
        # As this checkout's shell has it: no bytecode cache for prober/ (stdlib and
        # site-packages keep their own __pycache__), so every run compiles prober/ again.
        cold = ["env", "-u", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE=1", *check]
        urls = [first.url("/health"), second.url("/health")]
        times = compare({"check": check, "floor": [PY, "-c", FLOOR, *urls], "cold": cold,
                         "baseline": BASELINE, "stack": [PY, "-c", STACK]}, bench.env,
                        bench.reps)
        check_s, floor_s, cold_s, base_s, stack_s = (
            statistics.median(times[k]) for k in ("check", "floor", "cold", "baseline", "stack"))
        ratio = check_s / floor_s
        fastest = min(times["check"]) / min(times["floor"])  # how much noise moved it
        floor_text = f"floor {ms(floor_s)}"
        bench.rows.append(Row(
            "healthy check, 2 targets: median wall", ms(check_s), floor_text,
            f"<= {ONESHOT_RATIO_TARGET:g}x",
            verdict(ratio <= ONESHOT_RATIO_TARGET, f"{ratio:.2f}x; fastest runs {fastest:.2f}x"),
            {"seconds": times["check"], "floor_seconds": times["floor"], "ratio": ratio,
             "ratio_of_fastest": fastest}))
        bench.rows.append(Row(
            "  floor: asyncio + httpx GETs of the same 2 targets, no prober", ms(floor_s),
            f"import httpx,click {ms(base_s)}", "-", f"info ({floor_s / base_s:.2f}x)",
            {"seconds": times["floor"], "ratio": floor_s / base_s}))
        bench.rows.append(Row(
            "  the imports of those GETs alone, no I/O", ms(stack_s),
            f"import httpx,click {ms(base_s)}", "-", f"info ({stack_s / base_s:.2f}x)",
            {"seconds": times["stack"], "ratio": stack_s / base_s}))
        bench.rows.append(Row(
            "  same check, no .pyc for prober/", ms(cold_s), floor_text, "-",
            f"info ({cold_s / floor_s:.2f}x)", {"seconds": times["cold"],
                                                "ratio": cold_s / floor_s}))
        if (REPO / "prober" / "__pycache__").is_dir():
            bench.notes.append("prober/__pycache__ exists in this checkout: the row "
                               "'no .pyc for prober/' used it, so it is not a cold compile.")

        rss = [measure(check, bench.env).rss_kib for _ in range(5)]
        floor_rss = [measure([PY, "-c", FLOOR, *urls], bench.env).rss_kib for _ in range(5)]
        peak, floor_peak = max(rss), max(floor_rss)
        bound = floor_peak + ONESHOT_RSS_EXTRA_MIB * MIB
        bench.rows.append(Row(
            "healthy check, 2 targets: peak RSS", mib(peak), f"floor {mib(floor_peak)}",
            f"<= floor + {ONESHOT_RSS_EXTRA_MIB:g} MiB",
            verdict(peak <= bound, f"{(peak - floor_peak) / MIB:+.1f} MiB; max of {len(rss)} "
                    "runs each"),
            {"rss_kib": rss, "floor_rss_kib": floor_rss}))

        done = run([PY, "-c", MODULES_CHILD, *args], bench.env)
        loaded = set(json.loads(done.stdout.strip().splitlines()[-1])["modules"])
        heavy = [m for m in HEAVY if m in loaded]
        psi = host_memory_psi()
        # A run on a host at or above the default pressure_threshold records a memory-pressure
        # episode (the outage record's modules): then it is not the calm healthy path.
        starving = f" (host memory PSI some {psi:.0f}%, at or above pressure_threshold " \
            f"{DEFAULT_PRESSURE_THRESHOLD:g}%: a pressure episode is recorded)" \
            if psi is not None and psi >= DEFAULT_PRESSURE_THRESHOLD else ""
        bench.rows.append(Row(
            "healthy check: heavy modules loaded", ", ".join(heavy) or "none", "-",
            "none", ("OK" if not heavy else "MISSED") + starving,
            {"checked": HEAVY, "loaded": heavy, "modules": len(loaded), "host_psi_some": psi}))
        bench.notes.append("Heavy modules looked for in sys.modules after a healthy check: "
                           + ", ".join(HEAVY) + ".")

        stages(bench, args)
        mine = importtime(bench, [PY, "-X", "importtime", "-m", "prober", *args])
        base = importtime(bench, [PY, "-X", "importtime", *BASELINE[1:]])
        bench.extra["imports"] = {
            "total_seconds": sum(mine.values()),
            "baseline_total_seconds": sum(base.values()),
            "modules": top(mine, 15),
            "packages": top(by_package(mine), 12),
            "packages_over_baseline": top({
                k: v - by_package(base).get(k, 0.0) for k, v in by_package(mine).items()}, 12),
        }


def stages(bench: Bench, args: Sequence[str]) -> None:
    """Start, prober's imports, the run, the exit: medians over fresh processes.

    Start is from spawning to the first line of code (interpreter, site); exit from the last
    line to the parent seeing the process gone (Python's teardown of every module).
    """
    found: dict[str, list[float]] = {"start": [], "imports": [], "run": [], "exit": []}
    for _ in range(max(3, bench.reps // 2)):
        spawned = time.time()
        done = run([PY, "-c", STAGES_CHILD, *args], bench.env)
        gone = time.time()
        data = json.loads(done.stdout)
        found["start"].append(data["began"] - spawned)
        found["imports"].append(data["imports"])
        found["run"].append(data["run"])
        found["exit"].append(gone - data["ended"])
    bench.extra["stages"] = {k: statistics.median(v) for k, v in found.items()}


def importtime(bench: Bench, argv: Sequence[str]) -> dict[str, float]:
    """Median self time (s) of each module over 3 runs of `python -X importtime`.

    Modules anyio imports through importlib.import_module from inside a running event loop
    (its asyncio backend) do not show up there: the stages above count them in "run".
    """
    runs: list[dict[str, int]] = []
    for _ in range(3):
        selfs: dict[str, int] = {}
        for line in run(argv, bench.env).stderr.splitlines():
            found = re.match(r"import time:\s+(\d+) \|\s+\d+ \| *(\S+)", line)
            if found:
                selfs[found.group(2)] = selfs.get(found.group(2), 0) + int(found.group(1))
        runs.append(selfs)
    names = set(runs[0]).intersection(*runs[1:])
    return {name: statistics.median(r[name] for r in runs) / 1e6 for name in names}


def by_package(cost: Mapping[str, float]) -> dict[str, float]:
    packages: dict[str, float] = {}
    for name, seconds in cost.items():
        package = name.split(".")[0]
        packages[package] = packages.get(package, 0.0) + seconds
    return packages


def top(values: Mapping[str, float], count: int) -> dict[str, float]:
    return dict(sorted(values.items(), key=lambda kv: -kv[1])[:count])


# --- the healthy check with a Prometheus textfile ------------------------------------------


def figure_textfile(bench: Bench) -> None:
    """The healthy check of figure 1, with and without a textfile: prometheus_client's cost."""
    with serve(health()) as first, serve(health()) as second:
        targets = [("a", first.url("/health")), ("b", second.url("/health"))]
        plain = write_config(bench.path("textfile-plain.toml"), targets)
        textfile = bench.path("prober.prom")
        config = bench.path("textfile.toml")
        config.write_text(f'textfile = "{textfile}"\n' + plain.read_text())

        def check(config: Path, state: str) -> list[str]:
            return [*PROBER, "check", "--config", str(config), "--state", str(bench.path(state))]

        commands = {"textfile": check(config, "textfile-state.json"),
                    "plain": check(plain, "plain-state.json")}
        times = compare(commands, bench.env, bench.reps)
        if "prober_probe_success" not in textfile.read_text():
            raise BenchError(f"the check wrote no metrics to {textfile}")
        with_s, plain_s = (statistics.median(times[k]) for k in ("textfile", "plain"))
        bench.rows.append(Row(
            "healthy check + Prometheus textfile: median wall", ms(with_s),
            f"same check, no textfile {ms(plain_s)}", "-",
            f"info ({with_s / plain_s:.2f}x, {(with_s - plain_s) * 1000:+.0f} ms)",
            {"seconds": times["textfile"], "baseline_seconds": times["plain"],
             "ratio": with_s / plain_s}))
        rss = {name: [measure(argv, bench.env).rss_kib for _ in range(3)]
               for name, argv in commands.items()}
        peak, base = max(rss["textfile"]), max(rss["plain"])
        bench.rows.append(Row(
            "healthy check + Prometheus textfile: peak RSS", mib(peak),
            f"same check, no textfile {mib(base)}", "-",
            f"info ({(peak - base) / MIB:+.1f} MiB, max of 3)",
            {"rss_kib": rss["textfile"], "baseline_rss_kib": rss["plain"]}))


# --- figure 2: 200 targets, 20 of them hanging ---------------------------------------------


@contextlib.contextmanager
def many_servers(count: int, hanging: int) -> Iterator[list[tuple[str, str]]]:
    """`count` targets on loopback; every (count // hanging)th accepts and never answers."""
    every = count // hanging
    with contextlib.ExitStack() as stack:
        answering: list[Server] = [stack.enter_context(serve(health())) for _ in range(12)]
        silent: list[Server] = [stack.enter_context(serve(hang())) for _ in range(4)]
        targets = []
        for i in range(count):
            pool = silent if i % every == every - 1 else answering
            targets.append((f"t{i:03d}", pool[i % len(pool)].url(f"/health?n={i}")))
        yield targets


def figure_many(bench: Bench) -> None:
    with many_servers(MANY_TARGETS, MANY_HANGING) as targets:
        config = write_config(bench.path("many.toml"), targets,
                              defaults=f'timeout = "{MANY_TIMEOUT:g}s"')
        state = bench.path("many-state.json")
        check = [*PROBER, "check", "--json", "--config", str(config), "--state", str(state)]
        timed(check, bench.env, expect=(1,))  # warm-up
        runs: list[Measured] = []
        for _ in range(MANY_RUNS):
            state.unlink()  # every measured run is a first run: 20 failures, none at threshold
            runs.append(measure(check, bench.env, expect=(1,)))
            report = json.loads(runs[-1].out)
            failures = [t.get("failure") for t in report["targets"] if not t["ok"]]
            if len(report["targets"]) != MANY_TARGETS or failures != ["timeout"] * MANY_HANGING:
                raise BenchError(f"expected {MANY_HANGING} timeouts of {MANY_TARGETS}, got "
                                 f"{failures} of {len(report['targets'])}")
        walls = [r.seconds for r in runs]
        inside = [json.loads(r.out)["duration_ms"] / 1000 for r in runs]
        median, worst = statistics.median(walls), max(walls)
        bound = MANY_TIMEOUT + 0.5
        bench.rows.append(Row(
            f"{MANY_TARGETS} targets ({MANY_HANGING} hang), timeout {MANY_TIMEOUT:g}s: wall",
            secs(median), "", f"<= {secs(bound)}",
            verdict(median <= bound, f"median of {MANY_RUNS}, worst {secs(worst)}; "
                                     f"the run itself {secs(statistics.median(inside))}"),
            {"seconds": walls, "run_seconds": inside, "median": median, "worst": worst}))
        curl = shutil.which("curl")
        if curl is None:
            bench.rows[-1].baseline = "curl loop: pending"
            bench.rows.append(Row(f"{MANY_TARGETS} targets: speedup over curl loop", "-",
                                  "-", f">= {SPEEDUP_TARGET:g}x",
                                  "pending: curl missing (apt-get install -y curl)"))
        else:
            loop = ["bash", "-c", CURL_LOOP.format(timeout=MANY_TIMEOUT), "curl-loop",
                    *(url for _, url in targets)]
            started = time.perf_counter()
            run(loop, bench.env, expect=range(256), timeout=MANY_TARGETS * (MANY_TIMEOUT + 5))
            curl_s = time.perf_counter() - started
            speedup = curl_s / worst
            bench.rows[-1].baseline = f"curl loop {secs(curl_s)}"
            bench.rows.append(Row(
                f"{MANY_TARGETS} targets: speedup over curl loop", f"{speedup:.1f}x",
                f"curl loop {secs(curl_s)}", f">= {SPEEDUP_TARGET:g}x",
                verdict(speedup >= SPEEDUP_TARGET, "the loop once, against the worst run"),
                {"curl_seconds": curl_s, "speedup": speedup}))
        peak = max(r.rss_kib for r in runs)
        bench.rows.append(Row(f"{MANY_TARGETS} targets: peak RSS", mib(peak), "-", "-",
                              f"info (max of {MANY_RUNS})", {"rss_kib": [r.rss_kib for r in runs]}))


# --- the sandbox: figures 3 and 4 ----------------------------------------------------------


def sandbox_missing() -> str:
    """Why the sandbox cannot be used here ("" if it can)."""
    try:
        from tests.support.sandbox import missing_requirements
    except ImportError as exc:
        return f"tests/support/sandbox.py cannot be imported: {exc}"
    missing = missing_requirements()
    return "; ".join(missing)


def figure_restart(bench: Bench, box: Any) -> None:
    unit = "bench-sleeper.service"
    box.write_service(unit, ["/bin/sleep", "infinity"], unit_extra="StartLimitIntervalSec=0")
    box.systemctl("start", unit)
    box.wait_active(unit)
    reps = 10
    # No cwd=: Sandbox.run passes it as `nsenter --wdir`, which util-linux 2.38 lacks (-w).
    done = box.run([PY, "-c", RESTART_CHILD, unit, str(reps)], timeout=180)
    if done.returncode != 0:
        raise BenchError(f"the restart benchmark failed in the sandbox:\n{done.stderr[-2000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    prober_s, systemctl_s = statistics.median(data["prober"]), statistics.median(data["systemctl"])
    extra = prober_s - systemctl_s
    own = statistics.median(data["own_prober"])
    beyond_own = statistics.median(p - o for p, o in zip(data["prober"], data["own_prober"],
                                                          strict=True))
    bench.rows.append(Row(
        "restart over D-Bus: decision -> job done", f"prober {ms(prober_s)}",
        f"systemctl restart {ms(systemctl_s)}", f"< {ms(RESTART_EXTRA_TARGET)} extra",
        verdict(extra < RESTART_EXTRA_TARGET, f"{extra * 1000:+.0f} ms"),
        {**data, "extra_seconds": extra, "beyond_own_seconds": beyond_own}))
    bench.notes.append(
        f"Restart (sandbox, {reps} each, interleaved): systemd's own stop->start of the unit "
        f"(ActiveExit->ActiveEnter) took {ms(own)}; the prober's restart() took "
        f"{ms(beyond_own)} more than that (median of pairs), for 2 x 3 D-Bus reads (MainPID "
        "before and after), AddMatch+Subscribe, RestartUnit and the JobRemoved wait.")


class Watcher:
    """`prober -v watch` in the background, its stderr lines timestamped as they arrive."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.log: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(list(argv), env=dict(env), cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name="watch-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> float:
        """When the `count`th line matching `pattern` arrived (monotonic)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                tail = "\n".join(text for _, text in self.log[-15:])
                raise BenchError(f"prober watch: no line matching {pattern!r} within "
                                 f"{timeout:g} s; its last lines:\n{tail}") from None
            self.log.append((at, line))
            if re.search(pattern, line):
                seen += 1
                if seen >= count:
                    return at

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


WATCH_DEFAULTS = "\n".join([
    f'timeout = "{WATCH_TIMEOUT:g}s"', f"failure_threshold = {WATCH_THRESHOLD}",
    'startup_grace = "0s"', 'cooldown = "1s"', 'restart_timeout = "15s"',
    'verify_timeout = "5s"',
    # PSI is host-wide and other jobs move it: the hung server is never held here.
    "pressure_threshold = 0",
])
RUN_DONE = r"prober: (OK|WARNING|CRITICAL): "


def watch_once(bench: Bench, name: str, url: str, env: Mapping[str, str],
               fail: Callable[[], None], restarted: str,
               repair: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Start a watcher, let it pass twice, call `fail()` right after a run: the worst phase."""
    config = write_config(bench.path(f"watch-{name}.toml"), [("web", url)],
                          defaults=WATCH_DEFAULTS,
                          extra='expect_body = "OK"\nunit = "bench-web.service"\n')
    argv = [*PROBER, "-v", "watch", "--config", str(config),
            "--state", str(bench.path(f"watch-{name}-state.json")),
            "--interval", f"{WATCH_INTERVAL:g}s"]
    watcher = Watcher(argv, env)
    try:
        watcher.wait_for(RUN_DONE, timeout=30, count=2)
        onset = time.monotonic()
        fail()
        seen = watcher.wait_for(restarted, timeout=30)
        repair()  # before the restart's job is done, so that the re-probe can pass
        with contextlib.suppress(BenchError):
            watcher.wait_for(r"recovered after restart|still failing|restart failed|"
                             r"restart-failed|unit-unknown", timeout=10)
        return {"seconds": seen - onset,
                "log": [f"{at - onset:+.3f}s {line}" for at, line in watcher.log]}
    finally:
        watcher.stop()


def figure_watch_sandbox(bench: Bench, box: Any) -> None:
    from tests.support.sandbox import STANDIN, free_ports

    port = free_ports(1)[0]
    fail_file = box.workdir / "web.fail"
    unit = "bench-web.service"
    box.write_service(unit, [PY, str(STANDIN), "--port", str(port), "--fail-file",
                             str(fail_file)], env={"PYTHONUNBUFFERED": "1"},
                      unit_extra="StartLimitIntervalSec=0")
    box.systemctl("start", unit)
    box.wait_active(unit)
    box.wait_port(port)
    env = {**bench.env, "DBUS_SYSTEM_BUS_ADDRESS": box.bus_address}
    url = f"http://127.0.0.1:{port}/health"
    restarting = r"target=web unit=bench-web\.service: restarting"

    def answer_500() -> None:
        fail_file.touch()

    def clear() -> None:
        fail_file.unlink(missing_ok=True)

    fails = watch_once(bench, "fails", url, env, answer_500, restarting, clear)
    box.wait_active(unit)
    box.wait_port(port)
    pid = box.host_pid(box.main_pid(unit))

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)  # the kernel still accepts; nothing answers

    hangs = watch_once(bench, "hangs", url, env, freeze, restarting)
    for label, data in (("server answers 500", fails), ("server hangs (SIGSTOP)", hangs)):
        bench.rows.append(Row(
            f"watch: failure -> restart request, {label}", secs(data["seconds"]), "-",
            f"<= {secs(WATCH_BOUND)}",
            verdict(data["seconds"] <= WATCH_BOUND, "`restarting`, sandbox"), data))
    bench.notes.append(
        "Watch: the failure starts right after a run's report line, the worst phase; the "
        "restart request is the `restarting` line on stderr, RestartUnit then goes to the "
        "sandbox's bus. `watch` starts runs --interval apart (a run that overran is followed "
        "at once), so a hanging target delays the restart request by at most "
        f"{WATCH_THRESHOLD} x interval + timeout = "
        f"{WATCH_THRESHOLD * WATCH_INTERVAL + WATCH_TIMEOUT:g} s, within the bound of "
        f"{WATCH_BOUND:g} s.")


def figure_watch_local(bench: Bench, reason: str) -> None:
    """Without systemd: a local server closed at a known instant; the decision line stands in."""
    server = Server(health())
    try:
        data = watch_once(bench, "local", server.url("/health"), bench.env, server.close,
                          r"target=web unit=bench-web\.service: ")
    finally:
        server.close()
    bench.rows.append(Row(
        "watch: failure -> restart decision, server closed", secs(data["seconds"]), "-",
        f"<= {secs(WATCH_BOUND)}",
        verdict(data["seconds"] <= WATCH_BOUND, "decision line: no systemd here"), data))
    bench.notes.append(f"Watch was measured without systemd ({reason}): the decision line "
                       "(the unit cannot be looked up) stands in for the restart request.")


def figures_systemd(bench: Bench, use_sandbox: bool) -> None:
    reason = sandbox_missing() if use_sandbox else "--no-sandbox"
    if reason:
        bench.rows.append(Row("restart over D-Bus: decision -> job done", "-", "-",
                              f"< {ms(RESTART_EXTRA_TARGET)} extra",
                              f"pending: no systemd sandbox here ({reason})"))
        figure_watch_local(bench, reason)
        return
    from tests.support.sandbox import Sandbox, SandboxError

    workdir = REPO / ".sandbox" / f"bench-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        box = Sandbox(workdir)
        try:
            box.start()
        except SandboxError as exc:
            bench.rows.append(Row("restart over D-Bus: decision -> job done", "-", "-",
                                  f"< {ms(RESTART_EXTRA_TARGET)} extra",
                                  f"pending: the sandbox did not boot ({str(exc)[:80]})"))
            figure_watch_local(bench, "the sandbox did not boot")
            return
        try:
            bench.extra["sandbox_boot_seconds"] = box.boot_seconds
            figure_restart(bench, box)
            figure_watch_sandbox(bench, box)
        except SandboxError as exc:
            raise BenchError(f"the sandbox failed: {exc}") from None
        finally:
            box.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- under memory pressure (tests/support/harness.py): each figure against its idle run --------


PRESSURE_LIMIT_MIB = 300  # the whole sandbox, as tests/e2e/test_pressure.py has it
PRESSURE_REPS = 3
PRESSURE_RATIO_TARGET = 2.0
PRESSURE_ONESHOT_RUNS = 7
PRESSURE_CONFIG = """\
interval = "1s"

[defaults]
timeout = "1s"
failure_threshold = {threshold}
startup_grace = "0s"
cooldown = "1s"
max_restarts = 100
restart_timeout = "15s"
verify_timeout = "5s"

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
_RUN_DONE = re.compile(r"\b(?:OK|WARNING|CRITICAL|UNKNOWN): .* targets in [\d.]+s")


def _monotonic_property(box: Any, unit: str, prop: str) -> float:
    """A systemd timestamp of `unit` (CLOCK_MONOTONIC, as time.monotonic()), in seconds."""
    return int(box.unit_property(unit, prop) or 0) / 1e6


def _wait(predicate: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"not within {within:g} s: {what}")
        time.sleep(0.05)


def _wait_next_run(installed: Any, what: str) -> None:
    """Until the next run: the watcher logs a healthy run only when the status changed, but
    every run (the watcher's and the timer's) touches the heartbeat beside the state."""
    beat = installed.state.with_name(installed.state.name + ".last-run")
    seen = _mtime(beat)
    _wait(lambda: _mtime(beat) > seen, 30, what)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _oneshot_seconds(box: Any, runs: int) -> list[float]:
    """Wall time of the shipped prober.service, by systemd's own clock (exec to exit)."""
    if box.unit_property("bench-hold.service", "ActiveState") != "active":
        # An inactive oneshot nothing refers to is forgotten at once, its timestamps with it.
        box.write_service("bench-hold.service", ["/bin/sleep", "infinity"],
                          unit_extra="After=prober.service")
        box.systemctl("start", "bench-hold.service")
    times = []
    for _ in range(runs):
        box.systemctl("start", "prober.service")
        started = _monotonic_property(box, "prober.service", "ExecMainStartTimestampMonotonic")
        ended = _monotonic_property(box, "prober.service", "ExecMainExitTimestampMonotonic")
        if not 0 < started < ended:
            raise BenchError("prober.service left no start/exit timestamps")
        times.append(ended - started)
    return times


def _refused_to_restart(box: Any, stack: Any, installed: Any, unit: str) -> float:
    """Seconds from caddy refusing (servers unloaded right after a healthy run was reported,
    the worst phase) to systemd starting the restart prober asked for (caddy leaves `active`)."""
    import httpx

    log: Path = installed.log

    def healthy_run_seen() -> bool:
        runs = _RUN_DONE.findall(log.read_text())
        return bool(runs) and runs[-1].startswith("OK: ")

    _wait(healthy_run_seen, 60, f"a healthy run of {unit}")
    _wait_next_run(installed, f"the next run of {unit}")
    before = box.main_pid(stack.caddy_unit)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=10, trust_env=False)
    onset = time.monotonic()
    _wait(lambda: _monotonic_property(box, stack.caddy_unit, "ActiveExitTimestampMonotonic")
          > onset, 60, f"{unit} restarting caddy")
    restarted = _monotonic_property(box, stack.caddy_unit, "ActiveExitTimestampMonotonic")
    _wait(lambda: box.main_pid(stack.caddy_unit) not in (0, before), 60, "caddy back")
    box.wait_port(stack.caddy_port, timeout=30)
    return restarted - onset


def _restart_figures(box: Any, stack: Any, installed: Any, reps: int) -> dict[str, list[float]]:
    """failure -> restart request, `reps` times, by the watcher and by the 1 s timer."""
    found: dict[str, list[float]] = {"watch": [], "timer": []}
    box.systemctl("start", "prober-watch.service")
    for _ in range(reps):
        found["watch"].append(_refused_to_restart(box, stack, installed,
                                                  "prober-watch.service"))
    box.systemctl("stop", "prober-watch.service")
    box.systemctl("start", "prober.timer")
    for _ in range(reps):
        found["timer"].append(_refused_to_restart(box, stack, installed, "prober.timer"))
    box.systemctl("stop", "prober.timer")
    return found


PRESSURE_HOLD_S = 10


def _frozen_to_restart(box: Any, stack: Any, installed: Any) -> float:
    """Seconds from caddy's main process frozen (SIGSTOP: connections accepted, never answered)
    right after a reported run, to systemd starting the restart prober asked for."""
    log: Path = installed.log

    def healthy_run_seen() -> bool:
        runs = _RUN_DONE.findall(log.read_text())
        return bool(runs) and runs[-1].startswith("OK: ")

    _wait(healthy_run_seen, 60, "a healthy run")
    _wait_next_run(installed, "the next run")
    before = box.main_pid(stack.caddy_unit)
    box.run(["kill", "-STOP", str(before)], check=True)
    onset = time.monotonic()
    _wait(lambda: _monotonic_property(box, stack.caddy_unit, "ActiveExitTimestampMonotonic")
          > onset, PRESSURE_HOLD_S + 60, "caddy restarted")
    restarted = _monotonic_property(box, stack.caddy_unit, "ActiveExitTimestampMonotonic")
    _wait(lambda: box.main_pid(stack.caddy_unit) not in (0, before), 60, "caddy back")
    box.wait_port(stack.caddy_port, timeout=30)
    return restarted - onset


def _hold_figure(box: Any, stack: Any, installed: Any, harness: Any, config: str
                 ) -> dict[str, float]:
    """A frozen caddy, idle and then starving (the thrasher's processes moved into its cgroup,
    so that its own PSI climbs): when the restart came, and how long the hold lasted."""
    import json

    from tests.support.harness import THRASHER

    installed.config.write_text(config.replace(
        'startup_grace = "0s"', f'startup_grace = "0s"\npressure_hold = "{PRESSURE_HOLD_S}s"'))
    box.write_unit(f"{stack.caddy_unit}.d/delegate.conf", "[Service]\nDelegate=yes\n")
    box.systemctl("start", "prober-watch.service")
    harness.stop_hog(THRASHER)
    idle = _frozen_to_restart(box, stack, installed)
    harness.thrash()
    harness.move(THRASHER, stack.caddy_unit)
    harness.wait_stalling(stack.caddy_unit, some=15, within=60)
    starving = _frozen_to_restart(box, stack, installed)
    box.systemctl("stop", "prober-watch.service")
    history = json.loads(installed.state.read_text())["targets"]["caddy"]["history"]
    held = [e["at"] for e in history if e["event"] == "held"]
    restarts = [e["at"] for e in history if e["event"] == "restart"]
    if not held or not restarts or restarts[-1] < held[-1]:
        raise BenchError(f"the frozen caddy was not held, then restarted: {history[-6:]}")
    return {"idle": idle, "starving": starving, "held": restarts[-1] - held[-1]}


def figures_pressure(bench: Bench, use_sandbox: bool) -> None:
    """A healthy one-shot check, and failure -> restart request for a caddy that stopped
    listening (watch, and the timer every 1 s), under the harness and idle in the same sandbox."""
    names = ("under pressure: healthy one-shot check (shipped prober.service)",
             "under pressure: watch, caddy refused -> restart request",
             "under pressure: timer (1 s), caddy refused -> restart request")
    reason = "--no-sandbox" if not use_sandbox else ""
    if not reason:
        from tests.support.sandbox import missing_requirements

        reason = "; ".join(missing_requirements(memory=True))
    if reason:
        for name in names:
            bench.rows.append(Row(name, "-", "-", "-", f"pending: no memory sandbox ({reason})"))
        return
    from tests.support.deploy import install
    from tests.support.harness import THRASHER, MemoryPressure
    from tests.support.sandbox import Sandbox, SandboxError, start_stack

    workdir = REPO / ".sandbox" / f"bench-pressure-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        with Sandbox(workdir, users=["prober"], memory=True) as box:
            stack = start_stack(box)
            # many restarts of caddy, many starts of the one-shot run, in little time
            for unit in ("caddy.service", "prober.service"):
                box.write_unit(f"{unit}.d/bench.conf", "[Unit]\nStartLimitIntervalSec=0\n",
                               reload=False)
            config = PRESSURE_CONFIG.format(threshold=WATCH_THRESHOLD, caddy=stack.caddy_url,
                                            backend=stack.backend_url)
            installed = install(box, config, period="1s")
            # The watcher logs a run's summary at info only when something changed: -v logs
            # every run's, which these figures count.
            box.write_unit("prober-watch.service.d/verbose.conf",
                           "[Service]\nExecStart=\nExecStart=/usr/local/bin/prober -v watch\n")
            with MemoryPressure(box, limit_mib=PRESSURE_LIMIT_MIB) as harness:
                idle = {"oneshot": _oneshot_seconds(box, PRESSURE_ONESHOT_RUNS),
                        **_restart_figures(box, stack, installed, PRESSURE_REPS)}
                harness.thrash()
                stalled = harness.wait_stalling(THRASHER, some=10)
                loaded = {"oneshot": _oneshot_seconds(box, PRESSURE_ONESHOT_RUNS),
                          **_restart_figures(box, stack, installed, PRESSURE_REPS)}
                hold = _hold_figure(box, stack, installed, harness, config)
                thrasher = harness.unit_pressure(THRASHER)
                whole = harness.unit_pressure("-.slice")
    except SandboxError as exc:
        raise BenchError(f"the pressure sandbox failed: {exc}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, key, target in zip(names, ("oneshot", "watch", "timer"),
                                 (None, PRESSURE_RATIO_TARGET, PRESSURE_RATIO_TARGET),
                                 strict=True):
        under, calm = statistics.median(loaded[key]), statistics.median(idle[key])
        ratio = under / calm
        if target is None:
            verdict_text = f"info ({ratio:.2f}x idle)"
        else:
            verdict_text = verdict(ratio <= target, f"{ratio:.2f}x idle")
        bench.rows.append(Row(name, secs(under), f"idle {secs(calm)}",
                              "-" if target is None else f"<= {target:g}x idle", verdict_text,
                              {"under_pressure": loaded[key], "idle": idle[key],
                               "ratio": ratio}))
    bench.rows.append(Row(
        f"under pressure: frozen caddy (timeouts), pressure_hold {PRESSURE_HOLD_S}s: held, then "
        "restarted", f"held {hold['held']:.1f} s, restart {hold['starving']:.1f} s after the "
        "freeze", f"idle: restart {hold['idle']:.1f} s after the freeze, never held",
        f"held about {PRESSURE_HOLD_S} s", verdict(
            PRESSURE_HOLD_S - 1 <= hold["held"] <= PRESSURE_HOLD_S + WATCH_INTERVAL * 3,
            f"held {hold['held']:.1f} s of {PRESSURE_HOLD_S} s"), hold))
    psi = {"thrasher_start": stalled.pressure, "thrasher_end": thrasher and thrasher.pressure,
           "sandbox_end": whole and whole.pressure}
    bench.extra["pressure"] = {k: v and asdict(v) for k, v in psi.items()}
    end = thrasher.pressure if thrasher else stalled.pressure
    bench.notes.append(
        f"Under pressure: the whole sandbox (services, prober, systemd, bus) limited to "
        f"{PRESSURE_LIMIT_MIB} MiB; a thrasher reading a {2 * PRESSURE_LIMIT_MIB} MiB file "
        f"from 2 processes; its own PSI at the end: some {end.some_avg10:.1f}% / full "
        f"{end.full_avg10:.1f}% (avg10). Idle first, then the same under the thrasher, in the "
        f"same sandbox; medians of {PRESSURE_ONESHOT_RUNS} one-shot runs (systemd's exec-to-exit "
        f"time) and of {PRESSURE_REPS} restarts per mode (caddy unloaded right after a reported "
        f"run; the restart request is when systemd began stopping caddy), threshold "
        f"{WATCH_THRESHOLD}, interval 1 s.")


# --- the Debian package: a run without and with the bytecode postinst compiles -------------


def figure_deb(bench: Bench) -> None:
    """A healthy check from the package's /usr/lib/prober, run as its launcher runs it
    (python3 -IB: the hardened unit's /usr is read-only), without and with py3compile's .pyc."""
    from tests.support import debpkg

    figure = "packaged check, 2 targets: no .pyc (no postinst)"
    missing = debpkg.missing_tools() + ([] if shutil.which("py3compile") else ["py3compile"])
    if missing:
        bench.rows.append(Row(figure, "-", "-", "-", f"pending: {'; '.join(missing)}"))
        return
    deb = debpkg.build(bench.path("deb"))
    cold, warm = (debpkg.extract(deb, bench.path(f"deb-{k}")) / debpkg.LIB for k in "cw")
    # As postinst runs it: into __pycache__ beside the sources, not the children's own cache.
    run(["py3compile", str(warm)], {k: v for k, v in bench.env.items()
                                    if k != "PYTHONPYCACHEPREFIX"})
    if not any(warm.rglob("*.pyc")):
        raise BenchError(f"py3compile {warm} wrote no .pyc")
    with serve(health()) as first, serve(health()) as second:
        config = write_config(bench.path("deb.toml"),
                              [("a", first.url("/health")), ("b", second.url("/health"))])
        args = ["check", "--config", str(config), "--state", str(bench.path("deb-state.json"))]

        def launcher(lib: Path) -> list[str]:
            code = (f"import sys; sys.path.insert(0, {str(lib)!r}); "
                    "from prober.shell.cli import main; main()")
            return ["/usr/bin/python3", "-IB", "-c", code, *args]

        times = compare({"cold": launcher(cold), "warm": launcher(warm)}, bench.env, bench.reps)
    cold_s, warm_s = (statistics.median(times[k]) for k in ("cold", "warm"))
    bench.rows.append(Row(figure, ms(cold_s), f"py3compile'd {ms(warm_s)}", "-",
                          f"info ({cold_s / warm_s:.2f}x)",
                          {"seconds": times["cold"], "baseline_seconds": times["warm"]}))


# --- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("httpx", "httpcore", "anyio", "click"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "timer": "hyperfine" if shutil.which("hyperfine") else "time.perf_counter",
        "rss": TIME + " -v" if os.access(TIME, os.X_OK) else "getrusage(RUSAGE_CHILDREN)",
        "load_average_start": os.getloadavg(),
    }


def render(bench: Bench, info: Mapping[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    lines = [
        table(bench.rows), "",
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"Linux {info['kernel']}, {info['python']} ({packages})",
        f"timing: {info['timer']}, median; peak RSS: {info['rss']}; load average "
        f"{info['load_average_start'][0]:.2f} at start, {info['load_average_end'][0]:.2f} at end",
    ]
    stage = bench.extra.get("stages")
    if stage:
        lines += ["", "healthy check, where the time goes (medians, fresh processes): start "
                      f"{ms(stage['start'])}, import prober.shell.cli+check "
                      f"{ms(stage['imports'])}, "
                      f"the run (config, loop, probes, state, report) {ms(stage['run'])}, "
                      f"exit {ms(stage['exit'])}"]
    imports = bench.extra.get("imports")
    if imports:
        def listed(values: Mapping[str, float]) -> str:
            return ", ".join(f"{k} {v * 1000:.1f}" for k, v in values.items())

        lines += [f"import time (-X importtime, self, median of 3 runs): check "
                  f"{ms(imports['total_seconds'])}, `import httpx, click` "
                  f"{ms(imports['baseline_total_seconds'])}",
                  "  over the baseline, by package (ms): "
                  + listed(imports["packages_over_baseline"]),
                  "  by package (ms): " + listed(imports["packages"]),
                  "  top modules (ms): " + listed(imports["modules"])]
    if bench.notes:
        lines += ["", *(f"note: {note}" for note in bench.notes)]
    return "\n".join(lines)


Figure = Callable[[Bench, argparse.Namespace], None]  # (the bench, the command line)


def _elsewhere(module: str, function: str) -> Figure:
    """A figure measured by a module of its own (tools/<module>.py), imported only when it is
    chosen; ELSEWHERE lists them for the test that each one imports."""
    def measure(bench: Bench, args: argparse.Namespace) -> None:
        import importlib

        getattr(importlib.import_module(f"tools.{module}"), function)(bench)
    ELSEWHERE.append((f"tools.{module}", function))
    return measure


ELSEWHERE: list[tuple[str, str]] = []  # (module, function) of every figure _elsewhere


def _against(bench: Bench, args: argparse.Namespace) -> None:
    if args.against:
        from tools.bench_against import figure_against

        figure_against(bench, args.against)


# Every figure, in the order they are measured: one line each.
FIGURES: dict[str, Figure] = {
    "healthy": lambda bench, args: figure_healthy(bench),
    "textfile": lambda bench, args: figure_textfile(bench),
    "many": lambda bench, args: figure_many(bench),
    "thousand": _elsewhere("bench_thousand", "figure_thousand"),
    "watch": _elsewhere("bench_watch", "figure_watch_cost"),
    "page": _elsewhere("bench_page", "figure_page"),
    "hostile": _elsewhere("bench_hostile", "figure_hostile"),
    "systemd": lambda bench, args: figures_systemd(bench, not args.no_sandbox),
    "pressure": lambda bench, args: figures_pressure(bench, not args.no_sandbox),
    "deb": lambda bench, args: figure_deb(bench),
    "state": _elsewhere("bench_state", "figure_state"),
    "confirm": _elsewhere("bench_confirm", "figure_confirm"),
    "container": _elsewhere("bench_container", "figure_container"),
    "record": _elsewhere("bench_record", "figure_record"),
    "against": _against,  # only with --against REV
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="write the JSON here, not to stdout")
    parser.add_argument("--reps", type=int, default=15,
                        help="runs per command for the medians of figure 1 [15]")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="skip the systemd sandbox (restart row pending, watch without it)")
    parser.add_argument("--only", action="append", choices=list(FIGURES),
                        help="measure only these figures (repeatable) [all]")
    parser.add_argument("--against", metavar="REV",
                        help="also time the healthy check of git revision REV beside this one's")
    args = parser.parse_args(argv)
    chosen = args.only or list(FIGURES)
    started = time.monotonic()
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="prober-bench-", dir="/var/tmp"))
    bench = Bench(workdir, child_env(workdir), max(3, args.reps))
    try:
        for name, figure in FIGURES.items():
            if name in chosen:
                figure(bench, args)
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(table(bench.rows), file=sys.stderr)
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info["load_average_end"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - started, 1)
    print(render(bench, info))
    result = {"machine": info, "rows": [asdict(r) for r in bench.rows],
              **bench.extra, "notes": bench.notes}
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
