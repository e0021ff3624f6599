"""The systemd module's pure parts, and its fallback when a bus has no systemd on it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from prober.actuators.systemd import SystemdActuator, _parse_show, facts_from_properties
from prober.core.config import Bus
from prober.core.errors import SystemdError
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
