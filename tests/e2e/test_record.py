"""The 2018 night replayed in a sealed systemd with a memory controller, and read back from the
outage record: `prober report --since 1h` lists what happened in order, how long the outage
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
from tests.support.harness import GROWER, THRASHER, MemoryPressure
from tests.support.sandbox import Sandbox, Stack

pytestmark = pytest.mark.e2e

OUTAGE = re.compile(r"^- caddy: (\S+) \((\d\d:\d\d:\d\d)-(\d\d:\d\d:\d\d)\)", re.MULTILINE)


def test_report_tells_the_2018_night_in_order_with_its_length_and_culprit(
        box: Sandbox, stack: Stack, harness: MemoryPressure) -> None:  # noqa: F811
    """A worker unit's child grows anonymous memory while caddy starves; caddy stops
    listening and the shipped timer restarts it. `prober report --since 1h` then lists caddy's
    events in order (down, restart asked, restart, recovered), the outage with its length, and
    the grower by name as who held the memory."""
    box.write_unit(f"{stack.caddy_unit}.d/delegate.conf", "[Service]\nDelegate=yes\n")
    box.systemctl("restart", stack.caddy_unit)
    box.wait_port(stack.caddy_port)
    installed = start_prober(box, stack, "timer")
    harness.grow(rate_mib=8, max_mib=120, oom_score_adj=0)  # the worker and its `convert`
    wait_for(lambda: harness.grower_mib() >= 64, 60, "the grower holding 64 MiB")
    harness.thrash(workers=STARVING_WORKERS)
    harness.move(THRASHER, stack.caddy_unit)
    harness.wait_stalling(stack.caddy_unit, some=15, within=90)
    # The integrator: a monitoring-like unit OOM-killed in a loop (the unit-health kind's
    # target, as netdata was in 2018) starts here, and its events join the asserts below.
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=10, trust_env=False)
    assert refuses(f"{stack.caddy_url}/health")
    saved_state(installed.state, has_event("caddy", "recovered"), 90,
                "caddy restarted and answering again, saved by the timer-driven prober")
    done = subprocess.run(
        [sys.executable, "-m", "prober", "report", "--since", "1h", "--config",
         str(installed.config), "--state", str(installed.state)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = done.stdout
    timeline = report.split("## Timeline", 1)[1].split("## What broke", 1)[0]
    caddy = re.findall(r"\*\*caddy\*\* ([\w-]+):", timeline)
    wanted = ["down", "restart-asked", "restart", "recovered"]
    assert [event for event in caddy if event in wanted] == wanted, report
    outage = OUTAGE.search(report)
    assert outage is not None, report
    assert outage[2] <= outage[3] and outage[1] != "0s", report
    held = report.split("## Who held the memory", 1)[1]
    assert GROWER in held and GROWER in report.split("## Timeline", 1)[0], report
