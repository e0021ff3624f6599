"""Real memory pressure for end-to-end tests: a memory-limited group in a sealed systemd, and the
hogs of the 2018 outage (tests/support/hogs.py) in it.

    with Sandbox(workdir, users=["prober"], memory=True) as box:
        stack = start_stack(box)                    # caddy + the stand-in, in system.slice
        with MemoryPressure(box, limit_mib=300) as harness:   # the sandbox: 300 MiB, all told
            harness.thrash()                        # thrasher.service: a file twice the limit
            harness.wait_stalling(some=5)           # its own PSI: some avg10 >= 5 %
            grower = harness.grow(rate_mib=16)      # grower.service, oom_score_adj=1000
            harness.wait_oom_killed(grower)         # seconds until the kernel killed it
            harness.kernel_oom_kills()              # the kernel's log of each kill, and whose
            harness.oom_kills(harness.cgroup(grower))   # the kernel's count for that cgroup
        box.pin_psi(some=45, full=30)               # or: a fixed host reading, no hogs at all

It needs a sandbox with a memory controller: Sandbox(memory=True). The limited group is by
default the whole sandbox (its root cgroup, limited from the host): a machine with that much
memory, where the services under test, the prober's units (in prober.slice, as shipped),
systemd and the bus all compete, as on the 2018 host. `group="system.slice"` limits a slice
instead, the way an operator would: `systemctl set-property --runtime system.slice
MemoryMax=`, which systemd writes where the controller is (`memory.limit_in_bytes` on a v1,
hybrid host such as these machines, `memory.max` on a v2 one). Either way limit() reads the
kernel's limit back and fails loudly if nothing enforces it. The hogs run in system-hogs.slice,
so that their OOM kills can be told from anyone else's.

PSI is host-wide. /proc/pressure/memory counts the stalls of every task on the machine: this
sandbox's, and everyone else's (other people run memory-pressure tests on these machines too),
and the sandbox does not isolate it. So a test never asserts a host reading it did not pin:
- to know the harness stalls, read a cgroup's own `memory.pressure` (unit_pressure(),
  wait_stalling()): it counts only that cgroup's tasks;
- to make the prober see a given host reading, pin it (Sandbox.pin_psi);
- a test about something else, whose target may fail slowly, pins a calm one.
Real pressure also slows everything in the group, the prober included, by amounts that move
with the host's load: assert on what happened (restarted, at which count, killed by whom), and
leave durations to `make bench`.

Everything started here is a unit of the sandbox (stopped with it), and every file lives in
its work directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from prober.core.psi import MemoryUser, PressureReading
from prober.memory.cgroups import (
    CgroupMounts,
    read_cgroup_mounts,
    read_unit_pressure,
    top_memory_users,
)
from tests.support.hogs import make_file
from tests.support.sandbox import REPO, Sandbox, SandboxError

HOGS = REPO / "tests" / "support" / "hogs.py"
HOGS_SLICE = "system-hogs.slice"
THRASHER = "thrasher.service"
GROWER = "grower.service"
MIB = 1024 * 1024
# Every restart of a looping unit is systemd's: one that died in a loop would otherwise hit the
# default start limit and stay failed, which is another case.
NO_START_LIMIT = "StartLimitIntervalSec=0"
_UNLIMITED = 1 << 62  # v1 reports "no limit" as a page-rounded LONG_MAX


class HarnessError(SandboxError):
    """The harness could not make the pressure it was asked for."""


@dataclass(frozen=True)
class OomKill:
    """One OOM kill, as the kernel logged it."""

    cgroup: str  # the victim's memory cgroup, as systemd names it: /system.slice/x.service
    task: str  # its command name
    pid: int  # its PID on the host
    limit_of: str  # the cgroup whose limit was hit


_OOM_LINE = re.compile(r"oom-kill:.*?oom_memcg=(?P<memcg>[^,]*),task_memcg=(?P<task_memcg>[^,]*),"
                       r"task=(?P<task>[^,]*),pid=(?P<pid>\d+)")
KMSG = "/dev/kmsg"


def kernel_log(after: int = -1) -> list[tuple[int, str]]:
    """The kernel's log records (sequence number, text) numbered above `after`; empty where
    /dev/kmsg cannot be read."""
    records: list[tuple[int, str]] = []
    try:
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return records
    try:
        while True:
            try:
                record = os.read(fd, 16384).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten while we read: go on
                    continue
                break
            header, _, text = record.partition(";")
            fields = header.split(",")
            if len(fields) >= 2 and fields[1].isdigit() and int(fields[1]) > after:
                records.append((int(fields[1]), text.splitlines()[0] if text else ""))
    finally:
        os.close(fd)
    return records


class MemoryPressure:
    """A memory limit on `group` inside `box`, and the hogs, started and stopped on demand."""

    def __init__(self, box: Sandbox, *, limit_mib: int = 300, group: str = "/") -> None:
        if not box.memory:
            raise HarnessError("MemoryPressure needs Sandbox(memory=True): without a memory "
                               "controller systemd accepts MemoryMax= and enforces nothing")
        self.box = box
        self.group = group
        self.limit_mib = limit_mib
        self.started: dict[str, float] = {}  # unit -> time.monotonic() at its start
        self._files: list[Path] = []
        self._log_seen = max((seq for seq, _ in kernel_log()), default=-1)

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.limit(self.limit_mib)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the hogs, lift the limit, delete the hogs' files (the sandbox may live on)."""
        if self.box.running:
            self.box.systemctl("stop", THRASHER, GROWER, check=False)
            self.box.systemctl("reset-failed", THRASHER, GROWER, check=False)
            if self.group == "/":
                self._write_root_limit(None)
            else:
                self.box.systemctl("set-property", "--runtime", self.group,
                                   "MemoryMax=infinity", check=False)
        while self._files:
            self._files.pop().unlink(missing_ok=True)

    def limit(self, mib: int) -> None:
        """Cap the group at `mib` MiB and check that the kernel enforces it."""
        if self.group == "/":
            self._write_root_limit(mib * MIB)
            found = self.memory_limit("/")
        else:
            self.box.systemctl("set-property", "--runtime", self.group, f"MemoryMax={mib}M")
            found = self.memory_limit(self.cgroup(self.group))
        if found != mib * MIB:
            raise HarnessError(f"{self.group}: MemoryMax={mib}M left the kernel's limit at "
                               f"{found} ({self.mounts().layout} layout)")
        self.limit_mib = mib

    # ---- the hogs --------------------------------------------------------------------------------

    def thrash(self, mib: int | None = None, workers: int = 2) -> str:
        """Start thrasher.service: `workers` processes reading a file of `mib` MiB (default twice
        the limit) page by page, over and over. Returns the unit's name."""
        size = mib if mib is not None else 2 * self.limit_mib
        data = self.box.workdir / f"thrash-{size}.bin"
        if not data.exists():
            make_file(data, size)
            self._files.append(data)
        return self._start(THRASHER, ["thrash", str(data), "--workers", str(workers)])

    def grow(self, rate_mib: float = 16, step_mib: int = 4, oom_score_adj: int = 1000,
             max_mib: int | None = None) -> str:
        """Start grower.service: a parent (Sidekiq) whose child (`convert`) grows anonymous
        memory by `rate_mib` MiB/s with `oom_score_adj` (1000: the kernel's first victim). The
        parent and the unit's cgroup outlive the child. Returns the unit's name."""
        argv = ["grow", "--parent", "--rate", f"{rate_mib:g}", "--step", str(step_mib),
                "--oom-score-adj", str(oom_score_adj)]
        if max_mib is not None:
            argv += ["--max", str(max_mib)]
        return self._start(GROWER, argv)

    def _start(self, unit: str, args: list[str], extra: str = "") -> str:
        self.box.write_service(unit, [sys.executable, str(HOGS), *args],
                               env={"PYTHONUNBUFFERED": "1"},
                               service_extra=f"Slice={HOGS_SLICE}\n{extra}")
        self.box.systemctl("reset-failed", unit, check=False)
        self.started[unit] = time.monotonic()
        self.box.systemctl("start", unit)
        return unit

    def stop_hog(self, unit: str) -> None:
        self.box.systemctl("stop", unit, check=False)

    def move(self, unit: str, into: str) -> list[int]:
        """Move `unit`'s processes into `into`'s cgroup (systemd's AttachProcessesToUnit; `into`
        needs Delegate=yes): their stalls then count in `into`'s own PSI, as a job's ImageMagick
        children count in Sidekiq's. Returns their PIDs (inside the sandbox); end them with
        kill()."""
        procs = Path(self.mounts().unified or "/nonexistent") / self.cgroup(unit).strip("/")
        pids = [int(p) for p in (procs / "cgroup.procs").read_text().split()]
        inside = [str(self._inside_pid(pid)) for pid in pids]
        if not inside:
            raise HarnessError(f"{unit} has no processes to move")
        self.box.run(["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                      "org.freedesktop.systemd1.Manager", "AttachProcessesToUnit", "ssau", into,
                      "", str(len(inside)), *inside], check=True)
        return [int(p) for p in inside]

    def kill(self, pids: list[int]) -> None:
        """SIGKILL processes of the sandbox by their PIDs inside it."""
        self.box.run(["kill", "-KILL", *(str(p) for p in pids)], check=False)

    def _inside_pid(self, host_pid: int) -> int:
        for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        raise HarnessError(f"no NSpid for process {host_pid}")

    def hog_log(self, unit: str) -> str:
        """What a hog printed (`pass N ...`, `grown N MiB`)."""
        try:
            return self.box.log_path(unit).read_text()
        except OSError:
            return ""

    # ---- what the kernel says ----------------------------------------------------------------

    def mounts(self) -> CgroupMounts:
        """The sandbox's cgroup mounts, as paths this (host) process can open."""
        root = f"/proc/{self.box.pid}/root"
        return read_cgroup_mounts(f"/proc/{self.box.pid}/mountinfo", root)

    def cgroup(self, unit: str) -> str:
        """systemd's ControlGroup of a unit, e.g. "/system.slice/caddy.service" ("" if none);
        "/" for the root slice, the whole sandbox."""
        if unit in ("-.slice", "/"):
            return "/"
        return self.box.unit_property(unit, "ControlGroup")

    def unit_pressure(self, unit: str) -> PressureReading | None:
        """The unit's own memory PSI: its tasks' stalls only, whatever the host's load."""
        cgroup = self.cgroup(unit)
        return read_unit_pressure(cgroup, self.mounts()) if cgroup else None

    def wait_stalling(self, unit: str = THRASHER, some: float = 5.0, within: float = 45
                      ) -> PressureReading:
        """Wait until `unit`'s own PSI `some avg10` reaches `some` percent; return the reading."""
        deadline = time.monotonic() + within
        reading = None
        while time.monotonic() < deadline:
            reading = self.unit_pressure(unit)
            if reading is not None and reading.pressure.some_avg10 >= some:
                return reading
            time.sleep(0.5)
        raise HarnessError(f"{unit} did not stall {some}% of the time within {within}s "
                           f"(last reading: {reading}); its log:\n{self.hog_log(unit)[-500:]}")

    def top_memory(self, count: int = 3) -> tuple[MemoryUser, ...]:
        """The largest memory users inside, as prober.memory.pressure ranks them."""
        return top_memory_users(count, self.mounts(), proc="/nonexistent")

    def _memory_file(self, cgroup: str, v1: str, v2: str) -> Path:
        mounts = self.mounts()
        if mounts.memory_root is None:
            raise HarnessError(f"no memory hierarchy inside the sandbox ({mounts})")
        name = v1 if mounts.memory_v1 is not None else v2
        return Path(mounts.memory_root) / cgroup.strip("/") / name

    def _write_root_limit(self, size: int | None) -> None:
        v1 = self.mounts().memory_v1 is not None
        value = str(size) if size is not None else ("-1" if v1 else "max")
        self._memory_file("/", "memory.limit_in_bytes", "memory.max").write_text(value)

    def memory_limit(self, cgroup: str) -> int | None:
        """The kernel's memory limit of a cgroup in bytes (None: unlimited)."""
        text = self._memory_file(cgroup, "memory.limit_in_bytes", "memory.max").read_text()
        value = text.strip()
        if value == "max" or int(value) >= _UNLIMITED:
            return None
        return int(value)

    def oom_kills(self, cgroup: str) -> int:
        """Processes of `cgroup` and below killed by the OOM killer, as the kernel counts them
        (v1 memory.oom_control, v2 memory.events: `oom_kill`)."""
        path = self._memory_file(cgroup, "memory.oom_control", "memory.events")
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise HarnessError(f"no oom_kill count in {path}")

    def wait_oom_killed(self, unit: str = GROWER, within: float = 90) -> float:
        """Wait until the grower's child was SIGKILLed (its parent says so); return the seconds
        since the unit started."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            log = self.hog_log(unit)
            if " killed by SIGKILL" in log:
                return time.monotonic() - self.started[unit]
            if " exited with " in log or " killed by " in log or \
                    self.box.unit_property(unit, "ActiveState") != "active":
                raise HarnessError(f"{unit}: the grower ended otherwise:\n{log[-500:]}")
            time.sleep(0.2)
        raise HarnessError(f"{unit} still alive after {within}s; its log:\n"
                           f"{self.hog_log(unit)[-500:]}")

    def grower_mib(self, unit: str = GROWER) -> int:
        """How far the grower got (MiB), from its log."""
        grown = re.findall(r"grown (\d+) MiB", self.hog_log(unit))
        return int(grown[-1]) if grown else 0

    def kernel_oom_kills(self) -> list[OomKill]:
        """Every OOM kill the kernel logged, since this harness began, of a process in this
        sandbox; cgroups as systemd names them inside. Empty where the log is unreadable
        (kernel_log_readable())."""
        prefix = self._memory_cgroup_prefix()
        kills = []
        for _, text in kernel_log(self._log_seen):
            found = _OOM_LINE.search(text)
            if found is None or not _is_under(found["task_memcg"], prefix):
                continue
            kills.append(OomKill(cgroup=found["task_memcg"][len(prefix):] or "/",
                                 task=found["task"], pid=int(found["pid"]),
                                 limit_of=found["memcg"][len(prefix):] or "/"))
        return kills

    def _memory_cgroup_prefix(self) -> str:
        """The host path of the cgroup the sandbox's memory hierarchy is rooted at."""
        mounts = read_cgroup_mounts(f"/proc/{self.box.pid}/mountinfo")
        point = mounts.memory_root
        roots = [fields[3] for line in
                 Path(f"/proc/{self.box.pid}/mountinfo").read_text().splitlines()
                 if len(fields := line.split(" - ", 1)[0].split()) >= 5 and fields[4] == point]
        if not roots:
            raise HarnessError(f"the sandbox's memory hierarchy ({point}) is not in its "
                               "mountinfo")
        return roots[-1].rstrip("/")  # the last mount there is the visible one


def kernel_log_readable() -> bool:
    """Whether this process can read the kernel's log (/dev/kmsg: root, dmesg_restrict)."""
    with contextlib.suppress(OSError):
        os.close(os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK))
        return True
    return False


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def write_oom_loop(box: Sandbox, unit: str = "netdata.service", memory_max_mib: int = 48,
                   restart_sec: int = 1) -> str:
    """Write (not start) netdata's stand-in as it was in 2018: it outgrows its `MemoryMax=`
    at once, the kernel OOM-kills it, systemd restarts it `restart_sec` later, again and
    again. Returns `unit`."""
    box.write_service(unit, [sys.executable, str(HOGS), "grow", "--rate", "64", "--step", "8"],
                      env={"PYTHONUNBUFFERED": "1"}, unit_extra=NO_START_LIMIT,
                      service_extra=f"MemoryMax={memory_max_mib}M\nRestart=always\n"
                      f"RestartSec={restart_sec}\n")
    return unit


def oom_kills(reason: str) -> int:
    """How many OOM kills a reason counts ("was OOM-killed 4 times in 40m"), 0 for none."""
    found = re.search(r"OOM-killed (\d+) times", reason)
    return int(found.group(1)) if found else 0
