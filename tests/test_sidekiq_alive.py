"""examples/sidekiq-alive: its decision as tables, then the real command against a real Redis.

The command runs as prober's exec probe will run it: the executable itself (its shebang), with
only PATH and LANG (plus REDISCLI_AUTH where a test says so). The Sidekiq side is
tests/support/sidekiq_standin.py, which writes Sidekiq's own layouts (6.0, 6.5, 7).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import stop_process
from tests.support.redis_server import RedisServer, redis_server
from tests.support.servers import refused_port
from tests.support.sidekiq_standin import SIDEKIQ_ALIVE, load_sidekiq_alive

SA = load_sidekiq_alive()
STANDIN = Path(__file__).parent / "support" / "sidekiq_standin.py"
NOW = 1_700_000_000.0
HOST = socket.gethostname()


# --- the decision, as tables ----------------------------------------------------------------


def proc(identity: str = "web1:100:aaa", *, hostname: str = "web1", tag: str = "live",
         queues: tuple[str, ...] = ("default", "push"), concurrency: int = 5, busy: int = 0,
         age: float = 2.0, quiet: bool = False) -> Any:
    return SA.Process(identity=identity, hostname=hostname, tag=tag, queues=queues,
                      concurrency=concurrency, busy=busy, beat=NOW - age, quiet=quiet)


def jobs(*started_ago: float, job_class: str = "MediaWorker") -> list[Any]:
    return [SA.Work(run_at=NOW - ago, queue="default", job_class=job_class)
            for ago in started_ago]


STUCK = proc(busy=5, age=1)
STUCK_WORK = {STUCK.identity: jobs(900, 800, 750, 720, 701)}

DECIDE_CASES = [
    # id, processes, expired, works, selector, limits, ok, expected line
    ("nothing", [], 0, {}, {}, {}, False, "no Sidekiq process in Redis"),
    ("only-expired", [], 2, {}, {}, {}, False,
     "no Sidekiq process in Redis (2 listed whose heartbeat record expired: "
     "died, or stopped beating, a minute or more ago)"),
    ("fresh", [proc()], 0, {}, {}, {}, True,
     "sidekiq web1:100:aaa beat 2s ago, 0 of 5 threads busy"),
    ("stale", [proc(age=45)], 0, {}, {}, {}, False,
     "heartbeat of sidekiq web1:100:aaa is 45s old (max 30s)"),
    ("freshest-counts", [proc("web1:1:old", age=50), proc("web1:2:new", age=3)], 0, {}, {}, {},
     True, "sidekiq web1:2:new beat 3s ago"),
    ("all-stale", [proc("web1:1:a", age=50), proc("web1:2:b", age=40)], 0, {}, {}, {}, False,
     "heartbeat of the newest of 2 Sidekiq processes (web1:2:b) is 40s old (max 30s)"),
    ("several-live", [proc("web1:1:a", busy=2), proc("web1:2:b", busy=3, age=1)], 0, {}, {}, {},
     True, "2 Sidekiq processes beating, newest 1s ago, 5 of 10 threads busy"),
    ("other-tag", [proc(tag="other")], 0, {}, {"tag": "live"}, {}, False,
     "no Sidekiq process with tag=live in Redis (1 other(s) present)"),
    ("other-host-ignored", [proc("web2:1:a", hostname="web2"), proc(age=60)], 0, {},
     {"hostname": "web1"}, {}, False, "heartbeat of sidekiq web1:100:aaa is 1m old"),
    ("by-queue", [proc("web1:1:a", queues=("pull",), age=90), proc("web1:2:b", age=4)], 0, {},
     {"queue": "pull"}, {}, False, "heartbeat of sidekiq web1:1:a is 1m30s old"),
    ("max-age", [proc(age=45)], 0, {}, {}, {"max_age": 60.0}, True, "beat 45s ago"),
    ("clock-ahead", [proc(age=-5)], 0, {}, {}, {}, True, "beat 0s ago"),
    ("quiet", [proc(quiet=True)], 0, {}, {}, {}, True, "0 of 5 threads busy, 1 quiet"),
    ("stuck-too-long", [STUCK], 0, STUCK_WORK, {}, {"max_busy": 600.0}, False,
     "all 5 threads of sidekiq web1:100:aaa busy for at least 11m40s (max 10m): 5 x MediaWorker"),
    ("stuck-exactly-max", [STUCK], 0, STUCK_WORK, {}, {"max_busy": 700.0}, False,
     "busy for at least 11m40s (max 11m40s)"),
    ("stuck-not-long-enough", [STUCK], 0, STUCK_WORK, {}, {"max_busy": 701.0}, True,
     "5 of 5 threads busy"),
    ("stuck-but-not-checked", [STUCK], 0, STUCK_WORK, {}, {}, True, "5 of 5 threads busy"),
    ("busy-briefly", [STUCK], 0, {STUCK.identity: jobs(900, 800, 750, 720, 30)}, {},
     {"max_busy": 600.0}, True, "5 of 5 threads busy"),
    ("one-thread-free", [proc(busy=4, age=1)], 0, {"web1:100:aaa": jobs(900, 800, 750, 720)}, {},
     {"max_busy": 600.0}, True, "4 of 5 threads busy"),
    ("work-list-shows-a-free-thread", [STUCK], 0, {STUCK.identity: jobs(900, 800, 750, 720)}, {},
     {"max_busy": 600.0}, True, "5 of 5 threads busy"),
    ("stale-process-not-blamed-for-threads", [proc("web1:1:old", busy=5, age=50), proc()], 0,
     {"web1:1:old": jobs(900, 900, 900, 900, 900)}, {}, {"max_busy": 60.0}, True,
     "sidekiq web1:100:aaa beat 2s ago"),
    ("job-classes-summarised", [STUCK], 0,
     {STUCK.identity: [*jobs(900, 800, job_class="A"), *jobs(750, job_class="B"),
                       *jobs(720, job_class="C"), *jobs(701, job_class="D")]},
     {}, {"max_busy": 600.0}, False, ": 2 x A, 1 x B, 1 x C, ..."),
]


@pytest.mark.parametrize(
    ("processes", "expired", "works", "selector", "limits", "ok", "line"),
    [pytest.param(*case[1:], id=case[0]) for case in DECIDE_CASES],
)
def test_decide(processes: list[Any], expired: int, works: dict[str, list[Any]],
                selector: dict[str, str], limits: dict[str, float], ok: bool, line: str) -> None:
    """Each Redis snapshot gets the verdict and the one line in the table."""
    outcome = SA.decide(SA.Snapshot(tuple(processes), expired), works, SA.Selector(**selector),
                        NOW, SA.Limits(**{"max_age": 30.0, **limits}))
    assert outcome.ok is ok, outcome.line
    assert line in outcome.line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", {"host": "127.0.0.1", "port": 6379, "db": 0}),
        ("redis://redis.internal", {"host": "redis.internal", "port": 6379, "db": 0}),
        ("redis://[::1]:7000/3", {"host": "::1", "port": 7000, "db": 3}),
        ("redis://127.0.0.1:6379?db=4", {"db": 4}),
        ("unix:///run/redis/redis-server.sock", {"path": "/run/redis/redis-server.sock", "db": 0}),
        ("unix:///run/redis.sock?db=2", {"path": "/run/redis.sock", "db": 2}),
        ("redis://mastodon:p%40ss@h:1/0", {"username": "mastodon", "password": "p@ss"}),
        ("redis://:pw@h", {"username": None, "password": "pw"}),
        ("unix://:pw@/run/redis.sock", {"path": "/run/redis.sock", "password": "pw"}),
    ],
)
def test_redis_urls(url: str, expected: dict[str, object]) -> None:
    """Redis URLs as redis-py and Sidekiq write them give the address to connect to."""
    address = SA.parse_redis_url(url)
    assert {key: getattr(address, key) for key in expected} == expected
    assert "pw" not in repr(address) and "p@ss" not in address.describe()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1/", "must start with redis:// or unix://"),
        ("rediss://:hunter2@h:6380/0", "TLS"),
        ("redis://:hunter2@h:99999/0", "not a valid URL"),
        ("redis://:hunter2@h:6379/zero", "the database must be a number"),
        ("redis:///0", "has no host"),
        ("unix://:hunter2@relative.sock", "absolute socket path"),
    ],
)
def test_bad_redis_urls(url: str, message: str) -> None:
    """A bad URL is one usage error that never repeats the password."""
    with pytest.raises(SA.UsageError, match=message) as caught:
        SA.parse_redis_url(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0),
     ("1d", 86400.0), ("2.5s", 2.5)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations are spelled as in prober's config."""
    assert SA.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 m", "5x", "m5", "-1s", "1h foo"])
def test_bad_durations(text: str) -> None:
    """Anything else is a usage error."""
    with pytest.raises(SA.UsageError, match="is not a duration"):
        SA.parse_duration(text)


# --- the command ----------------------------------------------------------------------------


def run_check(*args: str, env: dict[str, str] | None = None,
              timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the executable as an exec probe would: its shebang, a minimal environment."""
    return subprocess.run([str(SIDEKIQ_ALIVE), *args],
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def standin_once(url: str, *args: str, env: dict[str, str] | None = None) -> str:
    """One heartbeat written by the stand-in; its identity."""
    done = subprocess.run([sys.executable, str(STANDIN), "--redis-url", url, "--once", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


@contextlib.contextmanager
def standin(url: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A stand-in beating in the background, stopped by its PID afterwards."""
    proc = subprocess.Popen([sys.executable, str(STANDIN), "--redis-url", url, *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        identity = proc.stdout.readline().strip()
        assert identity, "the stand-in did not start"
        yield proc, identity
    finally:
        stop_process(proc)


def wait_for(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def test_help_says_how_to_choose_the_busy_time() -> None:
    """--help explains the checks and how to choose --max-busy, and exits 0."""
    done = run_check("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "longer than your longest legitimate job" in text
    assert "REDISCLI_AUTH" in text and "--max-age" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-age", "soon"], '"soon" is not a duration'),
        (["--max-busy", "0s"], "must be longer than zero"),
        (["--redis-url", "rediss://:hunter2@h/0"], "TLS"),
        (["--hostname", "a", "--this-host"], "not allowed with argument"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    """A bad command line is exit 2 with a reason on stderr, and never shows a password."""
    done = run_check(*args)
    assert done.returncode == 2
    assert message in done.stderr and "hunter2" not in done.stderr + done.stdout
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("layout", "namespace"),
    [("7", ""), ("6.5", ""), ("6.0", ""), ("6.5", "mastodon"), ("6.0", "mastodon")],
)
def test_fresh_heartbeat_passes(redis: RedisServer, layout: str, namespace: str) -> None:
    """A fresh beat passes, in the layouts of Sidekiq 6.0, 6.5 and 7, with a namespace in 6."""
    identity = standin_once(redis.url, "--layout", layout, "--namespace", namespace,
                            "--concurrency", "25", "--busy", "3")
    done = run_check("--redis-url", redis.url, "--namespace", namespace, "--this-host")
    assert done.returncode == 0, done.stdout + done.stderr
    assert one_line(done).startswith(f"OK: sidekiq {identity} beat ")
    assert "3 of 25 threads busy" in done.stdout
    if namespace:
        missed = run_check("--redis-url", redis.url)
        assert missed.returncode == 1 and "no Sidekiq process in Redis" in missed.stdout


def test_stale_heartbeat_fails(redis: RedisServer) -> None:
    """A beat older than --max-age fails, naming the process and the age."""
    identity = standin_once(redis.url, "--beat-age", "45")
    done = run_check("--redis-url", redis.url, "--max-age", "30s")
    assert done.returncode == 1
    assert one_line(done).startswith(f"FAILED: heartbeat of sidekiq {identity} is 4")
    assert "old (max 30s)" in done.stdout
    assert run_check("--redis-url", redis.url, "--max-age", "1m").returncode == 0


def test_expired_record_counts_as_absent(redis: RedisServer) -> None:
    """An identity whose record expired (the process died) is no live process."""
    standin_once(redis.url, "--beat-age", "90")
    done = run_check("--redis-url", redis.url)
    assert done.returncode == 1
    assert one_line(done) == ("FAILED: no Sidekiq process in Redis (1 listed whose heartbeat "
                              "record expired: died, or stopped beating, a minute or more ago)")


def test_no_process_fails(redis: RedisServer) -> None:
    """An empty Redis (Sidekiq never started, or stopped cleanly) fails."""
    done = run_check("--redis-url", redis.url)
    assert done.returncode == 1
    assert one_line(done) == "FAILED: no Sidekiq process in Redis"


def test_selection_by_host_and_tag(redis: RedisServer) -> None:
    """Only the selected processes count: another host's or another tag's do not."""
    standin_once(redis.url, "--hostname", "elsewhere.example", "--tag", "live")
    mine = run_check("--redis-url", redis.url, "--this-host")
    assert mine.returncode == 1
    assert f"no Sidekiq process with hostname={HOST} in Redis (1 other(s) present)" in mine.stdout
    theirs = run_check("--redis-url", redis.url, "--hostname", "elsewhere.example", "--tag", "live")
    assert theirs.returncode == 0, theirs.stdout
    other_tag = run_check("--redis-url", redis.url, "--tag", "pull")
    assert other_tag.returncode == 1 and "with tag=pull" in other_tag.stdout


def test_heartbeat_that_stops_while_the_process_stays_up_fails(redis: RedisServer) -> None:
    """When beats stop but the process lives on, the check fails; a clean stop leaves nothing."""
    with standin(redis.url, "--beat-every", "0.1") as (proc, identity):
        args = ("--redis-url", redis.url, "--max-age", "1s", "--this-host")
        assert run_check(*args).returncode == 0
        proc.send_signal(signal.SIGUSR1)
        failed: list[subprocess.CompletedProcess[str]] = []

        def fails() -> bool:
            failed.append(run_check(*args))
            return failed[-1].returncode == 1

        assert wait_for(fails), failed[-1].stdout
        assert proc.poll() is None, "the stand-in must still be running"
        assert f"heartbeat of sidekiq {identity} is " in failed[-1].stdout
        assert "old (max 1s)" in failed[-1].stdout
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    gone = run_check(*args)
    assert gone.returncode == 1 and "no Sidekiq process with hostname=" in gone.stdout


@pytest.mark.parametrize("layout", ["7", "6.5", "6.0"])
def test_all_threads_busy_too_long_fails(redis: RedisServer, layout: str) -> None:
    """Every thread busy since longer than --max-busy fails, though the beat is fresh."""
    standin_once(redis.url, "--layout", layout, "--all-busy-since", str(time.time() - 900))
    done = run_check("--redis-url", redis.url, "--max-busy", "10m")
    assert done.returncode == 1
    line = one_line(done)
    assert line.startswith("FAILED: all 5 threads of sidekiq ")
    assert "busy for at least 15m" in line and "(max 10m): 5 x Standin::SlowJob" in line
    assert "standin-private-argument" not in line
    assert run_check("--redis-url", redis.url).returncode == 0  # not checked without --max-busy


def test_all_threads_busy_briefly_passes(redis: RedisServer) -> None:
    """Every thread busy for less than --max-busy passes."""
    standin_once(redis.url, "--all-busy-since", str(time.time() - 30))
    done = run_check("--redis-url", redis.url, "--max-busy", "10m")
    assert done.returncode == 0, done.stdout
    assert "5 of 5 threads busy" in one_line(done)


def test_threads_that_hang_while_beating_fail(redis: RedisServer) -> None:
    """Threads that all hang from some moment on fail once --max-busy has passed."""
    with standin(redis.url, "--beat-every", "0.1", "--concurrency", "3") as (proc, _):
        # Long enough for a loaded machine to see the busy, still passing, state first.
        args = ("--redis-url", redis.url, "--max-busy", "4s")
        assert run_check(*args).returncode == 0
        proc.send_signal(signal.SIGUSR2)
        assert wait_for(lambda: "3 of 3 threads busy" in run_check(*args).stdout)
        assert wait_for(lambda: run_check(*args).returncode == 1)
        assert proc.poll() is None


PASSWORD = "s3cret-pass"  # noqa: S105 (the test server's, made up here)


def test_password_from_rediscli_auth() -> None:
    """REDISCLI_AUTH authenticates; without it or with a wrong one: exit 2, no password shown."""
    with redis_server(password=PASSWORD) as redis:
        auth = {"REDISCLI_AUTH": PASSWORD}
        standin_once(redis.url, env=auth)
        good = run_check("--redis-url", redis.url, env=auth)
        assert good.returncode == 0, good.stdout
        missing = run_check("--redis-url", redis.url)
        assert missing.returncode == 2
        assert one_line(missing).startswith("ERROR: redis at 127.0.0.1:")
        assert "NOAUTH" in missing.stdout
        assert "(set REDISCLI_AUTH to the password)" in missing.stdout
        wrong = run_check("--redis-url", redis.url, env={"REDISCLI_AUTH": "not-it"})
        assert wrong.returncode == 2 and "refused the password" in one_line(wrong)
        in_url = run_check("--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0")
        assert in_url.returncode == 0, in_url.stdout
        for done in (good, missing, wrong, in_url):
            assert PASSWORD not in done.stdout + done.stderr
            assert "not-it" not in done.stdout + done.stderr


def test_unix_socket_and_database(redis: RedisServer) -> None:
    """A Unix socket works, and ?db=N selects the database Sidekiq uses."""
    standin_once(f"{redis.unix_url}?db=3")
    done = run_check("--redis-url", f"{redis.unix_url}?db=3")
    assert done.returncode == 0, done.stdout
    other_db = run_check("--redis-url", redis.unix_url)
    assert other_db.returncode == 1 and "no Sidekiq process" in other_db.stdout


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    held: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.1)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    held.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield int(listener.getsockname()[1])
        finally:
            stop.set()
            thread.join()
            for conn in held:
                conn.close()


def test_silent_server_times_out_cleanly() -> None:
    """A server that accepts and never answers is exit 2 at --timeout, one line."""
    with silent_server() as port:
        started = time.monotonic()
        done = run_check("--redis-url", f"redis://127.0.0.1:{port}/0", "--timeout", "1s")
        elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert one_line(done) == f"ERROR: redis at 127.0.0.1:{port} did not answer in time"
    assert elapsed >= 1.0  # it did wait for the answer, up to the timeout


def test_refused_connection_is_exit_2() -> None:
    """Nothing listening: exit 2, one line."""
    port = refused_port()
    done = run_check("--redis-url", f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 2
    assert one_line(done) == f"ERROR: redis at 127.0.0.1:{port}: connection refused"


def test_something_else_than_redis_is_exit_2() -> None:
    """A server speaking another protocol is exit 2, not a traceback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        done = run_check("--redis-url", f"redis://127.0.0.1:{port}/0")
        thread.join(timeout=10)
    assert done.returncode == 2
    assert one_line(done) == f"ERROR: 127.0.0.1:{port} does not speak Redis's protocol"


# --- the stand-in is faithful to Sidekiq ----------------------------------------------------

SIDEKIQ_FIELDS = {
    "7": {"info", "busy", "beat", "rtt_us", "quiet", "rss"},
    "6.5": {"info", "busy", "beat", "rtt_us", "quiet", "rss"},
    "6.0": {"info", "busy", "beat", "quiet"},
}
SIDEKIQ_INFO = {
    "7": ["hostname", "started_at", "pid", "tag", "concurrency", "queues", "weights", "labels",
          "identity", "version", "embedded"],
    "6.5": ["hostname", "started_at", "pid", "tag", "concurrency", "queues", "labels",
            "identity"],
    "6.0": ["hostname", "started_at", "pid", "tag", "concurrency", "queues", "labels",
            "identity"],
}


@pytest.mark.parametrize("layout", ["7", "6.5", "6.0"])
def test_standin_writes_what_sidekiq_writes(redis: RedisServer, layout: str) -> None:
    """Read with redis-cli, the stand-in's records have Sidekiq's keys, fields, types and TTLs."""
    identity = standin_once(redis.url, "--layout", layout, "--busy", "2")
    assert redis.cli("TYPE", "processes").strip() == "set"
    assert redis.cli("SMEMBERS", "processes").split() == [identity]
    assert 0 < int(redis.cli("TTL", identity)) <= 60
    values = redis.cli("HGETALL", identity).splitlines()
    record = dict(zip(values[::2], values[1::2], strict=True))
    assert set(record) == SIDEKIQ_FIELDS[layout]
    assert list(json.loads(record["info"])) == SIDEKIQ_INFO[layout]
    assert abs(float(record["beat"]) - time.time()) < 30
    assert record["busy"] == "2" and record["quiet"] == "false"
    work_key = f"{identity}:workers" if layout == "6.0" else f"{identity}:work"
    assert 0 < int(redis.cli("TTL", work_key)) <= 60
    work = redis.cli("HGETALL", work_key).splitlines()
    entries = [json.loads(value) for value in work[1::2]]
    assert len(entries) == 2
    for entry in entries:
        assert set(entry) == {"queue", "payload", "run_at"} and isinstance(entry["run_at"], int)
        payload = entry["payload"] if layout == "6.0" else json.loads(entry["payload"])
        assert payload["class"] == "Standin::SlowJob"
