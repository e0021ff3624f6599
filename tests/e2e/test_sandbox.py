"""The sandbox harness itself: a real systemd, its bus, and the failure modes prober exists for."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.e2e import (
    SANDBOX_ROOT,
    booted_sandbox,
    new_workdir,
    require_sandbox,
    sandbox_history,
)
from tests.support.sandbox import (
    REPO,
    STANDIN,
    Sandbox,
    SandboxError,
    Stack,
    _remove_cgroup,
    free_ports,
    process_start_time,
)

pytestmark = pytest.mark.e2e

SLEEPER = textwrap.dedent("""\
    [Unit]
    Description=something to restart
    DefaultDependencies=no

    [Service]
    ExecStart=/bin/sleep infinity
""")


def _leftovers(pid_ns: str, init_pid: int, init_start: int) -> list[int]:
    """Live processes of a sandbox's pid namespace, found by the namespace's inode.

    The kernel reuses namespace inodes: if the namespace now has an init that is not the
    sandbox's PID 1, it is someone else's (say, a sandbox of a test run next door).
    """
    found = []
    with os.scandir("/proc") as entries:
        names = [entry.name for entry in entries if entry.name.isdigit()]
    for name in names:
        try:
            if os.readlink(f"/proc/{name}/ns/pid") != pid_ns:
                continue
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        start = process_start_time(int(name))
        if start is None:
            continue  # a zombie: dead, waiting for its parent
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if nspid.split()[-1] == "1" and (int(name), start) != (init_pid, init_start):
            return []
        found.append(int(name))
    return found


def test_boots_restarts_and_spares_host_tmp(sandbox_workdir: Path) -> None:
    """The sandbox boots, restarts a unit (new MainPID), and leaves the host's /tmp alone."""
    fd, name = tempfile.mkstemp(prefix="prober-e2e-marker-", dir="/tmp")
    os.close(fd)
    marker = Path(name)
    try:
        with booted_sandbox(sandbox_workdir) as box:
            assert box.boot_seconds < 15
            assert box.run(["test", "-e", str(marker)]).returncode == 1  # /tmp inside is private
            assert box.unit_property("sysinit.target", "LoadState") == "masked"
            box.write_unit("sleeper.service", SLEEPER)
            box.systemctl("start", "sleeper.service")
            box.wait_active("sleeper.service")
            first = box.main_pid("sleeper.service")
            box.systemctl("restart", "sleeper.service")
            box.wait_active("sleeper.service")
            second = box.main_pid("sleeper.service")
            assert 0 < first != second > 0
            cmdline = Path(f"/proc/{box.host_pid(second)}/cmdline").read_bytes()
            assert cmdline.startswith(b"/bin/sleep")
        assert not box.running
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


def test_units_need_default_dependencies_no(sandbox: Sandbox) -> None:
    """write_unit() refuses a unit with default dependencies: it would pull in sysinit.target."""
    with pytest.raises(SandboxError, match="DefaultDependencies=no"):
        sandbox.write_unit("bad.service", "[Service]\nExecStart=/bin/true\n")
    text = "[Service]\nExecStart=/bin/true\n"
    (sandbox.path("/run/systemd/system") / "raw.service").write_text(text)
    sandbox.systemctl("daemon-reload")
    done = sandbox.systemctl("start", "raw.service", check=False)
    assert done.returncode != 0
    assert "sysinit.target" in done.stderr


async def _active_state(bus_address: str, unit: str, method: str = "GetUnit") -> str:
    """ActiveState of `unit`, or the D-Bus error name if the Manager call fails."""
    from dbus_next.aio.message_bus import MessageBus
    from dbus_next.constants import BusType, MessageType
    from dbus_next.message import Message

    bus = await asyncio.wait_for(
        MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM).connect(), 5)
    try:
        reply: Any = await asyncio.wait_for(bus.call(Message(
            destination="org.freedesktop.systemd1",
            path="/org/freedesktop/systemd1",
            interface="org.freedesktop.systemd1.Manager",
            member=method,
            signature="s",
            body=[unit],
        )), 5)
        if reply.message_type == MessageType.ERROR:
            return str(reply.error_name)
        state: Any = await asyncio.wait_for(bus.call(Message(
            destination="org.freedesktop.systemd1",
            path=reply.body[0],
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=["org.freedesktop.systemd1.Unit", "ActiveState"],
        )), 5)
        assert state.message_type == MessageType.METHOD_RETURN, state.body
        return str(state.body[0].value)
    finally:
        # dbus-next shuts its socket down but never closes it (a ResourceWarning, an error here).
        bus.disconnect()  # type: ignore[no-untyped-call]
        await asyncio.wait_for(bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]
        bus._stream.close()
        bus._sock.close()


def test_dbus_next_from_outside(sandbox: Sandbox) -> None:
    """dbus-next on the host reaches the sandbox's systemd: GetUnit, then ActiveState."""
    sandbox.write_unit("sleeper.service", SLEEPER)
    sandbox.systemctl("start", "sleeper.service")
    assert asyncio.run(_active_state(sandbox.bus_address, "sleeper.service")) == "active"
    sandbox.systemctl("stop", "sleeper.service")
    # A stopped unit nothing refers to is unloaded: GetUnit fails where LoadUnit answers.
    assert asyncio.run(_active_state(sandbox.bus_address, "sleeper.service")) == (
        "org.freedesktop.systemd1.NoSuchUnit")
    assert asyncio.run(
        _active_state(sandbox.bus_address, "sleeper.service", "LoadUnit")) == "inactive"


def test_stack_and_its_two_failure_modes(sandbox: Sandbox, stack: Stack) -> None:
    """caddy proxies the stand-in; SIGSTOP hangs it, unloading closes its port; both stay active."""
    with httpx.Client(timeout=2.0) as client:
        assert client.get(f"{stack.caddy_url}/health").text == "OK"
        assert client.get(f"{stack.backend_url}/api/v1/streaming/health").text == "OK"
        stack.fail_file.touch()
        assert client.get(f"{stack.caddy_url}/health").status_code == 500
        stack.fail_file.unlink()

        # Frozen: the kernel still accepts connections, nothing ever answers.
        sandbox.systemctl("kill", "--signal=SIGSTOP", stack.caddy_unit)
        try:
            with pytest.raises(httpx.ReadTimeout):
                client.get(f"{stack.caddy_url}/health")
            assert sandbox.systemctl("is-active", stack.caddy_unit).stdout.strip() == "active"
        finally:
            sandbox.systemctl("kill", "--signal=SIGCONT", stack.caddy_unit)
        assert client.get(f"{stack.caddy_url}/health").text == "OK"

        # Unloaded: the process is up and `active`, the port refuses connections (a fresh
        # connection: the client's kept-alive one is merely closed by the unload).
        client.post(f"{stack.admin_url}/load", json=stack.empty_config).raise_for_status()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{stack.caddy_url}/health", timeout=2.0, trust_env=False)
        assert sandbox.systemctl("is-active", stack.caddy_unit).stdout.strip() == "active"

        # What prober does about it: a restart brings the site back.
        sandbox.systemctl("restart", stack.caddy_unit)
        sandbox.wait_port(stack.caddy_port)
        assert client.get(f"{stack.caddy_url}/health").text == "OK"


def _top_dir_under_tmp(path: Path) -> set[str]:
    parts = path.resolve().parts
    return {parts[2]} if len(parts) > 2 and parts[1] == "tmp" else set()


def test_paths_under_tmp_are_shared() -> None:
    """A work directory and a checkout under the host's /tmp are visible inside at the same path."""
    require_sandbox()
    with tempfile.TemporaryDirectory(prefix="prober-e2e-", dir="/tmp") as name:
        top = Path(name)
        checkout = top / "checkout"
        checkout.mkdir()
        script = checkout / "hello.py"
        script.write_text("import pathlib, sys\npathlib.Path(sys.argv[1]).write_text('hello')\n")
        workdir = top / "work"
        workdir.mkdir()
        out = workdir / "out.txt"
        with booted_sandbox(workdir, share=[checkout]) as box:
            # Inside, /tmp is empty but for the way to the shared folders (and to this
            # checkout, when it lives under /tmp too).
            expected = {top.name} | _top_dir_under_tmp(REPO)
            assert set(box.run(["ls", "-A", "/tmp"]).stdout.split()) == expected  # noqa: S108
            box.write_service("hello.service", [sys.executable, str(script), str(out)],
                              type="oneshot")
            box.systemctl("start", "hello.service")
            assert out.read_text() == "hello"
            assert box.unit_property("hello.service", "Result") == "success"
        assert script.exists()
        assert sorted(p.name for p in top.iterdir()) == ["checkout", "work"]


def test_unprivileged_user_needs_polkit_rule(sandbox_workdir: Path) -> None:
    """A user that exists only inside runs the venv's Python; polkit decides its restarts."""
    with booted_sandbox(sandbox_workdir, users=["prober"]) as box:
        box.write_unit("sleeper.service", SLEEPER)
        box.systemctl("start", "sleeper.service")
        done = box.run([sys.executable, "-c", "import os, httpx; print(os.getuid())"],
                       user="prober", check=True)
        assert int(done.stdout) != 0
        denied = box.run(["systemctl", "restart", "sleeper.service"], user="prober")
        assert denied.returncode != 0
        assert "Access denied" in denied.stderr or "authentication" in denied.stderr, denied
        box.write_polkit_rule("50-prober.rules", textwrap.dedent("""\
            polkit.addRule(function(action, subject) {
                if (action.id == "org.freedesktop.systemd1.manage-units" &&
                    subject.user == "prober" && action.lookup("verb") == "restart") {
                    return polkit.Result.YES;
                }
            });
        """))
        before = box.main_pid("sleeper.service")
        for _ in range(50):  # polkitd notices new rules by itself, not instantly
            if box.run(["systemctl", "restart", "sleeper.service"], user="prober").returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the polkit rule never took effect")
        assert box.main_pid("sleeper.service") != before


def test_stop_kills_a_frozen_sandbox(sandbox_workdir: Path) -> None:
    """stop() SIGKILLs a sandbox whose systemd does not answer, and its namespace dies with it."""
    with booted_sandbox(sandbox_workdir) as box:
        box.write_unit("sleeper.service", SLEEPER)
        box.systemctl("start", "sleeper.service")
        pid_ns = os.readlink(f"/proc/{box.pid}/ns/pid")
        os.kill(box.pid, signal.SIGSTOP)  # from the parent namespace, PID 1 can be stopped
        began = time.monotonic()
        box.stop(timeout=1)
        assert time.monotonic() - began < 5
        assert not box.running
        assert _leftovers(pid_ns, box.pid, box.pid_start_time) == []


def test_failed_start_leaves_nothing(sandbox_workdir: Path) -> None:
    """A sandbox that cannot boot raises SandboxError and leaves no process or cgroup behind."""
    require_sandbox()
    box = Sandbox(sandbox_workdir, share=[Path("/var")])  # would hide what it shares
    with pytest.raises(SandboxError, match="hides"):
        box.start()
    assert not box.running
    assert not list(Path("/sys/fs/cgroup").rglob(f"prober-sandbox-{os.getpid()}-*"))
    box.stop()  # idempotent


_CRASHER = """\
import sys, time
from pathlib import Path
from tests.support.sandbox import Sandbox
box = Sandbox(Path(sys.argv[1]))
box.start()
print(box.pid, flush=True)
time.sleep(300)
"""


def test_a_crashed_test_run_leaves_nothing(sandbox_workdir: Path) -> None:
    """If the process that started a sandbox is SIGKILLed, the sandbox dies with it."""
    require_sandbox()
    with subprocess.Popen([sys.executable, "-c", _CRASHER, str(sandbox_workdir)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True) as runner:
        assert runner.stdout is not None
        pid = int(runner.stdout.readline())
        start = process_start_time(pid)
        assert start is not None
        pid_ns = os.readlink(f"/proc/{pid}/ns/pid")
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 10
    while process_start_time(pid) == start or _leftovers(pid_ns, pid, start):
        assert time.monotonic() < deadline, "the sandbox outlived the process that started it"
        time.sleep(0.05)
    for stale in Path("/sys/fs/cgroup").rglob(f"prober-sandbox-{runner.pid}-*"):
        _remove_cgroup(stale)


def test_nothing_outlives_a_sandbox() -> None:
    """After teardown no process of any sandbox remains: PID 1 and its whole namespace are gone."""
    workdir = new_workdir("leftovers")
    try:
        with booted_sandbox(workdir) as box:
            port, = free_ports(1)
            box.write_service("standin.service",
                              [sys.executable, str(STANDIN), "--port", str(port)])
            box.write_unit("sleeper.service", SLEEPER)
            box.systemctl("start", "standin.service", "sleeper.service")
            box.systemctl("kill", "--signal=SIGSTOP", "sleeper.service")
            box.run(["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 &"], check=True)
            with pytest.raises(SandboxError, match="timed out"):
                box.run(["sleep", "300"], timeout=0.5)
            pid_ns = os.readlink(f"/proc/{box.pid}/ns/pid")
            assert len(_leftovers(pid_ns, box.pid, box.pid_start_time)) >= 4
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    records = sandbox_history()
    assert records and records[-1].pid == box.pid
    for record in records:  # this one, and every sandbox the fixtures booted before it
        assert process_start_time(record.pid) != record.start_time, f"{record.pid} still runs"
        assert _leftovers(record.pid_ns, record.pid, record.start_time) == [], (
            f"leftovers of sandbox {record.pid}")
    assert not list(Path("/sys/fs/cgroup").rglob(f"prober-sandbox-{os.getpid()}-*"))
    assert SANDBOX_ROOT.exists()
