"""`make bench`, the page's figures: a scraper's GET /metrics against a real `prober watch
--listen` while 300 slowloris connections and 2,000 idle ones are held open, beside the same
scraper with no hostile client (the baseline, the same run, the same watcher just before).

The watcher probes one loopback server of its own (tests/support/servers.py, in the bench process)
that
stamps each request as it arrives: the probe cadence is the time between two stamps. The hostile
clients are tests/support/flood.py in a process of their own (each connection opened again after a
pause once the watcher drops it). The scraper, in the bench process, asks once every
SCRAPE_PAUSE, a fresh connection each time, as Prometheus does; a scrape counts as answered if
the whole 200 came back within ANSWER_WITHIN. RSS is the watcher's VmRSS, read after every
scrape; the figure is the largest of the phase.
"""

from __future__ import annotations

import itertools
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.processes import stop_process
from tests.support.servers import Exchange, Server, health
from tools.bench_watch import rss_kib

SLOWLORIS, IDLE = 300, 2_000
INTERVAL = 0.5  # the watcher's, seconds
SCRAPES, SCRAPE_PAUSE = 300, 0.05
ANSWER_WITHIN, SCRAPE_TIMEOUT = 1.0, 5.0
SHARE_TARGET = 99.0  # percent of scrapes answered within ANSWER_WITHIN
WARMUP_RUNS = 3
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def stamping(stamps: list[float]) -> Callable[[Exchange], None]:
    """The health handler, noting when each request arrives."""
    healthy = health()

    def handler(exchange: Exchange) -> None:
        stamps.append(time.monotonic())
        healthy(exchange)

    return handler


def scrape(port: int) -> float | None:
    """Seconds until a whole 200 to GET /metrics came back, or None if none did."""
    started = time.monotonic()
    chunks = []
    try:
        with socket.create_connection(("127.0.0.1", port), SCRAPE_TIMEOUT) as sock:
            sock.sendall(SCRAPE)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    return time.monotonic() - started if b"".join(chunks).startswith(b"HTTP/1.1 200 ") \
        else None


@dataclass
class Phase:
    """What the scraper saw, and the watcher did, during one phase."""

    latencies: list[float | None] = field(default_factory=list)
    cadence: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    @property
    def share(self) -> float:
        answered = [s for s in self.latencies if s is not None and s <= ANSWER_WITHIN]
        return 100.0 * len(answered) / len(self.latencies)

    def latency(self) -> str:
        done = sorted(s for s in self.latencies if s is not None)
        if not done:
            return "none answered"
        return f"median {done[len(done) // 2] * 1000:.1f} ms, worst {done[-1] * 1000:.0f} ms"

    def runs(self) -> str:
        return (f"{statistics.median(self.cadence):.2f} s (worst {max(self.cadence):.2f} s)"
                if self.cadence else "no run")


def measure(port: int, pid: int, stamps: list[float], alive: Callable[[], None]) -> Phase:
    phase = Phase()
    first = len(stamps)
    for _ in range(SCRAPES):
        phase.latencies.append(scrape(port))
        phase.rss.append(rss_kib(pid))
        alive()
        time.sleep(SCRAPE_PAUSE)
    seen = stamps[first:]
    phase.cadence = [b - a for a, b in itertools.pairwise(seen)]
    return phase


def figure_page(bench: Any) -> None:
    """The page's rows: the share of scrapes answered, the probe cadence and the watcher's RSS,
    each with the flood beside without it.

    `bench` is tools.bench's Bench (typed loosely, as in tools/bench_watch.py).
    """
    from tools.bench import PROBER, PY, REPO, BenchError, write_config

    stamps: list[float] = []
    server = Server(stamping(stamps))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    config = write_config(bench.path("page.toml"), [("web", server.url("/health"))])
    log = bench.path("page-watch.log")
    with log.open("wb") as err:
        watcher = subprocess.Popen(
            [*PROBER, "watch", "--config", str(config), "--state", str(bench.path("page.json")),
             "--interval", f"{INTERVAL * 1000:g}ms", "--listen", f"127.0.0.1:{port}"],
            env=bench.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    hostile: subprocess.Popen[bytes] | None = None

    def alive() -> None:
        if watcher.poll() is not None:
            raise BenchError(f"the watcher exited with {watcher.returncode}:\n"
                             f"{log.read_text(errors='replace')[-1500:]}")

    try:
        deadline = time.monotonic() + 60
        while len(stamps) < WARMUP_RUNS or scrape(port) is None:
            alive()
            if time.monotonic() > deadline:
                raise BenchError("the watcher's page did not answer within 60 s")
            time.sleep(0.1)
        quiet = measure(port, watcher.pid, stamps, alive)
        hostile = subprocess.Popen(
            [PY, "-m", "tests.support.flood", str(port), "--slowloris", str(SLOWLORIS),
             "--idle", str(IDLE)], env=bench.env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE)
        assert hostile.stdout is not None
        if hostile.stdout.readline() != b"open\n":
            raise BenchError(f"tests.support.flood did not open its connections ({hostile.wait()})")
        flooded = measure(port, watcher.pid, stamps, alive)
    finally:
        if hostile is not None:
            stop_process(hostile)
        stop_process(watcher, timeout=5)
        server.close()
    rows(bench, quiet, flooded)


def rows(bench: Any, quiet: Phase, flooded: Phase) -> None:
    from tools.bench import Row, mib, verdict

    under = f"{SLOWLORIS} slowloris + {IDLE:,} idle open"
    bench.rows.append(Row(
        f"page: GET /metrics answered within {ANSWER_WITHIN:g} s, {under}",
        f"{flooded.share:.1f} %", f"no flood {quiet.share:.1f} %", f">= {SHARE_TARGET:g} %",
        verdict(flooded.share >= SHARE_TARGET,
                f"{SCRAPES} scrapes in a row: {flooded.latency()}; no flood: {quiet.latency()}"),
        {"latencies": flooded.latencies, "baseline_latencies": quiet.latencies}))
    bench.rows.append(Row(
        "page: probe cadence (between two runs), that flood open", flooded.runs(),
        f"no flood {quiet.runs()}", "-",
        f"info (--interval {INTERVAL * 1000:g}ms; {len(flooded.cadence)} and "
        f"{len(quiet.cadence)} runs)",
        {"cadence": flooded.cadence, "baseline_cadence": quiet.cadence}))
    grown = (max(flooded.rss) - max(quiet.rss)) / 1024
    bench.rows.append(Row(
        "page: watcher RSS, that flood open", mib(max(flooded.rss)),
        f"no flood {mib(max(quiet.rss))}", "-",
        f"info ({grown:+.1f} MiB; the largest of {SCRAPES} readings each)",
        {"rss_kib": flooded.rss, "baseline_rss_kib": quiet.rss}))
    bench.notes.append(
        "Page: a real `prober watch --listen` probing one loopback server that stamps each "
        "probe (the cadence); tests/support/flood.py in a process of its own holds the "
        "slowloris and "
        "idle connections open, opening each again after a pause once dropped; the scraper "
        "asks for /metrics on a fresh connection every "
        f"{SCRAPE_PAUSE * 1000:g} ms, first with no flood, then with it.")
