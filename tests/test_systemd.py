"""The systemd module's pure parts, and its fallback when a bus has no systemd on it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from prober.actuators.systemd import SystemdActuator
from prober.core.actuator import Running, StartLimit
from prober.core.errors import SystemdError
from prober.io.systemd import Bus, UnitFacts, _parse_show, facts_from_properties
from tests.support.processes import stop_process


def test_facts_from_dbus_properties() -> None:
    """D-Bus property values become UnitFacts (timestamps in µs, Job as (id, path))."""
    facts = facts_from_properties("caddy.service", {
        "LoadState": "loaded", "ActiveState": "active", "SubState": "running",
        "ActiveEnterTimestamp": 1_700_000_000_500_000, "MainPID": 42,
        "Job": [0, "/"], "StartLimitBurst": 5, "StartLimitIntervalUSec": 10_000_000,
    })
    assert (facts.active_state, facts.main_pid, facts.job_pending) == ("active", 42, False)
    assert facts.active_enter == 1_700_000_000.5
    assert (facts.start_limit_burst, facts.start_limit_interval) == (5, 10.0)
    assert facts_from_properties("x.service", {"Job": [7, "/job/7"]}).job_pending


def test_facts_from_systemctl_show() -> None:
    """`systemctl show --timestamp=unix` output gives the same facts."""
    text = ("LoadState=loaded\nActiveState=activating\nSubState=start\n"
            "ActiveEnterTimestamp=@1700000000\nMainPID=0\nJob=12\nStartLimitBurst=5\n"
            "StartLimitIntervalUSec=10000000\n")
    facts = facts_from_properties("caddy.service", _parse_show(text))
    assert (facts.active_state, facts.active_enter, facts.job_pending) == \
        ("activating", 1_700_000_000.0, True)
    assert facts_from_properties("x.service", _parse_show("Job=\n")).job_pending is False


def test_how_the_last_run_ended_from_dbus_and_from_systemctl_show() -> None:
    """What the unit_health kind reads: NRestarts, Result, the main process's end, MemoryMax=
    (infinity is no limit), alike from D-Bus and from `systemctl show`."""
    dbus = facts_from_properties("netdata.service", {
        "NRestarts": 4, "Result": "signal", "ExecMainCode": 2, "ExecMainStatus": 9,
        "ExecMainExitTimestamp": 1_700_000_000_000_000, "MemoryMax": 48 << 20})
    show = facts_from_properties("netdata.service", _parse_show(
        "NRestarts=4\nResult=signal\nExecMainCode=2\nExecMainStatus=9\n"
        "ExecMainExitTimestamp=@1700000000\nMemoryMax=50331648\n"))
    for facts in (dbus, show):
        assert (facts.n_restarts, facts.result, facts.exec_main_code, facts.exec_main_status,
                facts.exec_main_exit, facts.memory_max) == \
            (4, "signal", 2, 9, 1_700_000_000.0, 48 << 20)
    assert facts_from_properties("x.service", {"MemoryMax": (1 << 64) - 1}).memory_max is None
    assert facts_from_properties("x.service", _parse_show("MemoryMax=infinity\n")
                                 ).memory_max is None


@pytest.mark.parametrize(("value", "seconds"), [
    (0, None), (-1, None), ((1 << 64) - 1, None), (4_102_444_800_000_001, None), (True, None),
    ("1700000000000000", None), (4_102_444_800_000_000, 4_102_444_800.0),
    (1_700_000_000_500_000, 1_700_000_000.5),
], ids=["none", "negative", "uint64-max", "after-2100", "bool", "text", "2100", "plain"])
def test_an_exit_time_past_what_prober_keeps_is_none(value: object, seconds: float | None
                                                     ) -> None:
    """UINT64_MAX µs (the year 586524) or any time after 2100 is no time: kept, it would make
    the state file's reader refuse the target's entry, and printing it raise."""
    facts = facts_from_properties("x.service", {"ExecMainExitTimestamp": value,
                                                "ActiveEnterTimestamp": value})
    assert (facts.exec_main_exit, facts.active_enter) == (seconds, seconds)


@pytest.mark.parametrize("shown", ["@18446744073709.551615", "@99999999999", "@inf", "@nan",
                                   "@-5", "@x", "n/a", ""])
def test_a_hostile_exit_time_from_systemctl_show_is_none(shown: str) -> None:
    facts = facts_from_properties("x.service", _parse_show(f"ExecMainExitTimestamp={shown}\n"))
    assert facts.exec_main_exit is None


ACTIVE = UnitFacts("caddy.service", "loaded", "active", "running", active_enter=1000.0,
                   main_pid=42, start_limit_burst=5, start_limit_interval=10.0,
                   control_group="/system.slice/caddy.service")


@pytest.mark.parametrize(("facts", "running", "detail"), [
    (ACTIVE, Running.RUNNING, "caddy.service is active (running)"),
    (replace(ACTIVE, active_state="inactive", sub_state="dead"), Running.STOPPED,
     "caddy.service is inactive (dead)"),
    (replace(ACTIVE, active_state="failed", sub_state="failed"), Running.STOPPED,
     "caddy.service is failed (failed)"),
    (replace(ACTIVE, load_state="not-found", active_state="inactive"), Running.STOPPED,
     "caddy.service is not loaded (not-found)"),
    (replace(ACTIVE, active_state="activating", sub_state="start"), Running.STARTING,
     "caddy.service is activating (start)"),
    (replace(ACTIVE, active_state="reloading"), Running.STARTING,
     "caddy.service is reloading (running)"),
    (replace(ACTIVE, job_pending=True), Running.STARTING, "caddy.service is active (running)"),
    (replace(ACTIVE, active_state="maintenance"), Running.STOPPED,
     "caddy.service is maintenance (running)"),
], ids=["active", "inactive", "failed", "not-found", "activating", "reloading", "job-pending",
        "maintenance"])
def test_neutral_facts(facts: UnitFacts, running: Running, detail: str) -> None:
    """A unit's states become the neutral facts the policy judges: only an active unit is
    running; a job under way is starting; anything else is stopped, never started by prober."""
    neutral = facts.neutral()
    assert (neutral.running, neutral.detail) == (running, detail)
    assert (neutral.name, neutral.since, neutral.main_pid, neutral.memory_scope) == (
        "caddy.service", 1000.0, 42, "/system.slice/caddy.service")
    assert neutral.start_limit == StartLimit(
        5, 10.0, "StartLimitBurst=5 within StartLimitIntervalSec=10s (start-limit-hit)")
    assert replace(facts, start_limit_burst=0).neutral().start_limit is None


@pytest.fixture
def bus_without_systemd(tmp_path: Path) -> Iterator[str]:
    """A real session bus daemon on which systemd never appears."""
    socket = tmp_path / "bus"
    config = tmp_path / "session.conf"
    config.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" '
        '"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        f"<busconfig><type>session</type><listen>unix:path={socket}</listen>"
        "<auth>EXTERNAL</auth><policy context=\"default\"><allow send_destination=\"*\"/>"
        "<allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n")
    daemon = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork",
                               "--print-address"], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        assert address.startswith("unix:")
        yield address
    finally:
        stop_process(daemon)


def test_bus_without_systemd_falls_back_to_systemctl(bus_without_systemd: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A reachable bus that has no systemd on it is treated as unreachable: systemctl is tried."""
    actuator = SystemdActuator({**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus_without_systemd})

    async def ask() -> None:
        try:
            await actuator.unit_facts("web.service", Bus.USER)
        except SystemdError as exc:  # no user manager on this host for systemctl either
            assert "systemctl show web.service failed" in str(exc)
        finally:
            await actuator.close()

    asyncio.run(ask())
    assert "systemd is not on this bus" in caplog.text
    assert "falling back to systemctl" in caplog.text
