"""`make bench`, the watcher's figures: its CPU per healthy cycle beside the floor (and monit's),
and its RSS over 10,000 cycles.

The floor is the least a long-running prober can do with httpx: one persistent asyncio loop and
one `httpx.AsyncClient`, a fresh connection per GET (no keep-alive), a GET every interval. It is
measured twice: as a bare script, and with httpcore's failed `import sniffio` made cheap (a
None in sys.modules, which is what the prober does, and what an installed sniffio amounts to):
without sniffio, httpcore repeats that failed import, and its search of sys.path, several times
a request. The verdict is against the second, the lower floor.

Every process probes a loopback server of its own (tests/support/servers.py, in the bench process)
that
counts the requests, so a cycle is one request the server saw. CPU is the process's own, read
from /proc/PID/task/*/schedstat (nanoseconds on the CPU, every thread) at the start and the end
of each window; all the processes of a comparison run at the same time, through the same
windows, so load from elsewhere hits them alike. monit (Debian's, where installed) runs in the
foreground (-I) with a control file, pid, id and state files of its own in the work directory,
checking the same kind of target with `protocol http`; its daemon cycle cannot be shorter than
1 s, so it is compared at 1 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import stop_process
from tests.support.servers import Server, health

SHORT_INTERVAL = 0.05  # the cycle of the main comparison: many cycles in little time
WINDOWS, WINDOW = 15, 4.0  # that comparison: medians over this many windows of this long
WARMUP_CYCLES = 40
SLOW_INTERVAL, SLOW_WINDOWS, SLOW_WINDOW = 1.0, 3, 20.0  # beside monit (1 s at least)
RSS_INTERVAL, RSS_WARMUP, RSS_CYCLES = 0.001, 1_000, 10_000
CPU_RATIO_TARGET = 1.15
RSS_GROWTH_TARGET_KIB = 1024

# {prelude} is "" for the bare floor, or the line that makes httpcore's failed import cheap.
WATCH_FLOOR = """\
import asyncio, sys
{prelude}
import httpx
url, interval = sys.argv[1], float(sys.argv[2])
async def main():
    # One loop and one client for the process's life; no keep-alive: a fresh connection a GET.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(verify=False, trust_env=False, limits=limits) as client:
        loop = asyncio.get_running_loop()
        while True:
            wake = loop.time() + interval
            (await client.get(url)).raise_for_status()
            await asyncio.sleep(max(0.0, wake - loop.time()))
asyncio.run(main())
"""
NO_SNIFFIO = 'sys.modules.setdefault("sniffio", None)'
MONIT_CONTROL = """\
set daemon {interval}
set pidfile {dir}/monit.pid
set idfile {dir}/monit.id
set statefile {dir}/monit.state
set logfile {dir}/monit.log
check host bench with address 127.0.0.1
    if failed port {port} protocol http request "/health" with timeout 2 seconds then alert
"""


def cpu_seconds(pid: int) -> float:
    """Time process `pid` has spent on a CPU, all its threads, from the scheduler's own count."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Probed:
    """One long-running prober (or floor, or monit) and the server only it probes."""

    name: str
    argv: list[str]
    server: Server
    proc: subprocess.Popen[bytes] | None = None
    warmup: int = WARMUP_CYCLES  # cycles before the first window
    cpu: list[float] = field(default_factory=list)  # CPU seconds per cycle, one per window
    log: Path | None = None

    @property
    def cycles(self) -> int:
        return len(self.server.requests)

    def start(self, env: Mapping[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(self.argv, env=dict(env), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> None:
        from tools.bench import BenchError

        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log else ""
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM, by PID; SIGKILL if it is still there after 5 s."""
        if self.proc is not None:
            stop_process(self.proc, timeout=5)


@contextlib.contextmanager
def running(probed: Sequence[Probed], env: Mapping[str, str], workdir: Path
            ) -> Iterator[None]:
    """Start them all and wait until each has done its warm-up cycles; at the end, stop them
    all (by PID) and close their servers."""
    from tools.bench import BenchError

    try:
        for item in probed:
            item.start(env, workdir / f"{item.name.replace(' ', '-')}.log")
        deadline = time.monotonic() + 60
        while not all(p.cycles >= p.warmup for p in probed):
            for item in probed:
                item.alive()
            if time.monotonic() > deadline:
                raise BenchError("no warm-up within 60 s: " + ", ".join(
                    f"{p.name} {p.cycles} cycles" for p in probed))
            time.sleep(0.1)
        yield
    finally:
        for item in probed:
            item.stop()
        for item in probed:
            item.server.close()


def measure_windows(probed: Sequence[Probed], windows: int, seconds: float) -> None:
    """CPU per cycle of each, over the same `windows` windows of `seconds`."""
    from tools.bench import BenchError

    for _ in range(windows):
        start = [(cpu_seconds(p.pid), p.cycles) for p in probed]
        time.sleep(seconds)
        for item, (cpu, cycles) in zip(probed, start, strict=True):
            item.alive()
            done = item.cycles - cycles
            if done <= 0:
                raise BenchError(f"{item.name}: no cycle in {seconds:g} s")
            item.cpu.append((cpu_seconds(item.pid) - cpu) / done)


def floor_argv(py: str, url: str, interval: float, *, strict: bool) -> list[str]:
    script = WATCH_FLOOR.format(prelude=NO_SNIFFIO if strict else "")
    return [py, "-c", script, url, f"{interval:g}"]


def watch_argv(prober: Sequence[str], config: Path, state: Path, interval: float) -> list[str]:
    return [*prober, "watch", "--config", str(config), "--state", str(state),
            "--interval", f"{interval * 1000:g}ms"]


def monit_argv(workdir: Path, port: int, interval: float) -> list[str] | None:
    monit = shutil.which("monit") or ("/usr/bin/monit" if os.access("/usr/bin/monit", os.X_OK)
                                      else None)
    if monit is None:
        return None
    home = workdir / "monit"
    home.mkdir(exist_ok=True)
    control = home / "monitrc"
    control.write_text(MONIT_CONTROL.format(interval=max(1, round(interval)), dir=home,
                                            port=port))
    control.chmod(0o600)  # monit refuses a control file others can read
    return [monit, "-I", "-c", str(control)]


def usec(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


@dataclass
class Makers:
    """Makes the watchers and floors of a comparison, each with a loopback server of its own."""

    bench: Any

    def watcher(self, name: str, interval: float) -> Probed:
        from tools.bench import PROBER, write_config

        server = Server(health())
        slug = name.replace(" ", "-")
        config = write_config(self.bench.path(f"{slug}.toml"), [("web", server.url("/health"))])
        return Probed(name, watch_argv(PROBER, config, self.bench.path(f"{slug}-state.json"),
                                       interval), server, warmup=warmup(interval))

    def floor(self, name: str, interval: float, *, strict: bool = True) -> Probed:
        from tools.bench import PY

        server = Server(health())
        return Probed(name, floor_argv(PY, server.url("/health"), interval, strict=strict),
                      server, warmup=warmup(interval))


def warmup(interval: float) -> int:
    return WARMUP_CYCLES if interval < SLOW_INTERVAL else 3


def window_ratios(mine: Probed, base: Probed) -> list[float]:
    """The ratio of each window (the same seconds for both), sorted: load from elsewhere moves
    both within a window, and their median keeps the odd window out."""
    return sorted(m / b for m, b in zip(mine.cpu, base.cpu, strict=True))


def figure_watch_cost(bench: Any) -> None:
    """The watcher's rows: CPU per cycle at a short interval and at 1 s, RSS growth.

    `bench` is tools.bench's Bench (typed loosely: `python -m tools.bench` runs that module
    as __main__, and the Bench it passes is of that copy).
    """
    make = Makers(bench)
    short_rows(bench, make)
    slow_row(bench, make)
    rss_row(bench, make)
    bench.notes.append(
        "Watch CPU: each process probes a loopback server of its own; a cycle is one request "
        "that server saw; CPU from /proc/PID/task/*/schedstat over the same windows for all "
        "of them, run at the same time. The floor: one asyncio loop, one httpx.AsyncClient, a "
        "fresh connection per GET, with httpcore's failed `import sniffio` made cheap as the "
        "prober makes it (the bare script repeats it, and its sys.path search, on every "
        "request). monit: Debian's, in the foreground with a control file of its own, "
        "`protocol http` on the same kind of server.")


def short_rows(bench: Any, make: Makers) -> None:
    """CPU per cycle at a short interval: the watcher between its two floors."""
    from tools.bench import Row, verdict

    floor, watch, bare = (make.floor("floor", SHORT_INTERVAL),
                          make.watcher("watch", SHORT_INTERVAL),
                          make.floor("bare floor", SHORT_INTERVAL, strict=False))
    with running([floor, watch, bare], bench.env, bench.workdir):
        measure_windows([floor, watch, bare], WINDOWS, WINDOW)
    ratios = window_ratios(watch, floor)
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    bench.rows.append(Row(
        f"watch: CPU per healthy cycle, 1 target, every {SHORT_INTERVAL * 1000:g} ms",
        usec(statistics.median(watch.cpu)), f"floor {usec(statistics.median(floor.cpu))}",
        f"<= {CPU_RATIO_TARGET:g}x",
        verdict(ratio <= CPU_RATIO_TARGET, f"{ratio:.2f}x, median of {WINDOWS} windows of "
                f"{WINDOW:g} s; quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}x"),
        {"watch_cpu_per_cycle": watch.cpu, "floor_cpu_per_cycle": floor.cpu,
         "bare_floor_cpu_per_cycle": bare.cpu, "ratio": ratio, "ratios": ratios}))
    bench.rows.append(Row(
        "  floor as a bare script (sniffio's failed import repeated)",
        usec(statistics.median(bare.cpu)), f"floor {usec(statistics.median(floor.cpu))}", "-",
        f"info (the watcher is {statistics.median(window_ratios(watch, bare)):.2f}x this)",
        {"cpu_per_cycle": bare.cpu}))


def slow_row(bench: Any, make: Makers) -> None:
    """CPU per cycle at 1 s, beside monit's."""
    from tools.bench import Row

    floor, watch = make.floor("floor 1 s", SLOW_INTERVAL), make.watcher("watch 1 s",
                                                                        SLOW_INTERVAL)
    probed = [floor, watch]
    server = Server(health())
    argv = monit_argv(bench.workdir, server.port, SLOW_INTERVAL)
    monit = Probed("monit 1 s", argv, server, warmup=3) if argv is not None else None
    if monit is not None:
        probed.append(monit)
    else:
        server.close()
    with running(probed, bench.env, bench.workdir):
        measure_windows(probed, SLOW_WINDOWS, SLOW_WINDOW)
    ratio = statistics.median(window_ratios(watch, floor))
    monit_text = f"monit {usec(statistics.median(monit.cpu))}" if monit is not None else \
        "monit: not installed"
    bench.rows.append(Row(
        "watch: CPU per healthy cycle, every 1 s", usec(statistics.median(watch.cpu)),
        f"floor {usec(statistics.median(floor.cpu))}; {monit_text}", "-",
        f"info ({ratio:.2f}x the floor; {SLOW_WINDOWS} windows of {SLOW_WINDOW:g} s)",
        {"watch": watch.cpu, "floor": floor.cpu, "monit": monit.cpu if monit else None}))


def rss_row(bench: Any, make: Makers) -> None:
    """The watcher's RSS after RSS_WARMUP cycles and RSS_CYCLES more, beside the floor's."""
    from tools.bench import BenchError, Row, mib, verdict

    fast = [make.watcher("watch rss", RSS_INTERVAL), make.floor("floor rss", RSS_INTERVAL)]
    for item in fast:
        item.warmup = 1
    marks: dict[str, list[int]] = {item.name: [] for item in fast}
    with running(fast, bench.env, bench.workdir):
        deadline = time.monotonic() + 600
        while any(len(found) < 2 for found in marks.values()):
            for item in fast:
                item.alive()
                found = marks[item.name]
                if item.cycles >= RSS_WARMUP + len(found) * RSS_CYCLES and len(found) < 2:
                    found.append(rss_kib(item.pid))
            if time.monotonic() > deadline:
                raise BenchError(f"{RSS_CYCLES:,} cycles took more than 600 s")
            time.sleep(0.02)
    (w0, w1), (f0, f1) = marks["watch rss"], marks["floor rss"]
    bench.rows.append(Row(
        f"watch: RSS growth over {RSS_CYCLES:,} cycles (--interval "
        f"{RSS_INTERVAL * 1000:g}ms)", f"{w1 - w0:+d} KiB",
        f"floor {f1 - f0:+d} KiB", f"<= {RSS_GROWTH_TARGET_KIB} KiB",
        verdict(w1 - w0 <= RSS_GROWTH_TARGET_KIB,
                f"{mib(w0)} after {RSS_WARMUP:,} cycles, {mib(w1)} after"),
        {"watch_rss_kib": [w0, w1], "floor_rss_kib": [f0, f1]}))
