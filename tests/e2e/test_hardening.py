"""The sandboxing of the shipped units, for real: what it still lets prober do (probe loopback,
run exec probes, read memory pressure, write a readable textfile) and what it stops.

Each case runs its command as the ExecStart= of a verbatim copy of the shipped unit, with the
drop-in tests/support/deploy.py adds for the sandbox, and compares with the same command run as the
same user outside the unit: a difference is the doing of a hardening line.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy import UNITS, install
from tests.support.e2e import booted_sandbox
from tests.support.needs import need, need_program
from tests.support.sandbox import REPO, Sandbox, free_ports, systemd_quote

pytestmark = pytest.mark.e2e

SERVICES = ("prober.service", "prober-watch.service")
UNIT_VIEW = REPO / "tests" / "support" / "unit_view.py"


@pytest.fixture
def box(sandbox_workdir: Path) -> Iterator[Sandbox]:
    """A sandbox with a `prober` system user, and `probed` for the services it watches."""
    with booted_sandbox(sandbox_workdir, users=["prober", "probed"]) as sandbox:
        yield sandbox


def outward_address() -> str:
    """This host's own non-loopback IPv4 address (no packet leaves: UDP connect only routes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("203.0.113.1", 9))
        except OSError:
            need(False, "a non-loopback IPv4 address with a route (to test IPAddressDeny=)")
        address = str(sock.getsockname()[0])
    need(not address.startswith("127."), "a non-loopback IPv4 address (to test IPAddressDeny=)")
    return address


def run_as_shipped(box: Sandbox, service: str, argv: Sequence[str], *,
                   override: str | None = None) -> str:
    """Run `argv` under a verbatim copy of the shipped `service`; return its stdout.

    Only what makes a command a oneshot changes (Type=, Restart=, WatchdogSec=, ExecStart=); every
    sandboxing line is the shipped one, plus the sandbox's own drop-in from tests/support/deploy.py.
    `override`: an operator's drop-in, where `systemctl edit` would write it.
    """
    copy = service.replace(".service", "-as-shipped.service")
    etc = box.path("/etc/systemd/system")
    etc.joinpath(copy).write_text((UNITS / service).read_text())
    if override is not None:
        etc.joinpath(f"{copy}.d").mkdir(exist_ok=True)
        etc.joinpath(f"{copy}.d", "override.conf").write_text(override)
    adaptation = box.path(f"/run/systemd/system/{service}.d/sandbox.conf").read_text()
    box.write_unit(f"{copy}.d/sandbox.conf", adaptation, reload=False)
    out = box.workdir / f"{copy}.out"
    out.write_text("")
    box.write_unit(f"{copy}.d/zz-oneshot.conf", f"""\
[Unit]
# An empty condition resets them all (a packaged unit may wait for /etc/prober/prober.toml).
ConditionPathExists=

[Service]
Type=oneshot
Restart=no
WatchdogSec=0
ExecStart=
ExecStart={systemd_quote(argv)}
StandardOutput=truncate:{out}
""")
    done = box.systemctl("start", copy, check=False)
    assert done.returncode == 0, (
        f"{copy} failed: {done.stderr}\n"
        + box.systemctl("status", "--no-pager", copy, check=False).stdout
        + box.console_tail(30))
    return out.read_text()


def view(box: Sandbox, request: dict[str, Any], service: str | None,
         override: str | None = None) -> dict[str, Any]:
    """tests/support/unit_view.py's report, under a copy of `service`, or outside any unit as
    `prober`."""
    argv = [sys.executable, str(UNIT_VIEW), json.dumps(request)]
    if service is None:
        done = box.run(argv, user="prober", check=True, timeout=60)
        return dict(json.loads(done.stdout))
    return dict(json.loads(run_as_shipped(box, service, argv, override=override)))


def memory_signals(box: Sandbox, unit: str) -> list[str]:
    """Where the memory-pressure report looks for `unit`: host PSI, the unit's cgroup files in
    either hierarchy, its main process's /proc entries."""
    cgroup = box.unit_property(unit, "ControlGroup")
    pid = box.main_pid(unit)
    return [
        "/proc/pressure/memory",
        "/proc/meminfo",
        f"/sys/fs/cgroup{cgroup}/memory.pressure",
        f"/sys/fs/cgroup{cgroup}/memory.stat",
        f"/sys/fs/cgroup/unified{cgroup}/memory.pressure",
        f"/sys/fs/cgroup/memory{cgroup}/memory.stat",
        f"/proc/{pid}/status",
        f"/proc/{pid}/statm",
        f"/proc/{pid}/cgroup",
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_hardened_unit_runs_exec_probes_and_sees_memory_pressure(
        box: Sandbox, service: str) -> None:
    """Under the shipped unit's sandboxing, as `prober`: redis-cli and pg_isready (a Perl
    wrapper) run as exec probes do, loopback connects, and every memory signal `prober` can read
    outside the unit stays readable, other addresses too (no IP filter by default); filtered
    system calls fail with EPERM, and new files are private."""
    redis_server = need_program("/usr/bin/redis-server", "redis-server")
    redis_cli = need_program("/usr/bin/redis-cli", "redis-tools")
    pg_isready = need_program("/usr/bin/pg_isready", "postgresql-client")
    pgrep = need_program("/usr/bin/pgrep", "procps")
    elsewhere = outward_address()
    redis_port, silent_port, closed_port = free_ports(3)
    box.write_service("redis.service", [
        redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(box.workdir)], user="probed")
    box.systemctl("start", "redis.service")
    box.wait_port(redis_port)
    install(box, '[[target]]\nname = "x"\nurl = "http://127.0.0.1:1/"\n')
    state_dir = box.workdir / "prober-state"
    request = {
        "read": memory_signals(box, "redis.service"),
        "connect": [["127.0.0.1", redis_port], [elsewhere, closed_port]],
        "send_udp": [["127.0.0.1", closed_port], [elsewhere, closed_port]],
        "exec": [[redis_cli, "-h", "127.0.0.1", "-p", str(redis_port), "ping"],
                 [pg_isready, "-h", "127.0.0.1", "-p", str(silent_port), "-t", "5"],
                 [pgrep, "-u", "probed", "-x", "redis-server"]],
        "write_dir": str(state_dir),
    }
    outside = view(box, request, None)
    inside = view(box, request, service)

    assert inside["uid"] == outside["uid"] != 0
    redis, pg, by_owner = inside["exec"]
    assert (redis["rc"], redis["stdout"].strip()) == (0, "PONG"), redis
    assert pg["rc"] == 2 and "no response" in pg["stdout"], pg  # it ran: nothing listens there
    # other users' processes keep their owners (PrivateUsers= would show them as nobody)
    assert by_owner["stdout"].split() == [str(box.main_pid("redis.service"))], by_owner
    assert inside["exec"] == outside["exec"]
    readable = [path for path, how in outside["read"].items() if how == "ok"]
    assert "/proc/pressure/memory" in readable or not Path("/proc/pressure/memory").exists()
    assert f"/proc/{box.main_pid('redis.service')}/status" in readable
    assert any(path.endswith("/memory.pressure") for path in readable)  # per-unit PSI
    assert {path: inside["read"][path] for path in readable} == dict.fromkeys(readable, "ok")
    assert inside["connect"][f"127.0.0.1:{redis_port}"] == "ok"
    assert inside["send_udp"][f"127.0.0.1:{closed_port}"] == "ok"
    # no IP filter as shipped: a non-loopback address is refused (nothing listens), not dropped
    assert outside["connect"][f"{elsewhere}:{closed_port}"] == "ECONNREFUSED"
    assert inside["connect"][f"{elsewhere}:{closed_port}"] == "ECONNREFUSED"
    assert inside["send_udp"][f"{elsewhere}:{closed_port}"] == "ok"
    # SystemCallFilter=~@resources with SystemCallErrorNumber=EPERM: an error, not SIGSYS
    assert (outside["filtered_call"], inside["filtered_call"]) == ("ok", "EPERM")
    assert inside["created_mode"] == "0o600"  # UMask=0077


def test_prober_under_the_shipped_unit_reads_psi_and_writes_a_readable_textfile(
        box: Sandbox) -> None:
    """`prober check --json` under the shipped prober.service: the run's JSON carries
    memory_pressure, the Prometheus textfile stays world-readable despite UMask=0077, and a
    target on a non-loopback address is reached (refused: nothing listens), not silently
    dropped."""
    need(Path("/proc/pressure/memory").exists(), "PSI (/proc/pressure/memory) in this kernel")
    elsewhere = outward_address()
    (closed_port,) = free_ports(1)
    state_dir = box.workdir / "prober-state"
    textfile = state_dir / "prober.prom"
    install(box, f"""\
textfile = "{textfile}"

[[target]]
name = "remote"
url = "http://{elsewhere}:{closed_port}/health"
timeout = "2s"
""")
    out = run_as_shipped(box, "prober.service",
                         ["/usr/local/bin/prober", "check", "--json", "--dry-run"])
    report = json.loads(out)
    assert isinstance(report["memory_pressure"], dict), report
    assert {"some_avg10", "full_avg10"} <= set(report["memory_pressure"])
    (target,) = report["targets"]
    assert (target["ok"], target["failure"]) == (False, "refused"), target
    assert textfile.stat().st_mode & 0o777 == 0o644
    assert "prober_memory_pressure_some_avg10" in textfile.read_text()


def test_an_operator_drop_in_closes_the_network(box: Sandbox) -> None:
    """docs/operating.md's "Closing the network" drop-in works: with IPAddressDeny=any and
    IPAddressAllow=localhost, loopback still connects, while a non-loopback address is dropped
    (a connect times out) and a datagram to it is not permitted."""
    elsewhere = outward_address()
    (closed_port,) = free_ports(1)
    install(box, '[[target]]\nname = "x"\nurl = "http://127.0.0.1:1/"\n')
    request = {"connect": [[elsewhere, closed_port], ["127.0.0.1", closed_port]],
               "send_udp": [[elsewhere, closed_port]]}
    override = "[Service]\nIPAddressDeny=any\nIPAddressAllow=localhost\n"
    closed = view(box, request, "prober.service", override)
    assert closed["connect"] == {f"{elsewhere}:{closed_port}": "timeout",
                                 f"127.0.0.1:{closed_port}": "ECONNREFUSED"}
    assert closed["send_udp"] == {f"{elsewhere}:{closed_port}": "EPERM"}
