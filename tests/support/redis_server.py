"""A real redis-server (Debian's package) for tests: one per test, on loopback, nothing kept.

    with redis_server() as redis:            # or redis_server(password="...")
        run(..., "--redis-url", redis.url)   # redis://127.0.0.1:PORT/0; redis.unix_url too

Each server gets a free loopback port, a Unix socket in its own temporary folder, no RDB or AOF
persistence, and is stopped by its PID (SIGTERM, then SIGKILL) when the `with` ends. A machine
without redis-server skips the tests that need one, or fails them when $CI is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import stop_process
from tests.support.sandbox import free_ports

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server and how to reach it."""

    pid: int
    port: int
    socket_path: Path
    password: str | None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    def cli(self, *args: str) -> str:
        """redis-cli's raw output for one command (redis-tools' client, not our own)."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password
        done = subprocess.run([REDIS_CLI, "-p", str(self.port), "--raw", *args], env=env,
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout


def require_redis() -> None:
    """Skip (or, with $CI set, fail) when redis-server or redis-cli is missing."""
    missing = [path for path in (REDIS_SERVER, REDIS_CLI) if not os.access(path, os.X_OK)]
    if not missing:
        return
    message = f"needs {' and '.join(missing)} (Debian: redis-server, redis-tools)"
    if os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _answers(path: Path) -> bool:
    """Does the server behind this socket answer a PING (even with NOAUTH)?"""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


@contextlib.contextmanager
def redis_server(*, password: str | None = None, attempts: int = 5) -> Iterator[RedisServer]:
    """Start redis-server on a free loopback port and a private socket; stop it afterwards."""
    require_redis()
    # Short path: a Unix socket's path must fit in 108 bytes, pytest's tmp_path may not.
    folder = Path(tempfile.mkdtemp(prefix="redis-"))
    try:
        for _ in range(attempts):
            (port,) = free_ports(1)
            sock = folder / "redis.sock"
            argv = [
                REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                "--unixsocket", str(sock), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(folder),
                "--daemonize", "no", "--logfile", str(folder / "redis.log"),
            ]
            if password is not None:
                argv += ["--requirepass", password]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline and not _answers(sock):
                time.sleep(0.02)
            if proc.poll() is None and _answers(sock):
                break
            stop_process(proc)  # most likely someone took the port in between: try another
        else:
            log = (folder / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server did not start:\n{log}")
        try:
            yield RedisServer(pid=proc.pid, port=port, socket_path=sock, password=password)
        finally:
            stop_process(proc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
