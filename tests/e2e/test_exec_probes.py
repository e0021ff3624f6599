"""Exec probes for real, under the shipped units as the `prober` user, in a sealed systemd: the
Mastodon example's commands (redis-cli, pg_isready, sidekiq-alive) run under the hardened
sandbox, a Sidekiq whose heartbeat stops while its process stays up is restarted, and a check
command that hangs leaves nothing behind in the long-running watcher's cgroup."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy import Installed, install
from tests.support.e2e import booted_sandbox, wait_for
from tests.support.redis_server import RedisServer, redis_server
from tests.support.sandbox import REPO, Sandbox, free_ports

pytestmark = pytest.mark.e2e

SIDEKIQ_ALIVE = REPO / "examples" / "sidekiq-alive"
STANDIN = REPO / "tests" / "support" / "sidekiq_standin.py"
SIDEKIQ = "sidekiq.service"


@pytest.fixture
def box(sandbox_workdir: Path) -> Iterator[Sandbox]:
    with booted_sandbox(sandbox_workdir, users=["prober"]) as sandbox:
        yield sandbox


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A real redis-server on the host's loopback, which the sandbox shares."""
    with redis_server() as server:
        yield server


def mastodon_config(redis: RedisServer, silent_port: int) -> str:
    """The exec targets of examples/mastodon.toml, pointed at the test's Redis and a Postgres
    port where nothing listens."""
    return f"""\
[defaults]
timeout = "3s"
failure_threshold = 2
startup_grace = "0s"
cooldown = "1s"
verify_timeout = "10s"

[[target]]
name = "sidekiq"
command = ["{SIDEKIQ_ALIVE}", "--redis-url", "{redis.url}", "--hostname", "standin",
           "--max-age", "2s", "--timeout", "2s"]
unit = "{SIDEKIQ}"
depends_on = ["redis"]

[[target]]
name = "redis"
command = ["/usr/bin/redis-cli", "-h", "127.0.0.1", "-p", "{redis.port}", "ping"]
expect_output = "PONG"

[[target]]
name = "postgres"
command = ["/usr/bin/pg_isready", "--host", "127.0.0.1", "--port", "{silent_port}",
           "--timeout", "2"]
"""


def run_timer_service(box: Sandbox, installed: Installed) -> dict[str, dict[str, Any]]:
    """One run of the shipped prober.service (what the timer starts); the state it left."""
    box.systemctl("start", "prober.service")
    state = json.loads(installed.state.read_text())
    return dict(state["targets"])


def test_mastodon_exec_probes_run_under_the_shipped_unit_and_sidekiq_is_restarted(
        box: Sandbox, redis: RedisServer) -> None:
    """Under prober.service as shipped (User=prober, the syscall filter, NoNewPrivileges):
    sidekiq-alive and redis-cli pass, pg_isready runs and reports no server; then a Sidekiq
    whose heartbeats stop while its process stays up gets its unit restarted."""
    (silent,) = free_ports(1)
    box.write_service(SIDEKIQ, [sys.executable, str(STANDIN), "--redis-url", redis.url,
                                "--hostname", "standin", "--beat-every", "0.2"],
                      env={"PYTHONUNBUFFERED": "1"})
    box.systemctl("start", SIDEKIQ)
    wait_for(lambda: redis.cli("SCARD", "processes").strip() == "1", 10, "a first heartbeat")
    installed = install(box, mastodon_config(redis, silent))

    first = run_timer_service(box, installed)
    assert first["sidekiq"]["last_ok"] is True, first["sidekiq"]
    assert first["redis"]["last_ok"] is True, first["redis"]
    postgres = first["postgres"]
    assert (postgres["last_ok"], postgres["last_failure"]) == (False, "exit"), postgres
    assert "no response" in str(postgres["last_reason"])  # it ran: nothing listens there

    before = box.main_pid(SIDEKIQ)
    box.systemctl("kill", "--signal=SIGUSR1", SIDEKIQ)  # beats stop, the process stays
    (ident,) = redis.cli("SMEMBERS", "processes").split()
    wait_for(lambda: time.time() - float(redis.cli("HGET", ident, "beat")) > 2.5, 10,
             "the last heartbeat in Redis older than --max-age")
    assert box.main_pid(SIDEKIQ) == before
    for _ in range(2):  # failure_threshold
        state = run_timer_service(box, installed)
    sidekiq = state["sidekiq"]
    assert sidekiq["restarts_total"] == 1, sidekiq
    assert box.main_pid(SIDEKIQ) not in (0, before)
    reasons = " ".join(str(h["reason"]) for h in sidekiq["history"])
    assert "heartbeat" in reasons and "old" in reasons, reasons
    assert "answering again" in reasons
    log = installed.log.read_text()
    assert "job done" in log and "via systemctl" not in log


STUBBORN = (
    'trap "" TERM; echo $$ >> "$1"; '
    '(trap "" TERM; sleep 300 & echo $! >> "$1"; wait) & echo $! >> "$1"; '
    'sleep 300 & echo $! >> "$1"; wait'
)


def test_a_hung_check_command_leaves_nothing_in_the_watchers_cgroup(box: Sandbox) -> None:
    """Under the shipped prober-watch.service, a check command whose children ignore SIGTERM
    times out: its whole process group is killed and reaped, and the watcher's cgroup holds
    the watcher alone, run after run."""
    state_dir = box.workdir / "prober-state"
    pids = state_dir / "pids"
    installed = install(box, f"""\
interval = "1s"
[[target]]
name = "stuck"
command = ["/bin/sh", "-c", '{STUBBORN}', "stubborn", "{pids}"]
timeout = "1s"
""")
    box.systemctl("start", "prober-watch.service")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= 8, 20,
             "two runs of the stubborn command")
    first_run = [int(p) for p in pids.read_text().split()[:4]]

    def gone(pid: int) -> bool:
        return box.run(["test", "-e", f"/proc/{pid}"]).returncode != 0

    # The watcher lives on (its cgroup too): only prober can have ended them, and systemd
    # (PID 1 inside) reaped the orphans.
    wait_for(lambda: all(gone(pid) for pid in first_run), 5,
             "every process of the first run gone, zombies included")
    assert box.unit_property("prober-watch.service", "ActiveState") == "active"
    box.systemctl("stop", "prober-watch.service")
    log = installed.log.read_text()
    assert "no exit within 1s (killed)" in log, log[-2000:]
    assert box.unit_property("prober-watch.service", "Result") == "success"


SECRET_CHECK = ["/bin/sh", "-c", 'test "$REDISCLI_AUTH" = s3cret']


def test_secret_files_as_the_prober_user_of_the_shipped_unit(box: Sandbox) -> None:
    """Under prober.service as shipped (User=prober): an env_file owned root:prober 0640 reaches
    the command; a root-only 0600 file, which prober cannot read, is a prober fault, and its
    unit is never restarted however many runs see it."""
    box.write_service("dummy.service", ["/bin/sleep", "infinity"])
    box.systemctl("start", "dummy.service")
    before = box.main_pid("dummy.service")
    gid = box.run(["id", "-g", "prober"], check=True).stdout.strip()
    secrets = box.workdir / "secrets"
    secrets.mkdir()
    for name, group, mode in (("group.env", gid, 0o640), ("root-only.env", "0", 0o600)):
        path = secrets / name
        path.write_text("REDISCLI_AUTH=s3cret\n")
        box.run(["chown", f"0:{group}", str(path)], check=True)
        path.chmod(mode)
    command = json.dumps(SECRET_CHECK)
    installed = install(box, f"""\
[defaults]
failure_threshold = 1
startup_grace = "0s"

[[target]]
name = "group-readable"
command = {command}
env_file = "{secrets / 'group.env'}"

[[target]]
name = "root-only"
command = {command}
env_file = "{secrets / 'root-only.env'}"
unit = "dummy.service"
""")
    for _ in range(3):
        state = run_timer_service(box, installed)
    assert state["group-readable"]["last_ok"] is True, state["group-readable"]["last_reason"]
    fault = state["root-only"]
    assert (fault["last_failure"], fault["health"], fault["restarts_total"]) == \
        ("prober-fault", "unknown", 0), fault
    assert fault["last_reason"] == f"env_file {secrets / 'root-only.env'}: permission denied"
    assert box.main_pid("dummy.service") == before
