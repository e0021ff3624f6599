"""Load: one `prober check` of 200 targets, half of them hanging, ends on time in bounded memory.

Each test runs the real command as a child process against real loopback servers, times it from
spawn to exit, and takes the child's peak RSS from its VmHWM in /proc, read every few ms. Not
from ru_maxrss (wait4 or RUSAGE_CHILDREN): Linux carries the forking process's high-water mark
across exec into it, so under pytest it reports pytest's own size. The figures are printed
(`pytest -s`) and attached to the report with `record_property`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import GIB, hang, health, huge, serve, trickle

TIMEOUT = 2.0  # every target's timeout; without retries, also the deadline of a whole run
SLACK = 2.5  # what a process may add to it: interpreter start, config, state file, report
RUN_SLACK = 0.75  # what the run itself (as it reports its duration) may add to the timeout
MIB = 1 << 20
RSS_BOUND = 150 * MIB  # generous (a run of 200 targets peaks near 40 MiB): catches a leak
HALF = 100

Record = Callable[[str, object], None]


@dataclass(frozen=True)
class Finished:
    """How one `prober check --json` child process ended."""

    code: int
    out: str
    err: str
    elapsed: float  # seconds from spawn to exit
    peak_rss: int  # bytes: the child's VmHWM, last read before it exited

    def json(self) -> Any:
        return json.loads(self.out)


def config_text(targets: Sequence[tuple[str, str, str]]) -> str:
    """A config of (name, url, extra TOML lines) targets, all with the test's timeout."""
    lines = ["[defaults]", f'timeout = "{TIMEOUT:g}s"', ""]
    for name, url, extra in targets:
        lines += ["[[target]]", f'name = "{name}"', f'url = "{url}"', extra, ""]
    return "\n".join(lines)


def run_check(tmp: Path, config: str, limit: float = 60.0) -> Finished:
    """`python -m prober check --json` on `config`, with a state file of its own, watched."""
    (tmp / "prober.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBER_")}
    env.update(PROBER_CONFIG=str(tmp / "prober.toml"), PROBER_STATE=str(tmp / "state.json"),
               DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp}/no-bus")  # no bus: nothing restarts
    with open(tmp / "stdout", "w+") as out, open(tmp / "stderr", "w+") as err:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "prober", "check", "--json"],
                                 stdout=out, stderr=err, env=env)
        peak = 0
        while child.poll() is None:
            peak = max(peak, vm_hwm(child.pid))
            if time.monotonic() - started > limit:
                child.kill()
                child.wait()
                pytest.fail(f"prober check still running after {limit:g}s")
            time.sleep(0.002)
        elapsed = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Finished(child.returncode, out.read(), err.read(), elapsed, peak)


def vm_hwm(pid: int) -> int:
    """The peak RSS of process `pid` so far, in bytes; 0 once it has exited (or not yet exec'd)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # in kB
    return 0


def show(what: str, done: Finished, record: Record) -> None:
    """Print the run's time and peak memory, and attach them to the test's report."""
    duration = json.loads(done.out).get("duration_ms") if done.out.startswith("{") else None
    print(f"\n{what}: exit {done.code} after {done.elapsed:.2f}s (run {duration} ms), "
          f"peak RSS {done.peak_rss / MIB:.1f} MiB")
    record("elapsed_s", round(done.elapsed, 3))
    record("run_duration_ms", duration)
    record("peak_rss_mib", round(done.peak_rss / MIB, 1))


def assert_within_bounds(done: Finished) -> None:
    assert done.elapsed < TIMEOUT + SLACK, f"the run took {done.elapsed:.2f}s\n{done.err}"
    assert done.json()["duration_ms"] < (TIMEOUT + RUN_SLACK) * 1000
    assert done.peak_rss < RSS_BOUND, f"peak RSS {done.peak_rss / MIB:.1f} MiB"


def test_200_targets_half_hanging_end_within_the_deadline(
    tmp_path: Path, record_property: Record
) -> None:
    """200 targets, 100 hanging: one run ends within timeout + 1.5s, 100 ok, 100 timeouts."""
    with serve(health()) as web, serve(hang()) as stuck:
        targets = [(f"ok-{i}", web.url(f"/health?n={i}"), "") for i in range(HALF)]
        targets += [(f"hang-{i}", stuck.url(f"/hang/{i}"), "") for i in range(HALF)]
        done = run_check(tmp_path, config_text(targets))
        asked = [r.path for r in web.requests], [r.path for r in stuck.requests]
    show("200 targets, 100 hanging", done, record_property)
    assert_within_bounds(done)
    results = {t["name"]: t for t in done.json()["targets"]}
    assert sorted(results) == sorted(name for name, _, _ in targets)
    assert all(results[f"ok-{i}"]["ok"] for i in range(HALF))
    assert {results[f"hang-{i}"]["failure"] for i in range(HALF)} == {"timeout"}
    assert done.code == 1  # failing, but below failure_threshold: warning
    for paths in asked:  # every target was really asked, and once
        assert len(paths) == len(set(paths)) == HALF


def test_trickling_and_huge_bodies_do_not_stretch_the_run(
    tmp_path: Path, record_property: Record
) -> None:
    """A 1-byte-per-0.3s trickle and a 1 GiB body in one run keep its deadline and memory bound."""
    with serve(health()) as web, serve(trickle(0.3)) as slow_head, \
            serve(trickle(0.3, headers_first=True)) as slow_body, serve(huge(GIB)) as big:
        done = run_check(tmp_path, config_text([
            ("web", web.url("/health"), ""),
            ("trickle-headers", slow_head.url("/"), ""),
            ("trickle-body", slow_body.url("/"), ""),
            ("huge", big.url("/"), ""),  # no body expectation: reading stops at max_body
            ("huge-expect", big.url("/expect"), 'expect_body = "OK"'),
        ]))
    show("trickle and 1 GiB body", done, record_property)
    assert_within_bounds(done)
    found = {t["name"]: (t["ok"], t["failure"]) for t in done.json()["targets"]}
    assert found == {
        "web": (True, None),
        "trickle-headers": (False, "timeout"),
        "trickle-body": (False, "timeout"),
        "huge": (True, None),
        "huge-expect": (False, "too-large"),
    }


def test_more_targets_than_the_open_files_limit_all_get_their_socket(tmp_path: Path) -> None:
    """Under a soft limit of 256 open files (systemd's default is 1024), a run of 400 targets
    raises its own limit: every target is probed and passes, none fails for want of a socket."""
    import resource

    from tests.support.mass_server import mass_server

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    with mass_server(answering=8, hanging=0) as (ports, _):
        targets = [(f"t{i}", f"http://127.0.0.1:{ports[i % 8]}/health?n={i}", "")
                   for i in range(400)]
        (tmp_path / "prober.toml").write_text(config_text(targets))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBER_")}
        env.update(DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus")
        done = subprocess.run(
            [sys.executable, "-m", "prober", "check", "--json", "--config",
             str(tmp_path / "prober.toml"), "--state", str(tmp_path / "state.json")],
            env=env, capture_output=True, text=True, timeout=60, preexec_fn=low_limit,
            check=False)
    results = json.loads(done.stdout)["targets"]
    failed = [(t["name"], t["reason"]) for t in results if not t["ok"]]
    assert (len(results), failed, done.returncode) == (400, [], 0), done.stderr[-2000:]
