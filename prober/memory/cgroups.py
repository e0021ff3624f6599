"""The cgroup tree, for failing runs: a unit's own memory PSI, and who holds the memory.

A unit's own PSI (`memory.pressure` of its cgroup, under whichever cgroup2 mount exists) says
whether that service itself stalls on memory; the largest memory users name the likely culprit;
a unit's OOM kills (`memory.events` on v2, `memory.oom_control` on v1) and the host's
(/proc/vmstat) say the kernel killed it.
Cgroup layouts this reads (detected from /proc/self/mountinfo, never assumed):
- unified (v2, Debian 12's default): cgroup2 on /sys/fs/cgroup with the memory controller;
  units' anonymous memory is `anon` in their `memory.stat`;
- hybrid: a tmpfs on /sys/fs/cgroup, v1 controllers below it (memory at /sys/fs/cgroup/memory,
  where `total_rss`/`rss` of `memory.stat` count anonymous memory) and cgroup2 on
  /sys/fs/cgroup/unified, without the memory controller, yet with a `memory.pressure` per cgroup;
- legacy (v1 only): no per-unit PSI.
Where no memory hierarchy with units can be read, the largest users are processes, by their
anonymous resident memory (`/proc/PID/statm`).

The parsers are pure (text in, values out); the readers are thin and never raise: a missing or
unreadable file is "no reading" (None or an empty tuple). Reading costs a walk of the slices and
a pass over /proc, both bounded: only failing runs under pressure pay for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from prober.core.psi import MemoryUser, PressureReading, Scope
from prober.memory.pressure import read_psi_file

MOUNTINFO = "/proc/self/mountinfo"
PROC = "/proc"
VMSTAT = "/proc/vmstat"

# Bounds on the culprit search: it runs only in failing runs under pressure, on a stressed host.
MAX_CGROUPS = 4096  # cgroups visited in one walk of the memory hierarchy
MAX_DEPTH = 8  # slices nest (system.slice/system-getty.slice/...), not this deep
MAX_PROCESSES = 65536  # /proc entries looked at in the process fallback
_READ_LIMIT = 16384  # bytes read from one small kernel file (memory.stat, statm)
_VMSTAT_LIMIT = 65536  # /proc/vmstat has a few hundred short lines
_MOUNTINFO_LIMIT = 4 * 1024 * 1024  # a host with thousands of mounts stays well below this

# systemd unit types that own processes, and so memory, in a cgroup of their own.
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap")
_SLICE = ".slice"


class Layout(StrEnum):
    """How the cgroup hierarchies are mounted."""

    UNIFIED = "unified"  # cgroup2 only
    HYBRID = "hybrid"  # v1 controllers, plus cgroup2 for process tracking (and PSI)
    LEGACY = "legacy"  # v1 only
    NONE = "none"  # no cgroup file system mounted


@dataclass(frozen=True)
class CgroupMounts:
    """Where the cgroup file systems are mounted (paths as this process sees them)."""

    unified: str | None = None  # the cgroup2 mount point
    memory_v1: str | None = None  # the v1 hierarchy holding the memory controller
    memory_on_unified: bool = False  # the memory controller is enabled on cgroup2

    @property
    def layout(self) -> Layout:
        v1 = self.memory_v1 is not None
        if self.unified is not None:
            return Layout.HYBRID if v1 else Layout.UNIFIED
        return Layout.LEGACY if v1 else Layout.NONE

    @property
    def memory_root(self) -> str | None:
        """The hierarchy whose `memory.stat` files count each cgroup's memory."""
        if self.memory_v1 is not None:
            return self.memory_v1
        return self.unified if self.memory_on_unified else None

    def rebased(self, root: str) -> CgroupMounts:
        """The same mounts seen through `root`, e.g. /proc/PID/root for another namespace."""
        def under(path: str | None) -> str | None:
            return None if path is None else root.rstrip("/") + path

        return CgroupMounts(under(self.unified), under(self.memory_v1), self.memory_on_unified)


# --- pure parsers ------------------------------------------------------------------------------


def _unescape_mount_path(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> CgroupMounts:
    """The cgroup2 mount and the v1 memory hierarchy, from /proc/self/mountinfo.

    `memory_on_unified` is left False: whether cgroup2 holds the memory controller is in its
    `cgroup.controllers`, which read_cgroup_mounts() reads.
    """
    visible: list[tuple[str, str, str]] = []  # (mount point, type, super options)
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        point = _unescape_mount_path(fields[4])
        # Lines come in mount order: a mount on `point` hides what was mounted there or below
        # (a container's copy of the host's /sys/fs/cgroup under a fresh /sys, for one).
        below = point.rstrip("/") + "/"
        visible = [m for m in visible if m[0] != point and not m[0].startswith(below)]
        visible.append((point, tail[0], tail[2]))
    unified = next((p for p, kind, _ in visible if kind == "cgroup2"), None)
    memory = next((p for p, kind, options in visible
                   if kind == "cgroup" and "memory" in options.split(",")), None)
    return CgroupMounts(unified=unified, memory_v1=memory)


def anon_bytes(memory_stat: str, layout: Layout) -> int | None:
    """Anonymous memory of a cgroup and its descendants, from its `memory.stat`.

    v2 counts it as `anon` (hierarchical). v1 as `total_rss` (hierarchical) or `rss` (this
    cgroup alone; an older kernel or use_hierarchy=0). None if the file has neither.
    """
    values: dict[str, int] = {}
    for line in memory_stat.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    keys = ("total_rss", "rss") if layout in (Layout.HYBRID, Layout.LEGACY) else ("anon",)
    for key in keys:
        if key in values:
            return values[key]
    return None


def statm_anon_bytes(statm: str, page_size: int) -> int | None:
    """Anonymous resident memory from /proc/PID/statm: resident minus shared (file and shmem)
    pages. None for an unreadable line; 0 for a kernel thread."""
    fields = statm.split()
    if len(fields) < 3 or not (fields[1].isdigit() and fields[2].isdigit()):
        return None
    return max(0, int(fields[1]) - int(fields[2])) * page_size


def is_unit_cgroup(name: str) -> bool:
    """Whether a cgroup directory is a unit that runs processes (not a slice, not a helper)."""
    return name.endswith(_UNIT_SUFFIXES) and not name.startswith(".")


def valid_control_group(path: str) -> bool:
    """A cgroup path as systemd's ControlGroup gives it: absolute, no `..`, no empty parts."""
    if not path.startswith("/") or "\0" in path:
        return False
    parts = path.strip("/").split("/")
    return path == "/" or all(part not in ("", ".", "..") for part in parts)


def oom_kill_count(text: str) -> int | None:
    """The `oom_kill` line of a v2 `memory.events` or a v1 `memory.oom_control`: how many
    processes of the cgroup (and of the cgroups below it) the kernel killed for memory."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value.strip())
    return None


def largest(users: Iterable[MemoryUser], count: int) -> tuple[MemoryUser, ...]:
    """The `count` largest users, largest first (ties by name, for stable reports)."""
    ranked = sorted((u for u in users if u.bytes > 0), key=lambda u: (-u.bytes, u.name))
    return tuple(ranked[:max(0, count)])


# --- thin readers ------------------------------------------------------------------------------


def _read_small(path: str, limit: int = _READ_LIMIT) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return None


def read_cgroup_mounts(mountinfo: str = MOUNTINFO, root: str = "") -> CgroupMounts:
    """This process's cgroup mounts; CgroupMounts() (layout NONE) if mountinfo is unreadable.

    `mountinfo` and `root` may name another process's (/proc/PID/mountinfo, /proc/PID/root):
    the mounts of its namespace, as paths this process can open.
    """
    text = _read_small(mountinfo, _MOUNTINFO_LIMIT)
    if text is None:
        return CgroupMounts()
    mounts = parse_mountinfo(text)
    if root:
        mounts = mounts.rebased(root)
    if mounts.unified is None:
        return mounts
    controllers = _read_small(os.path.join(mounts.unified, "cgroup.controllers")) or ""
    return CgroupMounts(mounts.unified, mounts.memory_v1, "memory" in controllers.split())


def read_unit_pressure(control_group: str, mounts: CgroupMounts | None = None
                       ) -> PressureReading | None:
    """The memory PSI of one unit's cgroup (`control_group` is systemd's ControlGroup property,
    e.g. "/system.slice/caddy.service"), from its `memory.pressure` under the cgroup2 mount.

    None where that cannot be read (no cgroup2, a kernel without PSI, a cgroup that is gone):
    the caller then quotes the host's reading (read_host_pressure) and says so.
    """
    if not valid_control_group(control_group):
        return None
    mounts = read_cgroup_mounts() if mounts is None else mounts
    if mounts.unified is None:
        return None
    path = os.path.join(mounts.unified, control_group.strip("/"), "memory.pressure")
    pressure = read_psi_file(path)
    return None if pressure is None else PressureReading(pressure, Scope.UNIT, path,
                                                         control_group)


def read_oom_kills(control_group: str, mounts: CgroupMounts | None = None) -> int | None:
    """The OOM kills one unit's cgroup counted (`control_group` as systemd gives it): v1's
    `memory.oom_control` where the memory controller is on v1, else v2's `memory.events`.

    None where that cannot be read: no memory controller, a kernel older than the counter, a
    cgroup that is gone (a unit between runs has none).
    """
    if not valid_control_group(control_group):
        return None
    mounts = read_cgroup_mounts() if mounts is None else mounts
    if mounts.memory_v1 is not None:
        path = os.path.join(mounts.memory_v1, control_group.strip("/"), "memory.oom_control")
    elif mounts.unified is not None and mounts.memory_on_unified:
        path = os.path.join(mounts.unified, control_group.strip("/"), "memory.events")
    else:
        return None
    text = _read_small(path)
    return None if text is None else oom_kill_count(text)


def read_host_oom_kills(vmstat: str = VMSTAT) -> int | None:
    """The kernel's count of OOM kills on this host since boot (`oom_kill` of /proc/vmstat,
    Linux 4.13 and later); None where it cannot be read."""
    text = _read_small(vmstat, _VMSTAT_LIMIT)
    return None if text is None else oom_kill_count(text)


def unit_memory_users(mounts: CgroupMounts) -> list[MemoryUser]:
    """Units (leaves of the slices) by anonymous memory: one bounded walk of the memory
    hierarchy, descending only into slices. Empty where there is none to read."""
    root = mounts.memory_root
    if root is None:
        return []
    users: list[MemoryUser] = []
    pending = [(root, 0)]
    visited = 0
    while pending and visited < MAX_CGROUPS:
        directory, depth = pending.pop()
        try:
            with os.scandir(directory) as entries:
                children = [(e.name, e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for name, path in children:
            visited += 1
            if visited > MAX_CGROUPS:
                break
            if name.endswith(_SLICE) and depth < MAX_DEPTH:
                pending.append((path, depth + 1))
            elif is_unit_cgroup(name):
                text = _read_small(os.path.join(path, "memory.stat"))
                anon = None if text is None else anon_bytes(text, mounts.layout)
                if anon is not None:
                    users.append(MemoryUser(name, anon))
    return users


def process_memory_users(proc: str = PROC) -> list[MemoryUser]:
    """Processes by anonymous resident memory, named `comm (pid N)`: one pass over /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    users: list[MemoryUser] = []
    try:
        with os.scandir(proc) as entries:
            pids = [e.name for e in entries if e.name.isdigit()]
    except OSError:
        return []
    for pid in pids[:MAX_PROCESSES]:
        statm = _read_small(os.path.join(proc, pid, "statm"))
        anon = None if statm is None else statm_anon_bytes(statm, page)
        if not anon:
            continue
        comm = (_read_small(os.path.join(proc, pid, "comm")) or "?").strip() or "?"
        users.append(MemoryUser(f"{comm} (pid {pid})", anon))
    return users


def top_memory_users(count: int = 3, mounts: CgroupMounts | None = None,
                     proc: str = PROC) -> tuple[MemoryUser, ...]:
    """The `count` largest memory users by anonymous memory, largest first.

    Units where a memory hierarchy with units can be read (page cache is not counted, or the
    database and the file a thrasher reads would be named); processes otherwise.
    """
    mounts = read_cgroup_mounts() if mounts is None else mounts
    users = unit_memory_users(mounts)
    if not users:
        users = process_memory_users(proc)
    return largest(users, count)
