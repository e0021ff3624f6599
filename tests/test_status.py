"""`prober status` exits as `check` does, from what the last run left in the state: a table of
remembered states, then the real command."""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prober.core.config import parse_config
from prober.core.runs import Status, remembered, remembered_status, stale_after
from prober.core.tracker import Health, State, TargetState
from tests.support.servers import Certs, Server, health, refused_port, serve
from tests.test_cli import Prober, _config

NOW = 1_800_000_000.0
CONFIG = parse_config({"target": [{"name": "web", "url": "http://127.0.0.1:1/"},
                                  {"name": "api", "url": "http://127.0.0.1:2/"}]}, path="t")


@pytest.mark.parametrize(("state", "expected"), [
    (TargetState(health=Health.HEALTHY, last_ok=True), Status.OK),
    (TargetState(health=Health.FAILING, last_ok=False), Status.WARNING),
    (TargetState(health=Health.RECOVERING, last_ok=True), Status.WARNING),
    (TargetState(health=Health.DOWN, last_ok=False), Status.CRITICAL),
    (TargetState(health=Health.DOWN, given_up=True), Status.CRITICAL),
    (TargetState(health=Health.HEALTHY, last_ok=True, last_notice="certificate expires"),
     Status.WARNING),
    (TargetState(), Status.UNKNOWN),
    (TargetState(health=Health.HEALTHY, last_ok=False, paused_until=NOW + 60), Status.WARNING),
    (TargetState(health=Health.DOWN, last_ok=True, paused_until=NOW + 60), Status.OK),
    (TargetState(health=Health.HEALTHY, last_ok=False, paused_until=NOW - 60), Status.OK),
    (TargetState(health=Health.HEALTHY, last_ok=False, last_failure="prober-fault"),
     Status.WARNING),
    (TargetState(health=Health.DOWN, last_ok=False, last_failure="prober-fault"),
     Status.CRITICAL),
], ids=["healthy", "failing", "recovering", "down", "given-up", "notice", "never-judged",
        "paused-failing", "paused-passing", "pause-over", "prober-fault", "prober-fault-down"])
def test_a_targets_remembered_status(state: TargetState, expected: Status) -> None:
    """Each remembered state gives the status a run that left it gave its target."""
    assert remembered_status(state, NOW) is expected


HEALTHY = TargetState(health=Health.HEALTHY, last_ok=True)


@pytest.mark.parametrize(("web", "api", "updated_at", "expected"), [
    (HEALTHY, HEALTHY, NOW - 30, Status.OK),
    (HEALTHY, TargetState(health=Health.FAILING), NOW - 30, Status.WARNING),
    (TargetState(health=Health.DOWN), TargetState(), NOW - 30, Status.CRITICAL),
    (HEALTHY, TargetState(), NOW - 30, Status.UNKNOWN),
    (HEALTHY, HEALTHY, NOW - stale_after(CONFIG), Status.OK),
    (HEALTHY, HEALTHY, NOW - stale_after(CONFIG) - 1, Status.UNKNOWN),
    (TargetState(health=Health.DOWN), HEALTHY, NOW - 86400, Status.UNKNOWN),
    (HEALTHY, HEALTHY, None, Status.UNKNOWN),
], ids=["healthy", "warning", "down-beats-never-judged", "one-never-judged", "just-fresh",
        "too-old", "too-old-down", "no-run"])
def test_the_status_of_a_state(web: TargetState, api: TargetState, updated_at: float | None,
                               expected: Status) -> None:
    """The worst target's status, a target down before one never judged; unknown when the
    last run is too old to trust."""
    state = State(targets={"web": web, "api": api}, updated_at=updated_at)
    assert remembered(CONFIG, state, NOW) is expected


@pytest.fixture
def prober(tmp_path: Path) -> Prober:
    return Prober(tmp_path)


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(health()) as server:
        yield server


def test_status_exits_0_when_all_are_healthy(prober: Prober) -> None:
    """After a healthy check, status exits 0 and says so in JSON."""
    with serve(health()) as web:
        prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
        assert prober("check").code == 0
    status = prober("status", "--json")
    assert status.code == 0 and status.err == "", status
    assert status.json()["status"] == "ok" and status.json()["targets"][0]["status"] == "ok"


def test_status_exits_1_while_a_target_fails(prober: Prober) -> None:
    """One failed run of three: failing, a warning, exit 1 from check and status alike."""
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{refused_port()}/"',
                         defaults='confirm_interval = "0s"'))  # not confirmed down in one run
    assert prober("check").code == 1
    status = prober("status")
    assert status.code == 1 and "failing" in status.out, status


def test_status_warns_of_a_certificate_about_to_expire(prober: Prober, tmp_path: Path) -> None:
    """A certificate expiring within tls_expiry_warning: check's warning, remembered in the
    state as the target's notice, is status's too (exit 1), and shown."""
    certs = Certs(tmp_path)
    context = certs.server_context(valid_for=datetime.timedelta(days=5, hours=1))
    with serve(health(), tls=context) as server:
        prober.write(_config(
            f'name = "site"\nurl = "https://example.test:{server.port}/health"\n'
            f'resolve = "127.0.0.1"\nca_file = "{certs.ca_file}"'))
        assert prober("check").code == 1
    status = prober("status", "--json")
    assert status.code == 1, status
    (target,) = status.json()["targets"]
    assert (target["status"], target["health"]) == ("warning", "healthy")
    assert "in 5 days" in target["notice"]
    text = prober("status")
    assert text.code == 1 and "in 5 days" in text.out


def test_status_shows_a_paused_target_as_paused(prober: Prober, web: Server) -> None:
    """A paused target that times out shows as paused, not healthy, and warns (exit 1) as
    check does; resumed and passing, status exits 0."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    assert prober("check").code == 0
    assert prober("pause", "web", "--for", "1h", "--reason", "upgrading").code == 0
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"'))
    assert prober("check").code == 1
    status = prober("status")
    assert status.code == 1, status
    row = next(line for line in status.out.splitlines() if line.startswith("web "))
    assert row.split()[1] == "paused" and "healthy" not in row, row
    assert json.loads(prober("status", "--json").out)["targets"][0]["paused"] is True


def test_status_exits_2_when_a_target_is_down(prober: Prober) -> None:
    """Down after failure_threshold runs: check and status exit 2."""
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{refused_port()}/"',
                         defaults="failure_threshold = 1"))
    assert prober("check").code == 2
    assert prober("status").code == 2


def test_a_state_too_old_to_trust_is_unknown(prober: Prober, web: Server) -> None:
    """A healthy state whose last run is older than 10 intervals (at least 5m) exits 3, with
    one line saying how old; before any run, 3 too."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    never = prober("status")
    assert never.code == 3 and never.err == "prober: error: no run recorded yet (hint: is " \
        "prober.timer or prober-watch running?)\n", never
    assert prober("check").code == 0
    data = json.loads(prober.state.read_text())
    long_ago = time.time() - 3600
    data["updated_at"] = long_ago
    prober.state.write_text(json.dumps(data))
    beat = prober.state.with_name(prober.state.name + ".last-run")
    os.utime(beat, (long_ago, long_ago))
    status = prober("status")
    assert status.code == 3, status
    assert status.err == ("prober: error: the last run was 1h ago, more than 5m: too old to "
                          "trust (hint: is prober.timer or prober-watch running?)\n")
    assert prober("status", "--json").json()["too_old"] is True


def test_a_target_added_since_the_last_run_is_unknown(prober: Prober, web: Server) -> None:
    """A target the last run did not judge (added since) makes status unknown, named in one
    error line; the next run judges it."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    assert prober("check").code == 0
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"',
                         f'name = "api"\nurl = "{web.url("/health")}"'))
    status = prober("status")
    assert status.code == 3 and status.err == ("prober: error: not judged by a run since added "
                                               "or reset: api\n"), status
    assert prober("check").code == 0
    assert prober("status").code == 0
