"""The unit_health kind for real, in a sealed systemd with a memory controller: a unit the
kernel OOM-kills in a loop, one that aborts in a loop, one left failed. `prober check` runs
inside, over the sandbox's own system bus, again and again as the timer would; systemd's
Restart= does the restarting, prober none."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy import install
from tests.support.e2e import booted_sandbox
from tests.support.harness import HOGS, NO_START_LIMIT, oom_kills, write_oom_loop
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.e2e

LOOP = "Restart=always\nRestartSec=1\n"


@pytest.fixture
def box(sandbox_workdir: Path) -> Iterator[Sandbox]:
    with booted_sandbox(sandbox_workdir, memory=True) as sandbox:
        yield sandbox


@dataclass
class Prober:
    """`python -m prober check` run inside the sandbox, its config and state in the workdir."""

    box: Sandbox
    notes: Path
    reasons: list[dict[str, Any]] = field(default_factory=list)  # every run's entries

    @property
    def config(self) -> Path:
        return self.box.workdir / "prober.toml"

    @property
    def state(self) -> Path:
        return self.box.workdir / "state.json"

    def configure(self, targets: str) -> None:
        keep = (f'import sys, json; open("{self.notes}", "a")'
                '.write(json.dumps(json.load(sys.stdin)) + "\\n")')
        self.config.write_text(
            '[defaults]\nfailure_threshold = 2\nstartup_grace = "0s"\n\n'
            f"[notify]\ncommand = [\"{sys.executable}\", \"-c\", '{keep}']\n\n{targets}")

    def check(self) -> dict[str, Any]:
        argv = [sys.executable, "-m", "prober", "check", "--config", str(self.config),
                "--state", str(self.state), "--json"]
        done = self.box.run(argv, timeout=60)
        assert done.returncode in (0, 1, 2), done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def until(self, name: str, holds: Callable[[dict[str, Any]], bool], runs: int,
              pause: float = 1.0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check (a run, then `pause`) until target `name`'s entry `holds`; the report and
        that entry."""
        seen = []
        for _ in range(runs):
            report = self.check()
            entry = next(t for t in report["targets"] if t["name"] == name)
            self.reasons.append(entry)
            if holds(entry):
                return report, entry
            seen.append(entry["reason"])
            time.sleep(pause)
        raise AssertionError(f"{name} never got there in {runs} runs: {seen}")

    def notes_for(self, name: str) -> list[dict[str, Any]]:
        """The notifications about target `name`, in order."""
        if not self.notes.exists():
            return []
        items = [json.loads(line) for line in self.notes.read_text().splitlines()]
        return [item for item in items if item.get("target") == name]

    def downs(self, name: str) -> list[dict[str, Any]]:
        return [item for item in self.notes_for(name) if item["event"] == "down"]


@pytest.fixture
def prober(box: Sandbox) -> Prober:
    return Prober(box, box.workdir / "notes.jsonl")


def restarts_by_prober(report: dict[str, Any]) -> list[str]:
    return [t["name"] for t in report["targets"] if "restart" in t["action"]]


def test_a_unit_oom_killed_in_a_loop_is_reported_with_the_count_and_the_culprit(
        prober: Prober) -> None:
    """netdata's stand-in outgrows its MemoryMax=, the kernel kills it, systemd restarts it,
    again and again: the target is down as OOM-killed, with how many times and its limit, and
    the run names the largest memory users though PSI reads calm. prober restarts nothing."""
    box = prober.box
    write_oom_loop(box, memory_max_mib=48)
    prober.configure('[[target]]\nname = "netdata"\nunit_health = "netdata.service"\n')
    box.pin_psi(0.0)  # calm: the OOM kills alone make the run name the memory users
    box.systemctl("start", "netdata.service")
    report, entry = prober.until("netdata", lambda t: t["health"] == "down" and
                                 oom_kills(t["reason"]) >= 3, runs=40)
    assert entry["failure"] == "oom", entry
    assert entry["reason"].endswith(" (MemoryMax=48MiB); systemd restarts it each time"), entry
    assert report["top_memory"], report
    assert restarts_by_prober(report) == []
    downs = prober.downs("netdata")
    assert len(downs) == 1, downs  # once for the loop, not once per kill
    assert "OOM-killed" in downs[0]["reason"], downs


def test_a_child_oom_killed_in_a_unit_that_lives_on_is_reported(prober: Prober) -> None:
    """Sidekiq's `convert` outgrows the unit's MemoryMax= and the kernel kills it; Sidekiq (the
    main process) lives on, `active`: the unit's cgroup counted the kill, and the target is
    down as OOM-killed, though systemd restarted nothing."""
    box = prober.box
    sidekiq = "mastodon-sidekiq.service"
    box.write_service(sidekiq, [sys.executable, str(HOGS), "grow", "--parent", "--rate", "16",
                                "--step", "4"],
                      env={"PYTHONUNBUFFERED": "1"}, service_extra="MemoryMax=64M")
    prober.configure(f'[[target]]\nname = "sidekiq"\nunit_health = "{sidekiq}"\n')
    box.systemctl("start", sidekiq)
    report, entry = prober.until("sidekiq", lambda t: t["health"] == "down", runs=20)
    assert entry["failure"] == "oom", entry
    assert re.fullmatch(r"mastodon-sidekiq\.service was OOM-killed at \d\d:\d\d UTC "
                        r"\(MemoryMax=64MiB\); it is active \(running\) again",
                        entry["reason"]), entry
    assert box.unit_property(sidekiq, "NRestarts") == "0"
    assert restarts_by_prober(report) == []


def test_a_unit_that_aborts_in_a_loop_is_reported_once_for_the_loop(prober: Prober) -> None:
    """journald's stand-in (journald itself is refused as a restart target, and watched all
    the same) aborts, systemd restarts it, again and again: down once, as a crash with its
    signal, however many aborts follow; prober restarts nothing."""
    box = prober.box
    journald = "systemd-journald.service"
    box.write_service(journald, [sys.executable, "-c", "import os, time; time.sleep(1); "
                                 "os.abort()"],
                      unit_extra=NO_START_LIMIT, service_extra=f"{LOOP}LimitCORE=0")
    prober.configure(f'[[target]]\nname = "journald"\nunit_health = "{journald}"\n')
    box.systemctl("start", journald)
    report, entry = prober.until("journald", lambda t: t["health"] == "down", runs=30)
    assert entry["failure"] == "unit", entry
    assert "crashed (SIGABRT)" in entry["reason"] or "restarted by systemd" in entry["reason"], \
        entry
    restarts = int(box.unit_property(journald, "NRestarts"))
    prober.until("journald", lambda t: int(box.unit_property(journald, "NRestarts")) >=
                 restarts + 3, runs=30)
    report = prober.check()
    entry = next(t for t in report["targets"] if t["name"] == "journald")
    assert entry["health"] == "down", entry
    assert restarts_by_prober(report) == []
    downs = prober.downs("journald")
    assert len(downs) == 1, downs  # once for the loop, not once per abort
    assert any("crashed (SIGABRT)" in t["reason"] for t in prober.reasons), prober.reasons


def test_a_unit_left_failed_is_reported_and_recovers_when_started_again(prober: Prober) -> None:
    """A Mastodon unit that exits 1 without Restart= stays failed: down, saying so; an admin
    starts it again (it runs now): recovered, notified. prober starts nothing itself."""
    box = prober.box
    web = "mastodon-web.service"
    flag = box.workdir / "broken"
    flag.write_text("")
    box.write_service(web, [sys.executable, "-c", "import os, sys, time; "
                            f"sys.exit(1) if os.path.exists({str(flag)!r}) else time.sleep(3600)"])
    prober.configure(f'[[target]]\nname = "web"\nunit_health = "{web}"\n')
    box.systemctl("start", web, check=False)
    report, entry = prober.until("web", lambda t: t["health"] == "down", runs=10)
    assert entry["failure"] == "unit", entry
    assert re.fullmatch(r"mastodon-web\.service is failed: it exited with status 1 at "
                        r"\d\d:\d\d UTC and systemd did not restart it", entry["reason"]), entry
    assert restarts_by_prober(report) == []
    assert box.unit_property(web, "ActiveState") == "failed"  # still: prober started nothing
    flag.unlink()
    box.systemctl("start", web)
    report, entry = prober.until("web", lambda t: t["health"] == "healthy", runs=10)
    assert entry["reason"] == "mastodon-web.service is active (running)", entry
    assert [n["event"] for n in prober.notes_for("web")] == ["down", "recovered"]


def test_the_shipped_hardened_unit_reads_what_systemd_and_the_kernel_know(
        sandbox_workdir: Path) -> None:
    """Under prober.service as shipped (the `prober` user, its sandbox and system-call
    filter): systemd's facts over D-Bus, the host's OOM count and the cgroup tree are all
    readable, so an OOM loop and a failed unit are judged as outside; nothing is restarted."""
    with booted_sandbox(sandbox_workdir, users=["prober"], memory=True) as box:
        write_oom_loop(box, memory_max_mib=48)
        box.write_service("mastodon-web.service", [sys.executable, "-c", "exit(1)"])
        installed = install(box, '[defaults]\nfailure_threshold = 1\n\n'
                            '[[target]]\nname = "netdata"\nunit_health = "netdata"\n\n'
                            '[[target]]\nname = "web"\nunit_health = "mastodon-web"\n')
        box.systemctl("start", "netdata.service")
        box.systemctl("start", "mastodon-web.service", check=False)
        for _ in range(30):
            box.systemctl("start", "prober.service", check=False)
            targets = json.loads(installed.state.read_text())["targets"]
            if oom_kills(targets["netdata"]["last_reason"]) >= 2:
                break
            time.sleep(1)
        assert targets["netdata"]["last_failure"] == "oom", targets["netdata"]
        assert targets["web"]["last_reason"].startswith(
            "mastodon-web.service is failed: it exited with status 1"), targets["web"]
        assert [t["restarts_total"] for t in targets.values()] == [0, 0]
