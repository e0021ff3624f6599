"""A real container engine for tests: Debian's podman serving the Docker Engine API.

    with podman_engine() as engine:                 # once per test module
        engine.httpd("web", port)                   # busybox httpd on 127.0.0.1:PORT
        engine.freeze("web")                        # SIGSTOP of its process, from the host
        engine.socket                               # the API's Unix socket, for docker_host

`podman system service --time=0` listens on a socket in a temporary folder, with its own root,
runroot and tmpdir there, so the host's podman state is neither read nor changed. Nothing is
pulled (there is no network): the one image is `podman import`ed from a tarball holding Debian's
static busybox. On these hybrid-cgroup hosts crun refuses to run containers, so they run under
runc with the cgroupfs manager and explicit ulimits (the defaults exceed what the host allows),
on the host's network, listening on loopback only. Every container is removed and the service is
stopped by its PID when the `with` ends. A machine without podman, runc or busybox-static skips
the tests that need it, or fails them when $CI is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.needs import need_program
from tests.support.processes import stop_process

IMAGE = "localhost/prober-busybox:test"
BUSYBOX = "/bin/busybox"
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
_APPLETS = ("sh", "sleep", "httpd", "test", "true", "false", "rm", "touch", "cat")


@dataclass(frozen=True)
class Engine:
    """A running podman API service and the podman command line over the same storage."""

    pid: int
    socket: Path
    folder: Path

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def global_flags(self) -> list[str]:
        return ["--root", str(self.folder / "root"), "--runroot", str(self.folder / "run"),
                "--tmpdir", str(self.folder / "tmp"), "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs",
                "--events-backend", "file"]

    def podman(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """podman's output for one command on this engine's storage."""
        done = subprocess.run(["podman", *self.global_flags(), *args], check=False,
                              capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create(self, name: str, command: Sequence[str], *options: str) -> None:
        """Create (not start) a container of the busybox image on the host's network."""
        self.podman("create", "--name", name, "--network", "host", *LIMITS, *options, IMAGE,
                    *command)

    def httpd(self, name: str, port: int, *options: str, start: bool = True) -> None:
        """A container serving /www (its index.html says "ok") on 127.0.0.1:PORT."""
        self.create(name, [BUSYBOX, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
                    *options)
        if start:
            self.podman("start", name)
            wait_listening(port)

    def inspect(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.podman("inspect", "--type", "container",
                                                             name))
        return found[0]

    def host_pid(self, name: str) -> int:
        return int(self.inspect(name)["State"]["Pid"])

    def freeze(self, name: str) -> None:
        """Stop the container's process with SIGSTOP from the host: up, listening, silent."""
        os.kill(self.host_pid(name), signal.SIGSTOP)

    def remove(self, *names: str) -> None:
        self.podman("rm", "--force", "--time", "0", "--ignore", *names)


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _image_tarball(folder: Path) -> Path:
    """A root filesystem holding busybox, its applets as symlinks, and /www/index.html."""
    tree = folder / "image"
    (tree / "bin").mkdir(parents=True)
    (tree / "www").mkdir()
    (tree / "tmp").mkdir()
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    for applet in _APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "www" / "index.html").write_text("ok\n")
    tarball = folder / "image.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(tree, arcname=".")
    return tarball


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False


def require_podman() -> None:
    for program, package in (("/usr/bin/podman", "podman"), ("/usr/sbin/runc", "runc"),
                             (BUSYBOX, "busybox-static")):
        need_program(program, package)


def start_service(engine: Engine) -> subprocess.Popen[bytes]:
    """`podman system service` on the engine's socket, answering /_ping."""
    log = (engine.folder / "service.log").open("ab")
    proc = subprocess.Popen(
        ["podman", *engine.global_flags(), "system", "service", "--time=0",
         engine.docker_host], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline and not _answers(engine.socket):
        time.sleep(0.05)
    if not _answers(engine.socket):
        stop_process(proc)
        text = (engine.folder / "service.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"podman system service did not start:\n{text}")
    return proc


@contextlib.contextmanager
def podman_engine() -> Iterator[Engine]:
    """A podman API service in a temporary folder, with the busybox image; all gone after."""
    require_podman()
    # Short path: a Unix socket's path must fit in 108 bytes, pytest's tmp_path may not.
    folder = Path(tempfile.mkdtemp(prefix="podman-"))
    engine = Engine(0, folder / "podman.sock", folder)
    proc: subprocess.Popen[bytes] | None = None
    try:
        engine.podman("import", str(_image_tarball(folder)), IMAGE, timeout=120)
        proc = start_service(engine)
        yield Engine(proc.pid, engine.socket, folder)
    finally:
        with contextlib.suppress(Exception):
            engine.podman("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        if proc is not None:
            stop_process(proc)
        _remove(folder)


def _remove(folder: Path, timeout: float = 10) -> None:
    """Remove the folder, again while a removed container's cleanup still writes into it."""
    deadline = time.monotonic() + timeout
    shutil.rmtree(folder, ignore_errors=True)
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)
