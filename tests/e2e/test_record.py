"""The 2018 night replayed in a sealed systemd with a memory controller, and read back from the
outage record: `prober report --since 1h` lists what happened in order, how long each outage
lasted and who held the memory, as the admin had to reconstruct it by hand
(/work/shared/seed/outage-postmortem-2018-08-11.txt)."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.e2e.test_pressure import (  # noqa: F401  (fixtures)
    STARVING_WORKERS,
    box,
    harness,
    stack,
    start_prober,
)
from tests.support.e2e import has_event, refuses, saved_state, wait_for
from tests.support.harness import GROWER, THRASHER, MemoryPressure, write_oom_loop
from tests.support.sandbox import Sandbox, Stack

pytestmark = pytest.mark.e2e

OUTAGE = r"^- {}: (\S+) \((\d\d:\d\d:\d\d)-(\d\d:\d\d:\d\d)\)"
# netdata as the unit_health kind watches it: down only after a few kills, so that its reason
# counts them; its outage ends once they are older than its window, so that the report gives
# that outage's length too.
NETDATA = """\
[[target]]
name = "netdata"
unit_health = "netdata.service"
unit_window = "20s"
failure_threshold = 6
"""
BROKE = re.compile(r"^- netdata: netdata\.service was OOM-killed (\d+) times in \S+ "
                   r"\(MemoryMax=48MiB\); systemd restarts it each time$", re.MULTILINE)


# Each step below has a wait of its own that says what did not happen; together they outlast
# the suite's cap for one test, which would end a slow but healthy replay with no such word.
@pytest.mark.timeout(450)
def test_report_tells_the_2018_night_in_order_with_its_length_and_culprit(
        box: Sandbox, stack: Stack, harness: MemoryPressure) -> None:  # noqa: F811
    """A worker unit's child grows anonymous memory; netdata's stand-in, OOM-killed at its
    MemoryMax= and restarted by systemd in a loop, goes down (prober restarts nothing of it)
    until the loop ends; then caddy starves, stops listening, and the shipped timer restarts
    it. `prober report --since 1h` then lists the events in order (netdata down with its OOM
    count; caddy down, restart asked, restart, recovered), each outage with its length, the
    grower by name as who held the memory, and both units' journals."""
    box.write_unit(f"{stack.caddy_unit}.d/delegate.conf", "[Service]\nDelegate=yes\n")
    box.systemctl("restart", stack.caddy_unit)
    box.wait_port(stack.caddy_port)
    # Restarted after a pause, as the real one was: on v1 an OOM kill is told only from a run
    # that reads the unit between the kill and the restart.
    netdata = write_oom_loop(box, memory_max_mib=48, restart_sec=2)
    installed = start_prober(box, stack, "timer", targets=NETDATA)
    harness.grow(rate_mib=8, max_mib=120, oom_score_adj=0)  # the worker and its `convert`
    wait_for(lambda: harness.grower_mib() >= 64, 60, "the grower holding 64 MiB")
    box.systemctl("start", netdata)
    saved_state(installed.state, has_event("netdata", "down"), 60,
                "netdata down, OOM-killed in a loop")
    # The loop ends (in 2018, when a `convert` was killed at last) before caddy starves, so
    # that netdata's memory is no part of caddy's.
    box.systemctl("stop", netdata)
    harness.thrash(workers=STARVING_WORKERS)
    harness.move(THRASHER, stack.caddy_unit)
    harness.wait_stalling(stack.caddy_unit, some=15, within=90)
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=10, trust_env=False)
    assert refuses(f"{stack.caddy_url}/health")
    saved_state(installed.state, has_event("caddy", "recovered"), 90,
                "caddy restarted and answering again, saved by the timer-driven prober")
    saved_state(installed.state, has_event("netdata", "recovered"), 90,
                "netdata recovered, its OOM kills older than its unit_window")
    done = subprocess.run(
        [sys.executable, "-m", "prober", "report", "--since", "1h", "--config",
         str(installed.config), "--state", str(installed.state)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = done.stdout
    timeline = report.split("## Timeline", 1)[1].split("## What broke", 1)[0]
    events = re.findall(r"\*\*(caddy|netdata)\*\* ([\w-]+):", timeline)
    wanted = [("netdata", "down"), ("caddy", "down"), ("caddy", "restart-asked"),
              ("caddy", "restart"), ("caddy", "recovered")]
    assert [event for event in events if event in wanted] == wanted, report
    assert [e for t, e in events if t == "netdata" and e != "failing"] == \
        ["down", "recovered"], report
    broke = BROKE.search(report.split("## What broke", 1)[1])
    assert broke is not None and int(broke[1]) >= 2, report
    for target in ("caddy", "netdata"):
        outage = re.search(OUTAGE.format(target), report, re.MULTILINE)
        assert outage is not None, report
        assert outage[2] <= outage[3] and outage[1] != "0s", report
    held = report.split("## Who held the memory", 1)[1]
    assert GROWER in held and GROWER in report.split("## Timeline", 1)[0], report
    logs = report.split("## Logs", 1)[1]
    assert "journalctl -u netdata.service --since" in logs, report
    assert f"journalctl -u {stack.caddy_unit} --since" in logs, report
