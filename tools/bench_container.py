"""`make bench`, the container figure: a restart through the docker actuator (the Docker Engine
API over the engine's socket, waited for and verified) against `podman restart` of the same
container, on the real podman engine of tests/support/podman.py.

One busybox httpd container on loopback; the two ways alternate, so that load from elsewhere
hits them alike, each with a stop timeout of 1 s (busybox httpd, its PID 1, ignores SIGTERM:
each stop waits that second, then SIGKILL; the rest is the two ways' own cost); a figure is the
median. The actuator's time includes its inspect before and after (it verifies a
new StartedAt), `podman restart`'s a fresh podman process, as an admin types it.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from typing import Any

REPS = 5
STOP_TIMEOUT = 1


def figure_container(bench: Any) -> None:
    """The row: the actuator's restart, `podman restart` the baseline.

    `bench` is tools.bench's Bench (typed loosely, as in tools/bench_watch.py).
    """
    from tools.bench import Row, verdict

    name = "container restart over the API (docker actuator, verified)"
    missing = _missing()
    if missing:
        bench.rows.append(Row(name, "-", "-", "<= podman restart", f"pending: {missing}"))
        return
    found = _measure()
    api, cli = statistics.median(found["api"]), statistics.median(found["cli"])
    bench.rows.append(Row(
        name, f"{api * 1000:.0f} ms", f"podman restart {cli * 1000:.0f} ms",
        "<= podman restart",
        verdict(api <= cli, f"median of {REPS}; {cli / api:.1f}x podman restart's time"),
        {"api_seconds": found["api"], "podman_restart_seconds": found["cli"]}))
    bench.notes.append(
        "Container restart: podman 'system service' in a temporary root (runc, cgroupfs), one "
        "busybox httpd container on loopback, stop timeout 1 s; the actuator's restart "
        "(POST /containers/{id}/restart, then inspect until running with a new StartedAt) and "
        "`podman restart -t 1` alternate.")


def _missing() -> str:
    import os

    for program in ("/usr/bin/podman", "/usr/sbin/runc", "/bin/busybox"):
        if not os.access(program, os.X_OK):
            return f"no {program} (make deps installs it)"
    return ""


def _measure() -> dict[str, list[float]]:
    from prober.actuators.container import ContainerActuator
    from prober.core.config import parse_config
    from tests.support.podman import podman_engine
    from tests.support.sandbox import free_ports

    (port,) = free_ports(1)
    found: dict[str, list[float]] = {"api": [], "cli": []}
    with podman_engine() as engine:
        engine.httpd("bench-web", port)
        config = parse_config({
            "docker_host": engine.docker_host,
            "defaults": {"stop_timeout": f"{STOP_TIMEOUT}s"},
            "target": [{"name": "web", "url": f"http://127.0.0.1:{port}/",
                        "container": "bench-web"}],
        })
        (target,) = config.targets
        for _ in range(REPS):
            found["api"].append(asyncio.run(_api_restart(ContainerActuator(), target)))
            started = time.perf_counter()
            subprocess.run(["podman", *engine.global_flags(), "restart", "-t",
                            str(STOP_TIMEOUT), "bench-web"], check=True, capture_output=True,
                           timeout=120)
            found["cli"].append(time.perf_counter() - started)
    return found


async def _api_restart(actuator: Any, target: Any) -> float:
    from tools.bench import BenchError

    try:
        await actuator.facts(target)  # the engine checked once, as a run's facts come first
        started = time.perf_counter()
        restarted = await actuator.restart(target)
        elapsed = time.perf_counter() - started
    finally:
        await actuator.close()
    if not restarted.ok:
        raise BenchError(f"the actuator's restart failed: {restarted.detail}")
    return elapsed
