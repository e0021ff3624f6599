"""`make bench`, a thousand targets: one `prober check` of 1,000 loopback targets, 100 of them
hanging, timeout 2 s, beside its floor and curl.

The floor comes first: a bare asyncio + httpx script that GETs the same 1,000 URLs at once with
one `httpx.AsyncClient` (no keep-alive, no connection cap), each GET bounded by the same
timeout, and exits as the prober does (os._exit after flushing). As for the watcher, it is
measured with httpcore's failed `import sniffio` made cheap (what the prober does), and as a
bare script; a target the floor itself cannot meet becomes the floor + 10 %.

curl: `curl --parallel --parallel-max 300` on the same URLs (a config file of url/output
pairs), each transfer bounded by the same timeout. curl runs at most 300 transfers at once, so
the 100 hanging URLs hold a third of its slots for 2 s: it is a baseline for the wall time of
the whole, not for a run with no cap.

The server is tests/support/mass_server.py: one asyncio loop in a child process, backlog 4096,
so that
neither its accept loop nor a full backlog is what is measured. Every run is timed from spawn
to exit; peak RSS and CPU (user + system) come from /usr/bin/time -v.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.mass_server import mass_server

TARGETS, HANGING, TIMEOUT = 1000, 100, 2.0
ANSWER_PORTS, HANG_PORTS = 8, 2
RUNS = 5
WALL_TARGET = TIMEOUT + 0.5
RSS_TARGET_KIB = 48 * 1024
CPU_TARGET = 1.0
CURL_PARALLEL = 300

FLOOR_MANY = """\
import asyncio, json, os, sys
{prelude}
import httpx
timeout, urls = float(sys.argv[1]), sys.argv[2:]
async def get(client, url):
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("GET", url) as response:
                await response.aread()
                return response.status_code == 200
    except Exception:
        return False
async def main():
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(verify=False, trust_env=False, limits=limits) as client:
        return await asyncio.gather(*(get(client, url) for url in urls))
ok = asyncio.run(main())
print(json.dumps({{"ok": sum(ok), "failed": len(ok) - sum(ok)}}), flush=True)
os._exit(0)
"""
NO_SNIFFIO = 'sys.modules.setdefault("sniffio", None)'


@dataclass
class Run:
    seconds: float
    rss_kib: int
    cpu: float  # user + system seconds
    out: str


def timed_run(argv: list[str], env: dict[str, str], workdir: Path,
              expect: tuple[int, ...] = (0,)) -> Run:
    """Wall time from spawn to exit, peak RSS and CPU seconds of one run."""
    from tools.bench import TIME, BenchError

    if not os.access(TIME, os.X_OK):  # the Makefile's deps install it (Debian's `time`)
        raise BenchError(f"{TIME} is missing: it measures the peak RSS and CPU of a run")
    report = workdir / "time-v.txt"
    command = [TIME, "-v", "-o", str(report), *argv]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=120)
    seconds = time.perf_counter() - started
    if child.returncode not in expect:
        raise BenchError(f"`{argv[0]} ...` exited with {child.returncode}:\n{err[-1500:]}")
    text = report.read_text()
    found = {key: re.search(pattern, text) for key, pattern in (
        ("rss", r"Maximum resident set size \(kbytes\): (\d+)"),
        ("user", r"User time \(seconds\): ([\d.]+)"),
        ("system", r"System time \(seconds\): ([\d.]+)"))}
    values = {k: m.group(1) for k, m in found.items() if m is not None}
    if len(values) != len(found):
        raise BenchError(f"{TIME} -v printed no peak RSS or CPU times")
    return Run(seconds, int(values["rss"]), float(values["user"]) + float(values["system"]), out)


def target_for(limit: float, floor: float) -> float:
    """The issue's figure, or the floor + 10 % when the floor alone exceeds it."""
    return limit if floor <= limit else floor * 1.1


def thousand_urls(answering: list[int], hanging: list[int]) -> list[str]:
    """TARGETS URLs; every (TARGETS // HANGING)th on a port that hangs."""
    every = TARGETS // HANGING
    return [f"http://127.0.0.1:{hanging[i % len(hanging)]}/health?n={i}" if i % every == every - 1
            else f"http://127.0.0.1:{answering[i % len(answering)]}/health?n={i}"
            for i in range(TARGETS)]


def figure_thousand(bench: Any) -> None:
    """The rows of the thousand-target run (issue 14, part 2)."""
    with mass_server(ANSWER_PORTS, HANG_PORTS) as (answering, hanging):
        runs = measure_thousand(bench, thousand_urls(answering, hanging))
    thousand_rows(bench, runs)


def measure_thousand(bench: Any, urls: list[str]) -> dict[str, list[Run]]:
    """RUNS runs of the prober and of the floor, interleaved; 2 of the bare floor; 3 of curl."""
    from tools.bench import PROBER, PY, BenchError, write_config

    env = dict(bench.env)
    workdir: Path = bench.workdir
    config = write_config(bench.path("thousand.toml"),
                          [(f"t{i:04d}", url) for i, url in enumerate(urls)],
                          defaults=f'timeout = "{TIMEOUT:g}s"')
    state = bench.path("thousand-state.json")
    check = [*PROBER, "check", "--json", "--config", str(config), "--state", str(state)]
    floors = {name: [PY, "-c", FLOOR_MANY.format(prelude=prelude), f"{TIMEOUT:g}", *urls]
              for name, prelude in (("floor", NO_SNIFFIO), ("bare floor", ""))}

    def prober_run() -> Run:
        state.unlink(missing_ok=True)  # a first run each time: 100 failures, none at threshold
        done = timed_run(check, env, workdir, expect=(1,))
        report = json.loads(done.out)
        failures = [t.get("failure") for t in report["targets"] if not t["ok"]]
        if len(report["targets"]) != TARGETS or failures != ["timeout"] * HANGING:
            raise BenchError(f"expected {HANGING} timeouts of {TARGETS}, got {len(failures)} "
                             f"failures ({sorted(set(map(str, failures)))}) of "
                             f"{len(report['targets'])}")
        return done

    def floor_run(name: str) -> Run:
        done = timed_run(floors[name], env, workdir)
        counts = json.loads(done.out.strip().splitlines()[-1])
        if counts != {"ok": TARGETS - HANGING, "failed": HANGING}:
            raise BenchError(f"the {name} got {counts}")
        return done

    prober_run()  # warm-up: the page cache, the pycache
    floor_run("floor")
    runs: dict[str, list[Run]] = {"prober": [], "floor": [], "bare floor": [], "curl": []}
    for _ in range(RUNS):  # interleaved, so that load from elsewhere hits them alike
        runs["floor"].append(floor_run("floor"))
        runs["prober"].append(prober_run())
    runs["bare floor"] = [floor_run("bare floor") for _ in range(2)]
    curl = shutil.which("curl")
    if curl is not None:
        curl_config = workdir / "curl.conf"
        curl_config.write_text("".join(f'url = "{url}"\noutput = "/dev/null"\n' for url in urls))
        argv = [curl, "--parallel", "--parallel-max", str(CURL_PARALLEL), "--silent",
                "--max-time", f"{TIMEOUT:g}", "--config", str(curl_config)]
        runs["curl"] = [timed_run(argv, env, workdir, expect=tuple(range(256)))
                        for _ in range(3)]
    return runs


def described(runs: list[Run]) -> str:
    return (f"{statistics.median(r.seconds for r in runs):.2f} s, "
            f"{max(r.rss_kib for r in runs) / 1024:.1f} MiB, "
            f"{statistics.median(r.cpu for r in runs):.2f} CPU-s")


def thousand_rows(bench: Any, runs: dict[str, list[Run]]) -> None:
    from tools.bench import Row, mib, secs, verdict

    mine, floor, curl = runs["prober"], runs["floor"], runs["curl"]
    wall, floor_wall = (statistics.median(r.seconds for r in rs) for rs in (mine, floor))
    rss, floor_rss = (max(r.rss_kib for r in rs) for rs in (mine, floor))
    cpu, floor_cpu = (statistics.median(r.cpu for r in rs) for rs in (mine, floor))
    curl_text = f"; curl -Z {secs(statistics.median(r.seconds for r in curl))}" if curl \
        else "; curl: pending (not installed)"
    wall_target, rss_target, cpu_target = (target_for(WALL_TARGET, floor_wall),
                                           target_for(RSS_TARGET_KIB, floor_rss),
                                           target_for(CPU_TARGET, floor_cpu))

    def goal(limit: float, target: float, shown: str) -> str:
        return shown if target == limit else f"{shown} (floor + 10%; the issue's: {limit:g})"

    bench.rows.append(Row(
        f"{TARGETS:,} targets ({HANGING} hang), timeout {TIMEOUT:g}s: wall", secs(wall),
        f"floor {secs(floor_wall)}{curl_text}",
        goal(WALL_TARGET, wall_target, f"<= {secs(wall_target)}"),
        verdict(wall <= wall_target, f"median of {RUNS}, worst "
                f"{secs(max(r.seconds for r in mine))}"),
        {"seconds": [r.seconds for r in mine], "floor_seconds": [r.seconds for r in floor],
         "curl_seconds": [r.seconds for r in curl]}))
    bench.rows.append(Row(
        f"{TARGETS:,} targets: peak RSS", mib(rss), f"floor {mib(floor_rss)}",
        goal(RSS_TARGET_KIB / 1024, rss_target / 1024, f"<= {mib(int(rss_target))}"),
        verdict(rss <= rss_target, f"max of {RUNS}"),
        {"rss_kib": [r.rss_kib for r in mine], "floor_rss_kib": [r.rss_kib for r in floor]}))
    bench.rows.append(Row(
        f"{TARGETS:,} targets: CPU (user + system)", f"{cpu:.2f} s", f"floor {floor_cpu:.2f} s",
        goal(CPU_TARGET, cpu_target, f"<= {cpu_target:.2f} s"),
        verdict(cpu <= cpu_target, f"median of {RUNS}"),
        {"cpu_seconds": [r.cpu for r in mine], "floor_cpu_seconds": [r.cpu for r in floor]}))
    bench.rows.append(Row(
        "  floor as a bare script (sniffio's failed import repeated)",
        described(runs["bare floor"]), "-", "-", "info",
        {"runs": [vars(r) | {"out": ""} for r in runs["bare floor"]]}))
    if curl:
        bench.rows.append(Row(
            f"  curl --parallel --parallel-max {CURL_PARALLEL}, the same URLs", described(curl),
            "-", "-", f"info (at most {CURL_PARALLEL} at once)",
            {"runs": [vars(r) | {"out": ""} for r in curl]}))
