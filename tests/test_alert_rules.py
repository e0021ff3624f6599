"""The fleet alert rules in examples/prometheus/: promtool accepts them and runs their unit
tests, every rule is both fired and cleared by those tests, and they use only the series prober
exports."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.needs import need_program
from tests.support.sandbox import REPO
from tests.support.servers import Server, health, serve

RULES_DIR = REPO / "examples" / "prometheus"
RULES = RULES_DIR / "prober.rules.yml"
RULE_TESTS = RULES_DIR / "prober.rules.test.yml"
PSI = Path("/proc/pressure/memory")

# The series names decided for /metrics and the textfile (labels `target`, `unit` per target).
CONTRACT = frozenset({
    "prober_probe_success", "prober_probe_duration_seconds", "prober_consecutive_failures",
    "prober_target_down", "prober_restarts_total", "prober_given_up", "prober_paused",
    "prober_target_prober_fault",
    "prober_tls_not_after_timestamp_seconds", "prober_last_run_timestamp_seconds",
    "prober_interval_seconds", "prober_run_deadline_seconds", "prober_run_status",
    "prober_memory_pressure_some_avg10", "prober_pressure_threshold_percent",
    "prober_config_last_reload_successful", "prober_config_last_reload_success_timestamp_seconds",
})
WATCHER_ONLY = frozenset({"prober_config_last_reload_successful",
                          "prober_config_last_reload_success_timestamp_seconds"})
SERIES_NAME = re.compile(r"\bprober_[a-z0-9_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = need_program("/usr/bin/promtool", "prometheus")
    return subprocess.run([binary, *args], cwd=RULES_DIR, capture_output=True, text=True,
                          check=False, timeout=120)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_key(alertname: str, labels: dict[str, str]) -> tuple[str, str]:
    """An alert rule told apart from others of its name by its `cause` label, if any."""
    return alertname, labels.get("cause", "")


def fired_and_cleared() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Rules some unit test sees firing, and those it then sees clear in the same test."""
    fired: set[tuple[str, str]] = set()
    cleared: set[tuple[str, str]] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        seen: set[tuple[str, str]] = set()
        checks = sorted(case.get("alert_rule_test", []),
                        key=lambda check: _seconds(str(check["eval_time"])))
        for check in checks:
            name = check["alertname"]
            firing = {rule_key(name, alert.get("exp_labels", {}))
                      for alert in check.get("exp_alerts") or []}
            fired |= firing
            cleared |= {key for key in seen if key[0] == name and key not in firing}
            seen |= firing
    return fired, cleared


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the rules file, lint included."""
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes every case of prober.rules.test.yml."""
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_rule_is_fired_and_cleared_by_a_unit_test() -> None:
    """Each alerting rule (each `cause` of ProberStale too) fires in some unit test and is seen
    to clear later in the same test."""
    keys = {rule_key(rule["alert"], rule.get("labels", {})) for rule in rules()}
    fired, cleared = fired_and_cleared()
    assert keys - fired == set(), "never seen firing"
    assert keys - cleared == set(), "never seen clearing"


def test_rules_use_only_the_contracts_series() -> None:
    """The rules and their tests name only the series prober's contract defines."""
    names = set(SERIES_NAME.findall(RULES.read_text() + RULE_TESTS.read_text()))
    assert names - CONTRACT == set()
    assert {"prober_interval_seconds", "prober_run_deadline_seconds"} <= names


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(health()) as server:
        yield server


def test_prober_exports_every_series_the_rules_use(tmp_path: Path, web: Server) -> None:
    """One `prober check --textfile` run writes every series the rules use (PSI ones where the
    kernel has PSI)."""
    config = tmp_path / "prober.toml"
    config.write_text(f'[[target]]\nname = "web"\nurl = "{web.url("/health")}"\n'
                      'unit = "web"\n')
    textfile = tmp_path / "prober.prom"
    done = subprocess.run(
        [sys.executable, "-m", "prober", "check", "--config", str(config), "--state",
         str(tmp_path / "state.json"), "--textfile", str(textfile)],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/none"})
    assert textfile.exists(), done.stderr
    exported = {line.split("{")[0].split(" ")[0]
                for line in textfile.read_text().splitlines() if not line.startswith("#")}
    used = set(SERIES_NAME.findall(RULES.read_text())) - WATCHER_ONLY
    if not PSI.exists():
        used -= {"prober_memory_pressure_some_avg10", "prober_pressure_threshold_percent"}
    assert used - exported == set()
