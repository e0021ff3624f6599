"""Memory pressure (PSI) is read on each run and shown in the reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prober.pressure import PSI_MEMORY, Pressure, parse_psi, read_memory_pressure
from tests.servers import health, serve

SAMPLE = ("some avg10=12.50 avg60=3.25 avg300=0.80 total=123456\n"
          "full avg10=4.00 avg60=1.00 avg300=0.10 total=65432\n")


def test_parse_psi() -> None:
    """The kernel's some/full lines become percentages over 10 s and 60 s."""
    assert parse_psi(SAMPLE) == Pressure(12.5, 3.25, 4.0, 1.0)


def test_missing_psi_is_none(tmp_path: Path) -> None:
    """A kernel without PSI (or an unreadable file) gives None, not an error."""
    assert read_memory_pressure(str(tmp_path / "nope")) is None


@pytest.mark.skipif(not os.path.exists(PSI_MEMORY), reason="this kernel has no PSI")
def test_check_reports_pressure(tmp_path: Path) -> None:
    """`check --json` carries the host's memory pressure, read from /proc/pressure/memory."""
    with serve(health()) as server:
        config = tmp_path / "prober.toml"
        config.write_text(f'[[target]]\nname = "web"\nurl = "{server.url("/health")}"\n')
        done = subprocess.run(
            [sys.executable, "-m", "prober", "check", "--json", "--config", str(config),
             "--state", str(tmp_path / "state.json")],
            capture_output=True, text=True, timeout=60, check=False)
    pressure = json.loads(done.stdout)["memory_pressure"]
    assert set(pressure) == {"some_avg10", "some_avg60", "full_avg10", "full_avg60"}
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in pressure.values())
