"""The sandboxing of the shipped units, as `systemd-analyze security --offline=yes` rates it: the
score cannot regress silently, and each check a unit leaves open is explained in the unit.

What the sandboxing still lets prober do is proved for real in tests/e2e/test_hardening.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from typing import Any

import pytest

from prober.core.config import parse_config
from tests.support.deploy import UNITS
from tests.support.needs import need_program
from tests.support.sandbox import REPO

SERVICES = ("prober.service", "prober-watch.service")
MAX_EXPOSURE = 2.0
# Directives that would hide /proc/pressure and other units' /proc/PID from the memory report.
HIDE_PROC = ("ProtectProc=", "ProcSubset=")
# Lines of [Service] that make the sandbox, kept the same in both units.
SANDBOX_KEYS = re.compile(
    r"^(Protect\w+|Private\w+|NoNewPrivileges|Restrict\w+|LockPersonality|SystemCall\w+|"
    r"CapabilityBoundingSet|AmbientCapabilities|UMask|RemoveIPC|MemoryDenyWriteExecute|"
    r"Device\w+|IPAddress\w+|ReadWritePaths|ReadOnlyPaths|InaccessiblePaths|ProcSubset)=")


def analyze(service: str, *options: str) -> str:
    systemd_analyze = need_program("/usr/bin/systemd-analyze", "systemd")
    done = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", "--no-pager", *options,
         str(UNITS / service)],
        capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def exposure(service: str) -> float:
    """The overall exposure level systemd-analyze gives the shipped unit (0 best, 10 worst)."""
    found = re.search(rf"Overall exposure level for {re.escape(service)}: (\d+\.\d+)",
                      analyze(service))
    assert found, f"no overall exposure level for {service}"
    return float(found.group(1))


def open_checks(service: str) -> list[dict[str, Any]]:
    """The checks that count against the unit (those with an exposure above zero)."""
    checks = json.loads(analyze(service, "--json=short"))
    return [check for check in checks if check["exposure"] and float(check["exposure"]) > 0]


def comments(service: str) -> str:
    return "\n".join(line for line in (UNITS / service).read_text().splitlines()
                     if line.lstrip().startswith("#"))


def sandbox_lines(service: str) -> list[str]:
    return sorted(line for line in (UNITS / service).read_text().splitlines()
                  if SANDBOX_KEYS.match(line))


@pytest.mark.parametrize("service", SERVICES)
def test_exposure_is_at_most_2(service: str) -> None:
    """`systemd-analyze security --offline=yes` rates the shipped unit 2.0 or better."""
    assert exposure(service) <= MAX_EXPOSURE


@pytest.mark.parametrize("service", SERVICES)
def test_each_open_check_is_explained_in_the_unit(service: str) -> None:
    """Every check the unit leaves open names its directive in a comment of the unit (the
    one-line reason it was left out), so a line dropped by accident shows up here."""
    unexplained = []
    for check in open_checks(service):
        directive = check["name"].split("=", 1)[0]
        if f"{directive}=" not in comments(service):
            unexplained.append(f"{check['name']} ({check['description']})")
    assert not unexplained, f"{service}: open checks without a reason in the unit: {unexplained}"


@pytest.mark.parametrize("service", SERVICES)
def test_proc_stays_visible(service: str) -> None:
    """Neither unit hides /proc (ProtectProc=, ProcSubset=): the memory-pressure report reads
    /proc/pressure and other units' /proc/PID."""
    settings = [line for line in (UNITS / service).read_text().splitlines()
                if line.startswith(HIDE_PROC)]
    assert settings == []
    assert all(name in comments(service) for name in HIDE_PROC)


def test_both_units_share_one_sandbox() -> None:
    """prober.service and prober-watch.service have the same sandboxing lines."""
    assert sandbox_lines("prober.service") == sandbox_lines("prober-watch.service")
    assert len(sandbox_lines("prober.service")) > 20


_SYSTEMD_UNITS = {"s": 1, "min": 60, "h": 3600}
_DEFAULT_CONFIG = {"target": [{"name": "caddy", "url": "http://127.0.0.1:1/", "unit": "caddy"}]}


def timeout_start(service: str) -> float:
    """The unit's TimeoutStartSec=, in seconds (the spellings the shipped units use)."""
    (value,) = re.findall(r"^TimeoutStartSec=(\d+)(s|min|h)$",
                          (UNITS / service).read_text(), re.MULTILINE)
    return int(value[0]) * _SYSTEMD_UNITS[value[1]]


@pytest.mark.parametrize("example", ["default", "caddy-only", "mastodon", "mastodon-nginx",
                                     "mastodon-compose"])
def test_the_timers_run_has_time_for_the_longest_run(example: str) -> None:
    """prober.service's TimeoutStartSec= is longer than the run deadline of the default config
    and of the shipped examples: their slowest probe, its confirmations, a restart and its
    verification."""
    data = _DEFAULT_CONFIG if example == "default" else \
        tomllib.loads((REPO / "examples" / f"{example}.toml").read_text())
    assert parse_config(data).run_deadline < timeout_start("prober.service")
