"""The Prometheus exposition: its series and values from a snapshot, promtool's verdict, the
textfile node_exporter reads, and prometheus_client kept off the healthy check's path."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prober.core.runs import Snapshot
from prober.outputs import metrics
from tests.support import snapshots
from tests.support.programs import PROMTOOL, require_program
from tests.support.servers import Server, health, serve

pytestmark = pytest.mark.timeout(60)

Values = dict[str, dict[tuple[str, ...], float]]


def _samples(snapshot: Snapshot) -> Values:
    """sample name -> {label values: value} of the exposition, as Prometheus parses it."""
    out: Values = {}
    text = metrics.exposition(snapshot).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sample.labels[k] for k in ("target", "unit") if k in sample.labels)
            out.setdefault(sample.name, {})[key] = sample.value
    return out


UNITS = {"caddy": "caddy.service", "web": "mastodon-web.service",
         "streaming": "mastodon-streaming.service", "sidekiq": "mastodon-sidekiq.service",
         "redis": ""}
NAMES = list(UNITS)


def _per_target(*values: float) -> dict[tuple[str, ...], float]:
    return {(name, UNITS[name]): value for name, value in zip(NAMES, values, strict=True)}


AFTER_RUN: Values = {
    "prober_probe_success": _per_target(1, 0, 0, 0, 1),
    "prober_probe_duration_seconds": _per_target(0.0032, 5.0, 0.0018, 0.041, 0.0003),
    "prober_consecutive_failures": _per_target(0, 84, 0, 360, 0),
    "prober_target_down": _per_target(0, 1, 0, 1, 0),
    "prober_restarts_total": _per_target(4, 9, 0, 3, 0),
    "prober_given_up": _per_target(0, 0, 0, 1, 0),
    "prober_paused": _per_target(0, 0, 1, 0, 0),
    "prober_target_prober_fault": _per_target(0, 0, 0, 0, 0),
    "prober_tls_not_after_timestamp_seconds": {("caddy", "caddy.service"):
                                               snapshots.CERT_NOT_AFTER},
    "prober_last_run_timestamp_seconds": {(): snapshots.NOW - 1.3 + 0.81},
    "prober_interval_seconds": {(): 30.0},
    "prober_run_deadline_seconds": {(): 5.0 + 2 * (2.0 + 5.0) + 60.0 + 30.0},
    "prober_run_status": {(): 2.0},
    "prober_memory_pressure_some_avg10": {(): 23.4},
    "prober_pressure_threshold_percent": {(): 10.0},
}
# A watcher before its first run knows the stored state only: no run status, no pressure, no
# certificate; the last run is the one the state recorded; the last results are the state's.
BEFORE_FIRST_RUN: Values = {
    **{k: v for k, v in AFTER_RUN.items() if k not in (
        "prober_tls_not_after_timestamp_seconds", "prober_run_status",
        "prober_memory_pressure_some_avg10")},
    "prober_last_run_timestamp_seconds": {(): snapshots.NOW - 0.6},
}


@pytest.mark.parametrize(("with_report", "expected"),
                         [(True, AFTER_RUN), (False, BEFORE_FIRST_RUN)],
                         ids=["after-a-run", "before-the-first-run"])
def test_series_and_values(with_report: bool, expected: Values) -> None:
    """Every series of the contract, with its labels and value per target; a target the state
    does not know yet (postgres, never probed) has no series at all."""
    found = _samples(snapshots.snapshot(with_report=with_report))
    assert set(found) == set(expected)
    for name, values in expected.items():
        assert found[name] == pytest.approx(values), name


def test_types_and_help() -> None:
    """prober_restarts_total is a counter, every other series a gauge, each with its HELP."""
    text = metrics.exposition(snapshots.snapshot()).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families.pop("prober_restarts").type == "counter"
    assert {f.type for f in families.values()} == {"gauge"}
    assert all(f.documentation for f in families.values())
    assert text.count("# HELP ") == len(families) + 1


def test_a_first_run_exports_counters_at_zero() -> None:
    """From its first run on, a target has prober_restarts_total 0, so that rate() and
    increase() see the first restart."""
    found = _samples(snapshots.healthy_snapshot())
    assert found["prober_restarts_total"] == {("solo", ""): 0.0}
    assert found["prober_probe_success"] == {("solo", ""): 1.0}
    assert found["prober_run_status"] == {(): 0.0}


@pytest.mark.parametrize("with_report", [True, False], ids=["after-a-run", "before-any-run"])
def test_a_prober_fault_has_its_own_series(with_report: bool) -> None:
    """A target prober cannot judge through its own fault (a missing env_file) shows 1 in
    prober_target_prober_fault, and is neither down nor counted as failing."""
    found = _samples(snapshots.prober_fault_snapshot(with_report=with_report))
    assert found["prober_target_prober_fault"] == {("cache", "redis.service"): 1.0}
    assert found["prober_target_down"] == {("cache", "redis.service"): 0.0}
    assert found["prober_consecutive_failures"] == {("cache", "redis.service"): 0.0}


def test_labels_are_escaped() -> None:
    """A unit name is carried verbatim through the label escaping of the exposition."""
    base = snapshots.healthy_snapshot()
    target = replace(base.config.targets[0], unit='we"ird\\unit.service')
    config = replace(base.config, targets=(target,))
    found = _samples(replace(base, config=config))
    assert ("solo", 'we"ird\\unit.service') in found["prober_given_up"]


@pytest.fixture
def promtool() -> str:
    return require_program(PROMTOOL, "prometheus")


@pytest.mark.parametrize("with_report", [True, False], ids=["after-a-run", "before-any-run"])
def test_promtool_accepts_the_exposition(promtool: str, with_report: bool) -> None:
    """`promtool check metrics` (Prometheus' own linter) finds nothing to say."""
    done = subprocess.run([promtool, "check", "metrics"], capture_output=True, check=False,
                          input=metrics.exposition(snapshots.snapshot(with_report=with_report)),
                          timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_promtool_is_not_a_rubber_stamp(promtool: str) -> None:
    """The same promtool rejects a counter without _total: the test above can fail."""
    bad = b"# HELP prober_restarts x\n# TYPE prober_restarts counter\nprober_restarts 1\n"
    done = subprocess.run([promtool, "check", "metrics"], capture_output=True, check=False,
                          input=bad, timeout=30)
    assert done.returncode != 0


# --- the textfile, through the real command ---------------------------------------------------


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(health()) as server:
        yield server


def _check(tmp_path: Path, web: Server, *args: str, umask: int = 0o022,
           script: str | None = None) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "prober.toml"
    config.write_text(f'[[target]]\nname = "web"\nurl = "{web.url("/health")}"\n')
    os.chmod(config, 0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBER_")}
    env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={tmp_path}/no-bus"
    argv = ["check", "--config", str(config), "--state", str(tmp_path / "state.json"), *args]
    command = [sys.executable, "-m", "prober", *argv] if script is None else \
        [sys.executable, "-c", script, *argv]
    # The witness file shows the umask the prober ran under.
    shell = f'umask {umask:03o} && touch "{tmp_path}/umask-witness" && exec "$@"'
    return subprocess.run(["sh", "-c", shell, "sh", *command],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_textfile_is_world_readable_under_umask_077(tmp_path: Path, web: Server) -> None:
    """Under the units' UMask=0077 the textfile is still 0644 (node_exporter runs as another
    user), written whole (no temp file left), with the run's series."""
    textfile = tmp_path / "prober.prom"
    done = _check(tmp_path, web, "--textfile", str(textfile), umask=0o077)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "umask-witness").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(textfile).st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    samples = {s.name: s.value for f in text_string_to_metric_families(textfile.read_text())
               for s in f.samples if s.labels.get("target") in (None, "web")}
    assert samples["prober_probe_success"] == 1.0
    assert samples["prober_restarts_total"] == 0.0
    assert samples["prober_run_status"] == 0.0


def test_unwritable_textfile_is_one_line_exit_3(tmp_path: Path, web: Server) -> None:
    """A textfile in a missing folder is one line naming it, exit 3, no traceback."""
    done = _check(tmp_path, web, "--textfile", str(tmp_path / "no-such-dir" / "prober.prom"))
    assert done.returncode == 3
    assert done.stderr.startswith("prober: error: ") and "cannot write the metrics file" in \
        done.stderr and "Traceback" not in done.stderr


MODULES = """\
import json, sys
from prober.shell.cli import run
code = run(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
OUTPUTS = ("prometheus_client", "prober.outputs.metrics", "prober.outputs.web",
           "prober.outputs.page")


@pytest.mark.parametrize(("textfile", "loaded"), [(False, set()),
                                                  (True, {"prometheus_client",
                                                          "prober.outputs.metrics"})],
                         ids=["no-textfile", "textfile"])
def test_prometheus_client_loads_only_with_a_textfile(tmp_path: Path, web: Server,
                                                      textfile: bool, loaded: set[str]) -> None:
    """A healthy check without a textfile loads neither prometheus_client nor the web server
    or page; with one, it loads prometheus_client and nothing of the web."""
    args = ("--textfile", str(tmp_path / "m.prom")) if textfile else ()
    done = _check(tmp_path, web, *args, script=MODULES)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert data["code"] == 0
    modules = set(data["modules"])
    assert {m for m in OUTPUTS if m in modules} == loaded
