"""The exec probe kind against real commands: exit codes, output, environment, deadline."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from prober.core.config import RestartRules, Target, parse_config
from prober.core.results import FailureClass, ProbeResult
from prober.probes.exec import ExecProbe
from prober.probes.probing import probe_one

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 2.0
SH = "/bin/sh"


def exec_target(*command: str, timeout: float = TIMEOUT, **fields: Any) -> Target:
    policy = RestartRules(timeout=timeout)
    if "max_latency" in fields:
        policy = replace(policy, max_latency=fields.pop("max_latency"))
    return Target(name="cmd", probe=ExecProbe(command=command, **fields), policy=policy)


def run(target: Target) -> ProbeResult:
    return asyncio.run(probe_one(target))


CASES = [
    pytest.param(["/bin/true"], {}, None, "exit 0", id="true"),
    pytest.param(["/bin/false"], {}, FailureClass.EXIT, "exit 1, expected 0", id="false"),
    pytest.param(["/bin/false"], {"expect_exit": 1}, None, "exit 1", id="expected-exit"),
    pytest.param([SH, "-c", "echo boom >&2; exit 3"], {}, FailureClass.EXIT,
                 "exit 3, expected 0: boom", id="stderr-quoted"),
    pytest.param(["/bin/echo", "PONG"], {"expect_output": "PONG"}, None, "exit 0", id="output"),
    pytest.param(["/bin/echo", "LOADING"], {"expect_output": "PONG"}, FailureClass.OUTPUT,
                 'output does not contain "PONG": LOADING', id="output-missing"),
    pytest.param(["/bin/echo", "accepting connections"],
                 {"expect_output_regex": r"accepting\s+conn"}, None, "exit 0", id="regex"),
    pytest.param(["/bin/echo", "no response"], {"expect_output_regex": "^accepting"},
                 FailureClass.OUTPUT, "does not match /^accepting/", id="regex-missing"),
    pytest.param([SH, "-c", "kill -SEGV $$"], {}, FailureClass.EXIT, "killed by SIGSEGV",
                 id="signal"),
    pytest.param(["/nonexistent/command"], {}, FailureClass.EXEC,
                 "cannot run /nonexistent/command: no such file or directory", id="not-found"),
    pytest.param(["{tmp}/script"], {}, FailureClass.EXEC, "permission denied",
                 id="not-executable"),
    pytest.param(["/bin/cat"], {}, None, "exit 0", id="stdin-is-dev-null"),
    pytest.param([SH, "-c", "head -c 200000 /dev/zero | tr '\\0' x; echo PONG"],
                 {"expect_output": "PONG", "max_body": 1024}, FailureClass.TOO_LARGE,
                 'output over 1KiB and its first 1KiB does not contain "PONG"', id="too-large"),
    pytest.param([SH, "-c", "echo PONG; head -c 300000 /dev/zero"],
                 {"expect_output": "PONG", "max_body": 1024}, None, "exit 0",
                 id="large-output-found-early"),
    pytest.param([SH, "-c", 'test "$FOO" = bar && test -z "$PROBER_TEST_MARKER"'],
                 {"env": (("FOO", "bar"),)}, None, "exit 0", id="minimal-environment"),
    pytest.param([SH, "-c", "sleep 5"], {}, FailureClass.TIMEOUT, "no exit within 1s (killed)",
                 id="timeout"),
]


@pytest.mark.parametrize(("command", "fields", "failure", "reason"), CASES)
def test_exec(command: list[str], fields: dict[str, Any], failure: FailureClass | None,
              reason: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each command ends in the result the table expects, within its deadline."""
    monkeypatch.setenv("PROBER_TEST_MARKER", "must not leak into the command")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)  # not executable, not even by root
    command = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    timeout = 1.0 if failure is FailureClass.TIMEOUT else TIMEOUT
    started = time.monotonic()
    result = run(exec_target(*command, timeout=timeout, **fields))
    elapsed = time.monotonic() - started
    assert (result.failure, result.ok) == (failure, failure is None), result.reason
    assert reason in result.reason
    assert "\n" not in result.reason
    assert elapsed < timeout + 1


def test_max_latency_applies_to_commands() -> None:
    """A command that answers correctly but slower than max_latency fails as slow."""
    result = run(exec_target(SH, "-c", "sleep 0.3", max_latency=0.1))
    assert result.failure is FailureClass.SLOW
    assert result.reason == "slower than max_latency 100ms"


@pytest.mark.parametrize("where", ["absolute", "credential"])
def test_env_file_secrets_reach_the_command_and_nothing_else(
        tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """env_file lines (an absolute path or a systemd credential name) and env values reach the
    command; no value shows in a reason, an endpoint or `prober validate`."""
    from prober.shell.cli import run as cli

    secrets = tmp_path / "redis.env"
    secrets.write_text("# Redis\nREDISCLI_AUTH='s3cret'\n\nOTHER=x\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    env_file = str(secrets) if where == "absolute" else "redis.env"
    config = tmp_path / "prober.toml"
    config.write_text(
        "[[target]]\nname = \"cmd\"\n"
        "command = [\"/bin/sh\", \"-c\", \"echo $REDISCLI_AUTH $OTHER $TOKEN | sha256sum\"]\n"
        f"env_file = \"{env_file}\"\nenv = {{ TOKEN = \"t0ken\" }}\n"
        f"expect_output = \"{hashlib.sha256(b's3cret x t0ken' + bytes([10])).hexdigest()}\"\n")
    (target,) = parse_config(tomllib.loads(config.read_text())).targets
    result = run(target)
    assert result.ok, result.reason
    assert cli(["--insecure-config", "validate", "--config", str(config)]) == 0
    shown = capsys.readouterr().out + result.reason + target.endpoint
    assert "env {TOKEN = ***}" in shown
    assert "s3cret" not in shown and "t0ken" not in shown


def _env_file(path: Path, kind: str) -> None:
    """Make `path` the env_file of one ENV_FILE_FAULTS case."""
    if kind == "fifo":
        os.mkfifo(path, 0o600)  # no writer: a blocking open would wait for ever
    elif kind == "directory":
        path.mkdir()
    elif kind == "too-large":
        path.write_text("A=" + "x" * 70_000 + "\n")
    elif kind == "not-utf8":
        path.write_bytes(b"A=\xff\n")
    elif kind != "missing":
        path.write_text({"malformed": "just words\n", "ld-preload": "LD_PRELOAD=/tmp/evil.so\n",
                         "bash-env": "REDISCLI_AUTH=x\nBASH_ENV=/tmp/evil.sh\n"}.get(kind, "A=1\n"))
        path.chmod(0o666 if kind == "world-writable" else 0o640 if kind == "other-owner"
                   else 0o600)
        if kind == "other-owner":
            os.chown(path, 65534, 65534)


ENV_FILE_FAULTS = [
    ("missing", "no such file or directory"),
    ("malformed", "line 1 is not NAME=VALUE"),
    ("world-writable", "writable by group or others (mode 666)"),
    ("other-owner", "owned by uid 65534, not by root or the running user (uid 0)"),
    ("directory", "not a regular file (a directory)"),
    ("fifo", "not a regular file (a FIFO)"),
    ("too-large", "larger than 64KiB"),
    ("not-utf8", "not UTF-8 text"),
    ("ld-preload", "line 1: LD_PRELOAD chooses code that programs load; refused"),
    ("bash-env", "line 2: BASH_ENV chooses code that programs load; refused"),
]


@pytest.mark.parametrize(("kind", "problem"), ENV_FILE_FAULTS, ids=[k for k, _ in ENV_FILE_FAULTS])
def test_unusable_env_file_is_a_prober_fault(tmp_path: Path, kind: str, problem: str) -> None:
    """An env_file that is missing, unsafe, no regular file (a FIFO: at once, no hang) or that
    sets a variable choosing code to load is a prober fault naming the key and the file, never
    a failure of the target, and the command does not run."""
    if kind == "other-owner" and os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = tmp_path / "env"
    _env_file(path, kind)
    marker = tmp_path / "ran"
    result = run(exec_target(SH, "-c", f"touch {marker}", env_file=str(path)))
    assert result.failure is FailureClass.PROBER_FAULT, result
    assert result.reason == f"env_file {path}: {problem}"
    assert not marker.exists()


def test_credential_name_without_credentials_directory_is_a_prober_fault(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential name is never read from the current directory when
    $CREDENTIALS_DIRECTORY is not set."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "redis.env").write_text("A=1\n")
    result = run(exec_target("/bin/true", env_file="redis.env"))
    assert result.failure is FailureClass.PROBER_FAULT
    assert result.reason == ('env_file redis.env: "redis.env" is a credential name, but '
                             "$CREDENTIALS_DIRECTORY is not set")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie is dead: it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _all_dead(pids: list[int], within: float = 2.0) -> bool:
    """Whether every one of `pids` is dead, allowing SIGKILL its moment to land."""
    deadline = time.monotonic() + within
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


STUBBORN = (
    # A shell, a child and a grandchild, all ignoring SIGTERM, all writing their PIDs down.
    'trap "" TERM; echo $$ >> "$1"; '
    '(trap "" TERM; sleep 300 & echo $! >> "$1"; wait) & echo $! >> "$1"; '
    'sleep 300 & echo $! >> "$1"; wait'
)


def test_deadline_kills_the_whole_process_group(tmp_path: Path) -> None:
    """At the deadline every process of the command's group dies, children and grandchildren
    that ignore SIGTERM included, and the command itself leaves no zombie."""
    pids = tmp_path / "pids"
    started = time.monotonic()
    result = run(exec_target(SH, "-c", STUBBORN, "stubborn", str(pids), timeout=1.0))
    elapsed = time.monotonic() - started
    assert result.failure is FailureClass.TIMEOUT
    assert elapsed < 2.0
    recorded = [int(line) for line in pids.read_text().split()]
    assert len(recorded) == 4
    assert _all_dead(recorded)
    shell = Path(f"/proc/{recorded[0]}")  # the command itself: prober's child, reaped by it
    deadline = time.monotonic() + 2
    while shell.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not shell.exists()


def test_what_a_passing_command_leaves_behind_is_killed(tmp_path: Path) -> None:
    """A command that exits with a background child still in its group leaves nothing
    running: a health check must not accumulate processes run after run."""
    pids = tmp_path / "pids"
    result = run(exec_target(SH, "-c", 'sleep 300 & echo $! > "$1"; echo ok', "leaver",
                             str(pids), expect_output="ok"))
    assert result.ok, result.reason
    assert _all_dead([int(pids.read_text())])
