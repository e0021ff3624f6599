"""A sealed systemd for end-to-end tests: PID 1 of its own pid+mount namespaces, with its own bus.

The host is not booted with systemd, so the tests boot one (see /work/shared/systemd-sandbox.md):

    unshare --pid --mount --uts --cgroup --mount-proc  bash -c <setup>  ->  exec systemd --system

What keeps the host safe, in the order the setup script does it:

- a new mount namespace made recursively private, so no mount made inside reaches the host;
- fresh tmpfs on /run, /tmp, /var/tmp, /var/log (and /var/lib/systemd, /etc/systemd/system,
  /etc/polkit-1/rules.d, /dev/shm), so nothing inside can empty or fill the host's copies;
- /proc/sys and /sys read-only, so no sysctl or sysfs write inside changes the host;
- a private cgroup2 tree (a child of this process's cgroup on the host, seen as the root inside);
  with `memory=True`, a memory controller too, in the host's layout: on a hybrid host such as
  these machines, a tmpfs on /sys/fs/cgroup with each v1 hierarchy (memory among them) and
  cgroup2 on /sys/fs/cgroup/unified, each rooted at a child of this process's cgroup there, all
  removed at stop (tests/support/harness.py makes memory pressure with it);
- sysinit.target masked and every unit written through the harness with DefaultDependencies=no:
  systemd-tmpfiles, systemd-sysctl, journald and udev never start;
- /dev/console is a pty read by a thread here, so systemd's messages land in `console.log`
  instead of on the host's console;
- the unshare process dies with the thread that started it (PR_SET_PDEATHSIG), and the namespace
  with it (unshare --kill-child), so a crashed test run leaves nothing running.

With overlay=True (opt-in, for installing packages inside: tests/e2e/test_deb.py), the sandbox
first makes its root an overlay of the host's root file system, before any of the above: lower
layer the host's /, upper layer a tmpfs private to the mount namespace; then pivot_root into it.
`apt install` inside writes /usr, /etc and /var/lib/dpkg (dpkg's database and lock) into that
tmpfs: the host's stay untouched, and the writes vanish with the sandbox. Only the repository,
the work directory and `share` are bound in live (they are how the tests exchange files), and
/dev, /proc and /sys as before. Users are then created inside (adduser), not with users=.

Paths the tests need (the repository, the work directory, the Python installation) are bound back
at the same place inside even when they live under a hidden directory such as /tmp, and made
traversable for unprivileged users (the venv's Python may live under /root, mode 0700).

    with Sandbox(workdir) as box:                       # boots in ~0.3 s, stops in ~0.2 s
        stack = start_stack(box)                        # caddy.service -> backend.service
        box.run(["prober", "check"], env={...})         # inside: /run/dbus/system_bus_socket
        MessageBus(bus_address=box.bus_address, ...)    # or from the host, via /proc/PID/root

Traps met on the way:
- systemd writes nothing to a /dev/console that is not a tty (a file or FIFO stays empty), and
  units with StandardOutput=tty fail with 209/STDOUT; hence the pty.
- caddy: `POST /load` with `{}` also moves its admin API to the fixed localhost:2019 (see
  Stack.empty_config), and a site address alone listens on all interfaces (hence `bind`).
- nsenter does not forward signals: killing it before its child orphans that child to the host's
  init, and the sandbox's PID 1 cannot finish exiting until the host's init reaps it.
- GetUnit fails (NoSuchUnit) for a stopped unit nothing references; LoadUnit answers.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import os
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "REPO",
    "STANDIN",
    "Sandbox",
    "SandboxError",
    "Stack",
    "caddyfile",
    "free_ports",
    "missing_requirements",
    "process_start_time",
    "start_stack",
    "systemd_quote",
]

REPO = Path(__file__).resolve().parents[2]
"""The checkout this file belongs to; shared with the sandbox by default."""

TARGET = "prober-sandbox.target"
CONTAINER = "prober-test"
SYSTEMD = "/lib/systemd/systemd"
UNIT_DIR = "/run/systemd/system"
BUS_SOCKET = "/run/dbus/system_bus_socket"
PSI_MEMORY = "/proc/pressure/memory"

# Hidden inside under empty tmpfs: the folders systemd and its helpers would write to.
_HIDDEN = ("/run", "/tmp", "/var/tmp", "/var/log")  # noqa: S108 - hidden, not used
_TMPFS_MODES = {"/tmp": "1777", "/var/tmp": "1777"}  # noqa: S108
# Hidden too, so the host's configuration can neither leak in nor be written to.
_PRIVATE_DIRS = ("/var/lib/systemd", "/etc/systemd/system")
_POLKIT_RULES = "/etc/polkit-1/rules.d"
_TOOLS = ("unshare", "nsenter", "setpriv", "mount", "findmnt", "bash", "systemctl", "busctl")
_FIRST_UID = 61000
CADDY = "/usr/bin/caddy"
STANDIN = REPO / "tests" / "support" / "standin.py"

_BASE_UNITS = {
    TARGET: """\
[Unit]
Description=prober test sandbox
DefaultDependencies=no
Wants=dbus.socket dbus.service
After=dbus.socket dbus.service
AllowIsolate=yes
""",
    "dbus.socket": f"""\
[Unit]
Description=D-Bus System Message Bus Socket (sandbox)
DefaultDependencies=no

[Socket]
ListenStream={BUS_SOCKET}
""",
    "dbus.service": """\
[Unit]
Description=D-Bus System Message Bus (sandbox)
DefaultDependencies=no
Requires=dbus.socket
After=dbus.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile \
--systemd-activation --syslog-only
ExecReload=/usr/bin/dbus-send --print-reply --system --type=method_call \
--dest=org.freedesktop.DBus / org.freedesktop.DBus.ReloadConfig
""",
    # Activated by dbus-daemon when an unprivileged caller needs an authorization decision.
    "polkit.service.d/sandbox.conf": """\
[Unit]
DefaultDependencies=no
""",
}

# Units without an explicit StandardOutput= write to /dev/console, i.e. to console.log.
_SYSTEM_CONF = """\
[Manager]
DefaultStandardOutput=tty
DefaultStandardError=inherit
DefaultTimeoutStopSec=5s
"""


class SandboxError(Exception):
    """The sandbox could not boot, answer, or run what it was asked to."""


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def missing_requirements(*, memory: bool = False) -> list[str]:
    """What this machine lacks to boot a sandbox (empty when it has everything).

    `memory`: also what Sandbox(memory=True) needs, a memory controller it can delegate.
    """
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (the sandbox mounts file systems and creates namespaces)")
    missing.extend(f"`{tool}` on PATH" for tool in _TOOLS if shutil.which(tool) is None)
    for path in (SYSTEMD, "/usr/bin/dbus-daemon", "/usr/bin/caddy"):
        if not os.access(path, os.X_OK):
            missing.append(f"{path} (Debian packages: systemd, dbus-daemon, caddy)")
    try:
        _cgroup2_dir()
        if memory:
            memory_layout()
    except SandboxError as exc:
        missing.append(str(exc))
    return missing


def process_start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None if it is gone or a zombie.

    With it, a PID that the kernel has handed to another process since is not mistaken for the
    one you knew (pid_max is 32768 on these machines, and PIDs come round again quickly).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])


def systemd_quote(argv: Sequence[str]) -> str:
    """An ExecStart= command line that systemd splits back into exactly `argv`."""
    quoted = []
    for arg in argv:
        escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("%", "%%").replace("$", "$$")
        quoted.append(f'"{escaped}"')
    return " ".join(quoted)


def _env_quote(name: str, value: str) -> str:
    """An Environment= assignment (no $ expansion there, only % specifiers and C escapes)."""
    escaped = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _cgroup2_dir() -> Path:
    """This process's cgroup in the host's cgroup2 tree (hybrid or unified)."""
    mount = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            mount = left.split(" ")[4]
            break
    if mount is None:
        raise SandboxError("a cgroup2 mount (the sandbox gets its own cgroup2 subtree)")
    own = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            own = line[3:]
    path = Path(mount + own.rstrip("/"))
    if not os.access(path, os.W_OK):
        raise SandboxError(f"a writable cgroup2 directory ({path} is not)")
    return path


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _plan_mounts(share: Sequence[Path]) -> tuple[list[tuple[str, str]], list[str]]:
    """Which folders to cover with tmpfs and which host folders to bind back over them.

    Returns (ops, sources): ops are ("tmpfs", path, ) or ("bind", path) in mount order; each bind
    target is bound from the same host path, opened before any mount hides it.
    """
    tmpfs: dict[str, str] = {d: _TMPFS_MODES.get(d, "0755") for d in (*_HIDDEN, *_PRIVATE_DIRS)}
    binds: set[str] = set()
    for raw in share:
        path = os.path.realpath(raw)
        if not os.path.isdir(path):
            raise SandboxError(f"cannot share {raw}: not a directory")
        if any(_is_under(d, path) for d in _HIDDEN):
            raise SandboxError(f"cannot share {path}: it is or contains a folder the sandbox hides")
        if any(_is_under(path, d) for d in _HIDDEN):
            binds.add(path)
        # Open every folder above `path` that unprivileged users cannot traverse (/root is 0700).
        parts = Path(path).parts
        for depth in range(2, len(parts)):
            ancestor = str(Path(*parts[:depth]))
            if any(_is_under(ancestor, d) for d in _HIDDEN):
                break  # rebuilt inside by `mkdir -p` with mode 0755
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                tmpfs.setdefault(ancestor, "0755")
                binds.add(str(Path(*parts[: depth + 1])))
    for target in list(binds):
        # A bind below another bind is redundant unless a tmpfs between them hides it again.
        for outer in binds:
            if outer != target and _is_under(target, outer) and not any(
                _is_under(t, outer) and t != outer and _is_under(target, t) for t in tmpfs
            ):
                binds.discard(target)
                break
    ops = [("tmpfs", d) for d in tmpfs] + [("bind", b) for b in binds]
    ops.sort(key=lambda op: (len(Path(op[1]).parts), op[0] != "tmpfs", op[1]))
    return ops, sorted(binds)


class _Console:
    """A pty whose far end is /dev/console inside; a thread copies what systemd writes to a file.

    systemd only writes to a console that is a tty (a FIFO or a plain file gets nothing), and it
    blocks when the tty's buffer is full, so the thread must keep reading.
    """

    def __init__(self, log: Path) -> None:
        self._master, self._slave = os.openpty()  # the slave stays open here: no EIO on reads
        self.tty = os.ttyname(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n"
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-console", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._log.open("ab") as out:
            while True:
                try:
                    data = os.read(self._master, 65536)
                except (BlockingIOError, OSError):
                    return
                if not data:
                    return
                out.write(data.replace(b"\r\n", b"\n"))

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if ready:
                self._drain()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        os.close(self._slave)
        os.close(self._master)


class Sandbox:
    """A sealed systemd (PID 1 of its own pid+mount namespaces) with its own system bus."""

    pid: int
    """Host PID of the sandbox's systemd (PID 1 inside)."""
    pid_start_time: int
    """process_start_time(pid) at boot: tells this PID 1 apart from a later owner of its PID."""

    def __init__(
        self,
        workdir: Path,
        *,
        repo: Path = REPO,
        share: Sequence[Path] = (),
        users: Sequence[str] = (),
        memory: bool = False,
        overlay: bool = False,
    ) -> None:
        """`workdir` must exist or be creatable; it and `repo` are visible at the same path inside.

        `share`: more host folders to make visible (and traversable) inside. `users`: system users
        that exist only inside the sandbox (a private /etc/passwd and /etc/group), e.g. "prober".
        `memory`: give systemd inside a memory controller, so that MemoryMax= & co. are enforced
        (see memory_layout(); without it, systemd accepts them and nothing limits anything).
        `overlay`: boot on a copy-on-write overlay of the root file system (see "With
        overlay=True" above), for installing packages inside; create users there with adduser.
        """
        if overlay and users:
            raise SandboxError("users= binds /etc/passwd, which adduser must replace: with "
                               "overlay=True, create users inside")
        self.workdir = Path(os.path.realpath(workdir))
        self.repo = Path(os.path.realpath(repo))
        self.share = [self.repo, self.workdir, Path(sys.prefix), Path(sys.base_prefix), *share]
        self.users = list(users)
        self.overlay = overlay
        self._live = [self.repo, self.workdir, *(Path(os.path.realpath(p)) for p in share)]
        self.pid = 0
        self.pid_start_time = 0
        self._state = _State.NEW
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: _Console | None = None
        self._cgroup: Path | None = None
        self.memory = memory
        self.cgroup_layout = "unified"
        """How /sys/fs/cgroup looks inside: "unified" (cgroup2 only) or "hybrid" (memory=True on
        a host whose memory controller is on cgroup v1)."""
        self._v1_cgroups: list[Path] = []
        self.v1_hierarchies: list[Hierarchy] = []
        self._psi_pin: Path | None = None
        self.boot_seconds = 0.0
        self.stop_seconds = 0.0

    # ---- lifecycle -----------------------------------------------------------------------------

    @property
    def bus_address(self) -> str:
        """The sandbox's system bus, as seen from the host."""
        return f"unix:path=/proc/{self.pid}/root{BUS_SOCKET}"

    @property
    def console_log(self) -> Path:
        """Everything systemd (and units without their own StandardOutput=) printed."""
        return self.workdir / "console.log"

    def start(self, timeout: float = 30.0) -> None:
        """Boot, and return once systemd runs its target and answers on the system bus."""
        if self._state is not _State.NEW:
            raise SandboxError(f"start() on a sandbox that is {self._state.value}")
        began = time.monotonic()
        self._state = _State.RUNNING
        try:
            self._spawn()
            self._wait_booted(began + timeout)
        except BaseException as exc:
            self.stop()
            tail = self.console_tail()
            if isinstance(exc, SandboxError):
                raise SandboxError(f"{exc}\n--- systemd console (tail) ---\n{tail}") from None
            raise
        self.boot_seconds = time.monotonic() - began

    def stop(self, timeout: float = 10.0) -> None:
        """Power off; SIGKILL after `timeout` s; remove the host-side cgroup. Idempotent."""
        if self._state is _State.STOPPED:
            return
        began = time.monotonic()
        self._state = _State.STOPPED
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._power_off(self._proc, began + timeout)
            self._wait_gone()
        finally:
            if self._console is not None:
                self._console.close()
                self._console = None
            if self._cgroup is not None:
                _remove_cgroup(self._cgroup)
                self._cgroup = None
            while self._v1_cgroups:
                _remove_cgroup(self._v1_cgroups.pop())
            self.stop_seconds = time.monotonic() - began

    def _power_off(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        if self.pid:
            with contextlib.suppress(SandboxError, subprocess.SubprocessError, OSError):
                # --no-block: do not wait on a manager that may be frozen by a test.
                self._nsenter(["systemctl", "--no-block", "poweroff"],
                              timeout=min(5.0, max(0.1, deadline - time.monotonic())))
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # PID 1 dying kills the whole pid namespace. PID 1 first: unshare then reaps it,
            # where killing unshare first would leave PID 1 to the host's init to reap.
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()  # --kill-child: the namespace dies with it
                proc.wait(timeout=5)

    def _wait_gone(self, timeout: float = 5.0) -> None:
        """Wait until PID 1 is dead (an exiting PID 1 lingers while its namespace empties)."""
        if not self.pid_start_time:
            return
        deadline = time.monotonic() + timeout
        while process_start_time(self.pid) == self.pid_start_time:
            if time.monotonic() > deadline:
                raise SandboxError(f"the sandbox's PID 1 (host PID {self.pid}) is still there")
            time.sleep(0.01)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the sandbox's systemd is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        boot = self.workdir / "boot"
        shutil.rmtree(boot, ignore_errors=True)
        (boot / "units").mkdir(parents=True)
        for name, text in _BASE_UNITS.items():
            dest = boot / "units" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        (boot / "system.conf").write_text(_SYSTEM_CONF)
        if self.users:
            _write_user_db(boot, self.users)
        self.console_log.write_bytes(b"")
        self._console = _Console(self.console_log)

        join = [self._cgroup_for_memory() if self.memory else _make_cgroup()]
        self._cgroup = join[0]
        if self.cgroup_layout == "hybrid":
            join += self._v1_cgroups
        script = self._setup_script(boot, self._console.tty)
        (boot / "setup.sh").write_text(script)  # for reading; what runs is the string itself
        argv = [
            "sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh",
            str(self._cgroup / "cgroup.procs"),
            "setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--fork", "--kill-child", "--pid", "--mount", "--uts", "--cgroup",
            "--mount-proc", "--propagation", "private",
            "bash", "-c", script, "sandbox-setup",
        ]  # fmt: skip
        if len(join) > 1:  # into every hierarchy, so that each is rooted there inside
            argv[:5] = ["sh", "-c", _JOIN_ALL, "sh", *(str(c / "cgroup.procs") for c in join),
                        "--"]
        with self.console_log.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,  # a Ctrl-C for pytest must not reach systemd
            )

    def _setup_script(self, boot: Path, console: str) -> str:
        q = shlex.quote
        ops, sources = _plan_mounts(self.share)
        host_mnt = os.readlink("/proc/self/ns/mnt")
        host_cgroup = os.readlink("/proc/self/ns/cgroup")
        lines = [
            "set -euo pipefail",
            f'[ "$(readlink /proc/self/ns/mnt)" != {q(host_mnt)} ] '
            '|| { echo "sandbox: still in the host mount namespace" >&2; exit 1; }',
            f'[ "$(readlink /proc/self/ns/cgroup)" != {q(host_cgroup)} ] '
            '|| { echo "sandbox: still in the host cgroup namespace" >&2; exit 1; }',
            "mount --make-rprivate /",
        ]
        if self.overlay:
            lines += self._overlay_root(boot)
        fds = {}
        for index, source in enumerate(sources):
            fd = 10 + index
            fds[source] = fd
            lines.append(f"exec {fd}<{q(source)}")
        for kind, path in ops:
            if kind == "tmpfs":
                mode = _TMPFS_MODES.get(path, "0755")
                lines.append(f"mkdir -p {q(path)}")
                lines.append(f"mount -t tmpfs -o mode={mode},nosuid,nodev sandbox {q(path)}")
            else:
                lines.append(f"mkdir -p {q(path)}")
                lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fds[path]} {q(path)}")
        lines += [f"exec {fd}<&-" for fd in fds.values()]
        polkit = q(_POLKIT_RULES)
        lines += [
            # The host's rules stay out; tests may add their own (see write_polkit_rule).
            f"if [ -d {polkit} ]; then",
            f"  mount -t tmpfs -o mode=0755,nosuid,nodev sandbox {polkit}",
            "fi",
            "mount -t tmpfs -o mode=1777,nosuid,nodev sandbox /dev/shm",
            f"mount --bind {q(console)} /dev/console",
            # Read-only views: no sysctl and no sysfs write inside can reach the host.
            "mount --bind /proc/sys /proc/sys",
            "mount -o remount,bind,ro /proc/sys",
            "mount --bind /sys /sys",
            "mount -o remount,bind,ro /sys",
            # Inside a cgroup namespace, so this cgroup2 is rooted at the sandbox's own cgroup and
            # its mount options cannot change the host's.
            *self._cgroup_mounts(),
        ]
        if self.users:
            lines += [
                f"mount --bind {q(str(boot / 'passwd'))} /etc/passwd",
                f"mount --bind {q(str(boot / 'group'))} /etc/group",
            ]
        lines += [
            f"mkdir -p {UNIT_DIR} /run/systemd/system.conf.d /run/dbus",
            f"cp -r {q(str(boot / 'units'))}/. {UNIT_DIR}/",
            f"ln -s /dev/null {UNIT_DIR}/sysinit.target",
            f"cp {q(str(boot / 'system.conf'))} /run/systemd/system.conf.d/sandbox.conf",
            # Last look before handing over: the host's /tmp must be out of reach.
            "for d in " + " ".join(_HIDDEN) + "; do",
            '  [ "$(findmnt -n -o FSTYPE --mountpoint "$d")" = tmpfs ] '
            '|| { echo "sandbox: $d is not a private tmpfs" >&2; exit 1; }',
            "done",
            f'[ "$(readlink {UNIT_DIR}/sysinit.target)" = /dev/null ] '
            '|| { echo "sandbox: sysinit.target is not masked" >&2; exit 1; }',
            f"exec env -i container={CONTAINER} PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "
            "SYSTEMD_COLORS=0 "
            f"{SYSTEMD} --system --unit={TARGET} --log-target=console --show-status=no",
        ]
        return "\n".join(lines) + "\n"

    def _cgroup_for_memory(self) -> Path:
        """The sandbox's cgroup2 directory, plus, on a v1 host, one in each v1 hierarchy."""
        if memory_layout() == "unified":
            return _make_cgroup(memory_cgroup2_parent())
        self.cgroup_layout = "hybrid"
        self.v1_hierarchies = v1_hierarchies(Path("/proc/self/mountinfo").read_text(),
                                               Path("/proc/self/cgroup").read_text())
        for hierarchy in self.v1_hierarchies:
            cpuset = "cpuset" in hierarchy.options.split(",")
            self._v1_cgroups.append(_make_cgroup(hierarchy.cgroup, cpuset=cpuset))
        return _make_cgroup()

    def _cgroup_mounts(self) -> list[str]:
        """What the setup script mounts on /sys/fs/cgroup: cgroup2 alone, or as a hybrid host has
        it (a tmpfs, each v1 hierarchy below it, cgroup2 on unified/), each rooted at the
        sandbox's own cgroup by the cgroup namespace."""
        if self.cgroup_layout != "hybrid":
            return ["mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup"]
        top = "/sys/fs/cgroup"
        lines = [f"mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup {top}",
                 f"mkdir {top}/unified",
                 f"mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 {top}/unified"]
        for hierarchy in self.v1_hierarchies:
            where = shlex.quote(f"{top}/{hierarchy.directory}")
            lines += [f"mkdir {where}",
                      f"mount -t cgroup -o nosuid,nodev,noexec,{hierarchy.options} cgroup {where}"]
            comounted = hierarchy.directory.split(",")
            if len(comounted) > 1:  # cpu,cpuacct: reachable under each name, as on the host
                lines += [f"ln -s {shlex.quote(hierarchy.directory)} "
                          f"{shlex.quote(f'{top}/{name}')}" for name in comounted]
        return lines

    def _overlay_root(self, boot: Path) -> list[str]:
        """Commands that make an overlay of / the root: reads from the host's, writes to a tmpfs.

        The host's folders the tests exchange files through (repo, workdir, `share`, and Python
        prefixes that the sandbox hides) are bound in live; the rest of the host is seen as it
        was, and what is written there stays in the overlay, gone with the sandbox.
        """
        q = shlex.quote
        base = boot / "overlay"
        root = base / "root"
        if any(c in str(base) for c in ",:\\"):
            raise SandboxError(f"{base}: an overlay's folders cannot contain , : or \\")
        own_fs = [d for d in ("/usr", "/etc", "/var") if os.stat(d).st_dev != os.stat("/").st_dev]
        if own_fs:  # the overlay's lower layer is the root file system alone
            raise SandboxError(f"overlay=True needs {', '.join(own_fs)} on the root file system")
        live = [*self._live, *(p for p in (Path(sys.prefix), Path(sys.base_prefix))
                               if any(_is_under(str(p), d) for d in _HIDDEN))]
        lines = [
            f"mkdir -p {q(str(base))}",
            f"mount -t tmpfs -o mode=0755 sandbox-overlay {q(str(base))}",
            f"mkdir {q(str(base / 'upper'))} {q(str(base / 'work'))} {q(str(root))}",
            f"mount -t overlay -o lowerdir=/,upperdir={base}/upper,workdir={base}/work "
            f"sandbox-root {q(str(root))}",
        ]
        for path in sorted({os.path.realpath(p) for p in live}, key=lambda p: len(Path(p).parts)):
            inside = q(f"{root}{path}")
            lines += [f"mkdir -p {inside}", f"mount --bind {q(path)} {inside}"]
        lines += [f"mount --rbind {d} {q(f'{root}{d}')}" for d in ("/dev", "/proc", "/sys")]
        lines += [
            f"mkdir {q(f'{root}/run/sandbox-host')}",
            f"cd {q(str(root))}",
            "pivot_root . run/sandbox-host",
            "cd /",
            "umount -l /run/sandbox-host",
            "rmdir /run/sandbox-host",
        ]
        return lines

    def _wait_booted(self, deadline: float) -> None:
        assert self._proc is not None
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
        while not self.pid:
            self._check_alive(deadline, "systemd to be forked")
            with contextlib.suppress(OSError, ValueError):
                first = children.read_text().split()
                self.pid = int(first[0]) if first else 0
            time.sleep(0.01)
        self.pid_start_time = process_start_time(self.pid) or 0
        while True:
            self._check_alive(deadline, "systemd to start")
            with contextlib.suppress(OSError):
                if os.path.basename(os.readlink(f"/proc/{self.pid}/exe")) == "systemd":
                    break
            time.sleep(0.01)
        probe = ["busctl", "--system", "--timeout=2", "get-property", "org.freedesktop.systemd1",
                 "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "Version"]
        while True:
            self._check_alive(deadline, "the system bus to answer")
            if os.path.exists(f"/proc/{self.pid}/root{BUS_SOCKET}"):
                done = self._nsenter(probe, timeout=5)
                if done.returncode == 0:
                    break
            time.sleep(0.05)
        self.wait_active(TARGET, timeout=max(0.1, deadline - time.monotonic()))

    def _check_alive(self, deadline: float, what: str) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise SandboxError(f"the sandbox exited with {code} while waiting for {what}")
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out waiting for {what}")

    # ---- running things inside -----------------------------------------------------------------

    def _require_running(self) -> None:
        if self._state is not _State.RUNNING or not self.pid:
            raise SandboxError(f"the sandbox is {self._state.value}, not running")

    def _nsenter(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = ["nsenter", "-t", str(self.pid), "-m", "-p", "-u"]
        if cwd is not None and not self.overlay:
            full.append(f"--wd={cwd}")
        full.append("--")
        if user is not None:
            full += ["setpriv", f"--reuid={user}", f"--regid={_primary_group(self, user)}",
                     "--init-groups", "--"]
        if cwd is not None and self.overlay:
            # nsenter opens --wd in the host's mount namespace, whose root the overlay replaced.
            full += ["env", f"--chdir={cwd}", "--"]
        full += list(argv)
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DBUS_", "NOTIFY_SOCKET", "LISTEN_", "INVOCATION_ID"))}
        if user is not None:
            environ.update(USER=user, LOGNAME=user, HOME="/")
        environ.update(env or {})
        # Own process group: on timeout, _kill_nsenter() finds what runs inside by it.
        with subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=environ,
                              start_new_session=True) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                out, err = _kill_nsenter(proc)
                raise SandboxError(
                    f"timed out after {timeout} s: {shlex.join(argv)}\n{out}{err}") from None
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        check: bool = False,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside (nsenter -m -p -u), text in and out, output captured.

        `env` is added to this process's environment (minus D-Bus/systemd variables). `user` runs
        it as that user (setpriv: its primary and supplementary groups; HOME=/). With `check`,
        a non-zero exit raises SandboxError showing the output. A timeout raises SandboxError after
        killing the command.
        """
        self._require_running()
        done = self._nsenter(argv, env=env, timeout=timeout, user=user, cwd=cwd)
        if check and done.returncode != 0:
            raise SandboxError(
                f"`{shlex.join(argv)}` exited with {done.returncode}\n"
                f"stdout: {done.stdout.strip()}\nstderr: {done.stderr.strip()}")
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS` inside."""
        return self.run(["systemctl", *args], check=check, timeout=30)

    def unit_property(self, unit: str, prop: str) -> str:
        """`systemctl show -p PROP --value UNIT`."""
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def main_pid(self, unit: str) -> int:
        """The unit's MainPID as systemd reports it: a PID inside the sandbox (0 if none)."""
        return int(self.unit_property(unit, "MainPID"))

    def host_pid(self, pid: int) -> int:
        """The host PID of the process that is `pid` inside the sandbox."""
        self._require_running()
        ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        with os.scandir("/proc") as entries:
            names = [entry.name for entry in entries if entry.name.isdigit()]
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/ns/pid") != ns:
                    continue
                for line in Path(f"/proc/{name}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == pid:
                        return int(name)
        raise SandboxError(f"no process {pid} inside the sandbox")

    def wait_active(self, unit: str, timeout: float = 10) -> None:
        """Wait until `unit` is active; raise SandboxError (with its status) if it is not."""
        self._require_running()
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.systemctl("is-active", unit, check=False).stdout.strip()
            if state == "active":
                return
            if state == "failed":
                break
            time.sleep(0.02)
        status = self.systemctl("status", "--no-pager", "--lines=0", unit, check=False)
        raise SandboxError(
            f"{unit} is {state or 'unknown'}, not active, after {timeout} s\n{status.stdout}"
            f"--- console (tail) ---\n{self.console_tail(20)}")

    def wait_port(self, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
        """Wait until something accepts TCP connections on host:port (the network is shared)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise SandboxError(f"nothing listens on {host}:{port} after {timeout} s: "
                                       f"{exc}") from exc
                time.sleep(0.02)

    def console_tail(self, n: int = 50) -> str:
        """The last `n` lines systemd printed (it logs to the console, kept in console.log)."""
        try:
            data = self.console_log.read_bytes()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-n:])

    # ---- files and units -----------------------------------------------------------------------

    def path(self, inside: str | Path) -> Path:
        """Where a path inside the sandbox is seen from the host (via /proc/PID/root)."""
        self._require_running()
        return Path(f"/proc/{self.pid}/root") / Path(inside).relative_to("/")

    def write_unit(self, name: str, text: str, *, reload: bool = True) -> None:
        """Write a unit (or a drop-in "x.service.d/y.conf") into /run/systemd/system inside.

        Every unit must say DefaultDependencies=no: with sysinit.target masked, a unit with default
        dependencies would fail to start anyway, less clearly.
        """
        parts = Path(name).parts
        dropin = len(parts) == 2 and parts[0].endswith(".d") and parts[1].endswith(".conf")
        if not (len(parts) == 1 or dropin) or ".." in parts:
            raise SandboxError(f"not a unit or drop-in name: {name!r}")
        if not dropin and "DefaultDependencies=no" not in text.replace(" ", ""):
            raise SandboxError(f"{name}: units in the sandbox need DefaultDependencies=no")
        dest = self.path(UNIT_DIR) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text)
        tmp.rename(dest)
        if reload:
            self.systemctl("daemon-reload")

    def log_path(self, unit: str) -> Path:
        """The file a unit written by write_service() appends its output to (under workdir)."""
        return self.workdir / "logs" / f"{unit}.log"

    def write_service(
        self,
        name: str,
        argv: Sequence[str],
        *,
        type: str = "simple",
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        unit_extra: str = "",
        service_extra: str = "",
        reload: bool = True,
    ) -> Path:
        """Write `name` (a .service running `argv`) logging to log_path(name); return that path."""
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "[Unit]",
            f"Description=sandbox {name}",
            "DefaultDependencies=no",
            unit_extra,
            "",
            "[Service]",
            f"Type={type}",
            f"ExecStart={systemd_quote(argv)}",
            f"StandardOutput=append:{log}",
            "StandardError=inherit",
        ]
        lines += [f"Environment={_env_quote(k, v)}" for k, v in (env or {}).items()]
        if user is not None:
            lines.append(f"User={user}")
        lines.append(service_extra)
        self.write_unit(name, "\n".join(lines) + "\n", reload=reload)
        return log

    def pin_psi(self, some: float, full: float | None = None, *,
                units: Sequence[str] = ()) -> None:
        """Make /proc/pressure/memory read `some` / `full` percent (avg10, avg60 and avg300 alike)
        inside, without touching the product: a file bind-mounted over it in the sandbox's mount
        namespace (the host's file is untouched).

        PSI is host-wide (other people's jobs on this machine move the real file): tests that
        must not depend on it pin it.

        Units with a mount namespace of their own (ProtectSystem=, ProtectKernelTunables=, ...:
        the shipped prober units) get a fresh /proc from systemd, which hides that mount: name
        them in `units`, and a drop-in binds the same file there (BindReadOnlyPaths=) from their
        next start. A later pin rewrites the file in place at a fixed length, so every process
        that sees it, already running or not, reads each new value whole.
        """
        self._require_running()
        full = some if full is None else full
        lines = [f"{kind} avg10={value:06.2f} avg60={value:06.2f} avg300={value:06.2f} "
                 "total=0000000000\n" for kind, value in (("some", some), ("full", full))]
        data = "".join(lines).encode()
        if self._psi_pin is None:
            if not self.path(PSI_MEMORY).exists():
                raise SandboxError(f"this kernel has no {PSI_MEMORY} (PSI) to pin")
            pin = self.workdir / "pinned-psi-memory"
            pin.write_bytes(data)
            pin.chmod(0o444)
            self.run(["mount", "--bind", str(pin), PSI_MEMORY], check=True)
            self._psi_pin = pin
        else:
            fd = os.open(self._psi_pin, os.O_WRONLY)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)
        for unit in units:
            self.write_unit(f"{unit}.d/pin-psi.conf",
                            f"[Service]\nBindReadOnlyPaths={self._psi_pin}:{PSI_MEMORY}\n",
                            reload=False)
        if units:
            self.systemctl("daemon-reload")

    def unpin_psi(self) -> None:
        """The kernel's own /proc/pressure/memory again (for processes started from now on)."""
        if self._psi_pin is not None:
            self.run(["umount", PSI_MEMORY], check=True)
            self._psi_pin = None

    def write_polkit_rule(self, name: str, text: str) -> None:
        """Add /etc/polkit-1/rules.d/NAME inside (a private tmpfs; polkitd rereads it by itself)."""
        if "/" in name or not name.endswith(".rules"):
            raise SandboxError(f"not a polkit rules file name: {name!r}")
        dest = self.path(_POLKIT_RULES) / name
        tmp = dest.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.rename(dest)


# The setup's first step when the sandbox joins several hierarchies: `sh -c _JOIN_ALL sh FILE...
# -- COMMAND...` writes its PID to each cgroup.procs FILE, then runs COMMAND.
_JOIN_ALL = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done; shift; exec "$@"'


def memory_layout() -> str:
    """Where the host's memory controller is: "unified" (cgroup2, e.g. Debian 12's default) or
    "hybrid" (a v1 hierarchy, as on these machines). Sandbox(memory=True) then gives systemd
    inside the same layout, each hierarchy rooted at a cgroup of the sandbox's own; the
    host's cgroups outside it are never written. SandboxError if there is none to use.
    """
    from prober.memory.cgroups import read_cgroup_mounts

    mounts = read_cgroup_mounts()
    if mounts.memory_v1 is not None:
        return "hybrid"
    if mounts.memory_on_unified:
        memory_cgroup2_parent()
        return "unified"
    raise SandboxError("a memory cgroup controller (v1, or enabled on cgroup2) for "
                       "Sandbox(memory=True)")


def memory_cgroup2_parent() -> Path:
    """A cgroup2 directory whose children get the memory controller: this process's own, or
    else the root of the cgroup2 mount (a cgroup with processes cannot hand controllers down
    unless it is the root)."""
    own = _cgroup2_dir()
    root = own
    while root.parent != root and (root.parent / "cgroup.subtree_control").exists():
        root = root.parent
    for candidate in (own, root):
        with contextlib.suppress(OSError):
            if "memory" in (candidate / "cgroup.subtree_control").read_text().split():
                return candidate
    raise SandboxError(f"the memory controller enabled in {own}/cgroup.subtree_control or "
                       f"{root}/cgroup.subtree_control, for Sandbox(memory=True)")


@dataclass(frozen=True)
class Hierarchy:
    """A cgroup v1 hierarchy of the host, as the sandbox mounts it inside."""

    directory: str  # its folder under /sys/fs/cgroup: "memory", "cpu,cpuacct", "systemd"
    options: str  # `mount -t cgroup -o` options naming it: "memory", "none,name=systemd"
    cgroup: Path  # this process's cgroup in it, as a host path


def v1_hierarchies(mountinfo: str, proc_cgroup: str) -> list[Hierarchy]:
    """The v1 hierarchies mounted under /sys/fs/cgroup, with this process's cgroup in each.

    `mountinfo` is /proc/self/mountinfo and `proc_cgroup` /proc/self/cgroup (`4:memory:/x`).
    """
    mounts: list[tuple[str, str, set[str]]] = []  # (mount point, mount root, super options)
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] == "cgroup" and \
                os.path.dirname(fields[4]) == "/sys/fs/cgroup":
            mounts.append((fields[4], fields[3], set(tail[2].split(","))))
    found = []
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" or not controllers:
            continue
        wanted = set(controllers.split(","))
        for point, root, options in mounts:
            if wanted <= options and _is_under(path, root):
                relative = os.path.relpath(path, root)
                own = Path(point) if relative == "." else Path(point) / relative
                named_only = all(c.startswith("name=") for c in wanted)
                found.append(Hierarchy(os.path.basename(point),
                                        ("none," if named_only else "") + controllers, own))
                break
    return found


def _group_members(pgid: int) -> list[int]:
    """The PIDs in process group `pgid`, whatever their pid namespace."""
    members = []
    with os.scandir("/proc") as entries:
        names = [entry.name for entry in entries if entry.name.isdigit()]
    for name in names:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat_line = Path(f"/proc/{name}/stat").read_text()
            if int(stat_line.rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(int(name))
    return members


def _kill_nsenter(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Kill what nsenter runs, then nsenter; return what they printed.

    Not all at once: a child whose nsenter dies first is orphaned to the host's init (nsenter's
    namespace), which may never reap it, and a sandbox's PID 1 cannot exit while a process of its
    namespace is unreaped.
    """
    for pid in _group_members(proc.pid):
        if pid != proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    try:
        return proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()  # e.g. a grandchild in its own session keeps the pipes open
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.communicate(timeout=2)
        return "", ""


def _primary_group(sandbox: Sandbox, user: str) -> str:
    if user in sandbox.users:
        return user
    done = sandbox._nsenter(["id", "-g", user], timeout=10)
    if done.returncode != 0:
        raise SandboxError(f"no user {user!r} inside the sandbox: {done.stderr.strip()}")
    return done.stdout.strip()


def _write_user_db(boot: Path, users: Sequence[str]) -> None:
    """Copies of /etc/passwd and /etc/group with system users that exist only inside."""
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    taken_uids = {int(line.split(":")[2]) for line in passwd.splitlines() if line.count(":") >= 6}
    taken_gids = {int(line.split(":")[2]) for line in group.splitlines() if line.count(":") >= 3}
    names = {line.split(":")[0] for line in passwd.splitlines()}
    uid = _FIRST_UID
    for user in users:
        if user in names:
            continue
        while uid in taken_uids or uid in taken_gids:
            uid += 1
        passwd += f"{user}:x:{uid}:{uid}:sandbox user:/nonexistent:/usr/sbin/nologin\n"
        group += f"{user}:x:{uid}:\n"
        taken_uids.add(uid)
    (boot / "passwd").write_text(passwd)
    (boot / "group").write_text(group)
    (boot / "passwd").chmod(0o644)
    (boot / "group").chmod(0o644)


_cgroup_ids = itertools.count(1)


def _make_cgroup(parent: Path | None = None, *, cpuset: bool = False) -> Path:
    """A fresh child of `parent` (default: this process's cgroup2 directory); stale ones of dead
    runs are removed. `cpuset`: a v1 cpuset child, which takes no process until it has CPUs."""
    parent = _cgroup2_dir() if parent is None else parent
    for stale in parent.glob("prober-sandbox-*"):
        owner = stale.name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(SandboxError, OSError):  # still emptying: next time
                _remove_cgroup(stale)
    path = parent / f"prober-sandbox-{os.getpid()}-{next(_cgroup_ids)}"
    path.mkdir()
    if cpuset:
        for name in ("cpuset.cpus", "cpuset.mems"):
            (path / name).write_text((parent / name).read_text())
    return path


def _remove_cgroup(path: Path) -> None:
    """Remove an (empty) cgroup tree, deepest first; a cgroup with processes stays and says so."""
    dirs = [Path(root) for root, _, _ in os.walk(path)]
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            procs = (directory / "cgroup.procs").read_text().split()
            raise SandboxError(f"cgroup {directory} still has processes {procs}: {exc}") from exc


# ---- caddy in front of the stand-in: the stack prober watches -----------------------------------


@dataclass(frozen=True)
class Stack:
    """caddy.service reverse-proxying to backend.service (the stand-in), both inside a sandbox."""

    backend_port: int
    caddy_port: int
    admin_port: int
    admin_url: str
    fail_file: Path
    dump_file: Path  # where the stand-in writes its "thread dump" on SIGQUIT
    backend_unit: str = "backend.service"
    caddy_unit: str = "caddy.service"
    slow_file: Path | None = None  # while it exists, the stand-in sleeps the seconds it says

    @property
    def caddy_url(self) -> str:
        """caddy's site, e.g. f"{stack.caddy_url}/health"."""
        return f"http://127.0.0.1:{self.caddy_port}"

    @property
    def backend_url(self) -> str:
        """The stand-in itself, bypassing caddy."""
        return f"http://127.0.0.1:{self.backend_port}"

    @property
    def empty_config(self) -> dict[str, object]:
        """A body for POST {admin_url}/load that unloads every server but keeps the admin API.

        A bare `{}` unloads them too, but also moves the admin API to the fixed localhost:2019,
        which another sandbox (or a host caddy) may hold. Then the load fails (400), caddy keeps
        serving, and caddy 2.6.2 leaves its unit `reloading` for good (RELOADING=1, no READY=1).
        """
        return {"admin": {"listen": f"127.0.0.1:{self.admin_port}"}}


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def caddyfile(*, caddy_port: int, admin_port: int, backend_port: int) -> str:
    """The Caddyfile of the stack: admin API and one plain-HTTP site on loopback."""
    return f"""\
{{
	admin 127.0.0.1:{admin_port}
	auto_https off
}}

http://127.0.0.1:{caddy_port} {{
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:{backend_port}
}}
"""


def start_stack(sandbox: Sandbox, *, timeout: float = 10) -> Stack:
    """Start backend.service (the stand-in) and caddy.service in front of it; wait for both."""
    backend_port, caddy_port, admin_port = free_ports(3)
    home = sandbox.workdir / "caddy"
    for sub in ("data", "config"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    config = home / "Caddyfile"
    config.write_text(
        caddyfile(caddy_port=caddy_port, admin_port=admin_port, backend_port=backend_port))
    stack = Stack(
        backend_port=backend_port,
        caddy_port=caddy_port,
        admin_port=admin_port,
        admin_url=f"http://127.0.0.1:{admin_port}",
        fail_file=sandbox.workdir / "backend.fail",
        dump_file=sandbox.workdir / "backend.dump",
        slow_file=sandbox.workdir / "backend.slow",
    )
    sandbox.write_service(
        stack.backend_unit,
        [sys.executable, str(STANDIN), "--port", str(backend_port),
         "--fail-file", str(stack.fail_file), "--dump-file", str(stack.dump_file),
         "--slow-file", str(stack.slow_file)],
        env={"PYTHONUNBUFFERED": "1"},
        reload=False,
    )
    sandbox.write_service(
        stack.caddy_unit,
        [CADDY, "run", "--config", str(config), "--adapter", "caddyfile"],
        type="notify",
        env={"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
             "XDG_CONFIG_HOME": str(home / "config")},
        unit_extra=f"Wants={stack.backend_unit}\nAfter={stack.backend_unit}",
        service_extra="TimeoutStopSec=5s",
    )
    sandbox.systemctl("start", stack.backend_unit, stack.caddy_unit)
    sandbox.wait_active(stack.backend_unit, timeout=timeout)
    sandbox.wait_active(stack.caddy_unit, timeout=timeout)
    sandbox.wait_port(backend_port, timeout=timeout)
    sandbox.wait_port(caddy_port, timeout=timeout)
    return stack
