"""Memory pressure: PSI parsing, per-unit PSI, and the largest memory users, on every cgroup layout.

The v2 (unified) paths cannot run here (the memory controller of these machines is on cgroup v1):
they are tested with fixture trees under tests/testdata/cgroups. The v1 paths and per-unit PSI
are also tested for real, in cgroups created for the test and removed after it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prober.core.psi import MemoryUser, Pressure, PressureReading, Scope, parse_psi
from prober.memory.cgroups import (
    MAX_CGROUPS,
    CgroupMounts,
    Layout,
    anon_bytes,
    is_unit_cgroup,
    largest,
    oom_kill_count,
    parse_mountinfo,
    process_memory_users,
    read_cgroup_mounts,
    read_oom_kills,
    read_unit_pressure,
    statm_anon_bytes,
    top_memory_users,
    unit_memory_users,
    valid_control_group,
)
from prober.memory.pressure import PSI_MEMORY, read_host_pressure, read_memory_pressure
from tests.support.servers import health, serve

SAMPLE = ("some avg10=12.50 avg60=3.25 avg300=0.80 total=123456\n"
          "full avg10=4.00 avg60=1.00 avg300=0.10 total=65432\n")
DATA = Path(__file__).parent / "testdata" / "cgroups"
UNIFIED_TREE = DATA / "unified-tree"
V1_TREE = DATA / "v1-memory-tree"
MIB = 1024 * 1024


def test_parse_psi() -> None:
    """The kernel's some/full lines become percentages over 10 s and 60 s."""
    assert parse_psi(SAMPLE) == Pressure(12.5, 3.25, 4.0, 1.0)


def test_parse_psi_of_a_kernel_without_full_line() -> None:
    """Older kernels print no `full` line for memory's parent: full reads as 0."""
    assert parse_psi(SAMPLE.splitlines()[0]) == Pressure(12.5, 3.25, 0.0, 0.0)


def test_missing_psi_is_none(tmp_path: Path) -> None:
    """A kernel without PSI (or an unreadable file) gives None, not an error."""
    assert read_memory_pressure(str(tmp_path / "nope")) is None
    assert read_host_pressure(str(tmp_path / "nope")) is None


def test_garbled_psi_is_none(tmp_path: Path) -> None:
    """A file that is not PSI gives None, not an error."""
    bad = tmp_path / "psi"
    bad.write_text("some avg10=lots\n")
    assert read_memory_pressure(str(bad)) is None


@pytest.mark.skipif(not os.path.exists(PSI_MEMORY), reason="this kernel has no PSI")
def test_check_reports_pressure(tmp_path: Path) -> None:
    """`check --json` carries the host's memory pressure, read from /proc/pressure/memory."""
    with serve(health()) as server:
        config = tmp_path / "prober.toml"
        config.write_text(f'[[target]]\nname = "web"\nurl = "{server.url("/health")}"\n')
        done = subprocess.run(
            [sys.executable, "-m", "prober", "check", "--json", "--config", str(config),
             "--state", str(tmp_path / "state.json")],
            capture_output=True, text=True, timeout=60, check=False)
    pressure = json.loads(done.stdout)["memory_pressure"]
    assert set(pressure) == {"some_avg10", "some_avg60", "full_avg10", "full_avg60"}
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in pressure.values())


def _check_with_host_psi(tmp_path: Path, some: float, *args: str
                         ) -> subprocess.CompletedProcess[str]:
    """`prober ARGS` in a private mount namespace whose /proc/pressure/memory reads `some`%."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("needs root to mount")
    psi = tmp_path / f"psi-{some}"
    psi.write_text(f"some avg10={some:.2f} avg60={some:.2f} avg300=0.00 total=1\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")
    argv = " ".join([sys.executable, "-m", "prober", *args])
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {psi} {PSI_MEMORY} && exec {argv}"],
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("some", [45.0, 0.0], ids=["under-pressure", "idle"])
def test_the_culprit_is_named_wherever_the_run_is_told(tmp_path: Path, some: float) -> None:
    """A monitor-only target fails (refused) while the host's PSI reads `some`. Under pressure
    the largest memory users, read from this host, are named in the JSON `top_memory`, the
    text summary, the `down` notification, the history entry and `prober status`; idle, none
    of them names anyone (only failing runs under pressure pay for the walk)."""
    events = tmp_path / "events.jsonl"
    record = tmp_path / "record.py"
    record.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n")
    config = tmp_path / "prober.toml"
    config.write_text(f'[notify]\ncommand = ["{sys.executable}", "{record}", "{events}"]\n'
                      '[[target]]\nname = "web"\nurl = "http://127.0.0.1:1/health"\n'
                      "failure_threshold = 1\n")
    files = ["--config", str(config), "--state", str(tmp_path / "state.json")]
    first = _check_with_host_psi(tmp_path, some, "check", "--json", *files)
    assert first.returncode == 2, first.stderr
    top = json.loads(first.stdout)["top_memory"]
    second = _check_with_host_psi(tmp_path, some, "check", *files)
    status = _check_with_host_psi(tmp_path, some, "status", *files)
    down = [e for e in json.loads((tmp_path / "state.json").read_text())["targets"]["web"]
            ["history"] if e["event"] == "down"]
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in sent] == ["down"]
    if some == 0.0:
        assert top == [] and sent[0]["top_memory"] == [] and "top_memory" not in down[0]
        assert "largest memory users" not in second.stdout + status.stdout
        return
    assert 1 <= len(top) <= 3
    assert all(u["bytes"] > 0 for u in top)
    assert [u["bytes"] for u in top] == sorted((u["bytes"] for u in top), reverse=True)
    named = ", ".join(u["name"] for u in top)
    assert "largest memory users: " in second.stdout, second.stdout
    assert sent[0]["top_memory"] == top
    assert down[0]["top_memory"] == top
    assert "largest memory users then: " in status.stdout, status.stdout
    assert top[0]["name"] in status.stdout and named.split(", ")[0] in second.stdout


def test_a_healthy_run_leaves_the_cgroup_readers_unloaded(tmp_path: Path) -> None:
    """A healthy check imports prober.memory.pressure only: the cgroup readers load on first use."""
    child = ("import json, sys\nfrom prober.shell.cli import run\ncode = run(sys.argv[1:])\n"
             "loaded = 'prober.memory.cgroups' in sys.modules\n"
             "from prober.memory.cgroups import top_memory_users\n"
             "print(json.dumps([code, loaded, 'prober.memory.cgroups' in sys.modules]))\n")
    with serve(health()) as server:
        config = tmp_path / "prober.toml"
        config.write_text(f'[[target]]\nname = "web"\nurl = "{server.url("/health")}"\n')
        done = subprocess.run(
            [sys.executable, "-c", child, "check", "--config", str(config),
             "--state", str(tmp_path / "state.json")],
            capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(done.stdout.splitlines()[-1]) == [0, False, True], done.stderr


# --- readings say whose they are -------------------------------------------------------------


@pytest.mark.parametrize(("reading", "text"), [
    (PressureReading(Pressure(41.25, 30, 12.5, 9), Scope.UNIT, "/x/memory.pressure",
                     "/system.slice/caddy.service"),
     "memory pressure of /system.slice/caddy.service: some 41.2% / full 12.5% of the last 10s"),
    (PressureReading(Pressure(7, 3, 1, 0), Scope.HOST, PSI_MEMORY),
     "memory pressure (host): some 7.0% / full 1.0% of the last 10s"),
], ids=["unit", "host"])
def test_reading_describes_its_source(reading: PressureReading, text: str) -> None:
    """A report quoting a reading can say whether it is the unit's own or the host's."""
    assert reading.describe() == text


def test_host_reading_is_marked_host(tmp_path: Path) -> None:
    """read_host_pressure() returns the host's figures, marked as the host's, with the file."""
    psi = tmp_path / "memory"
    psi.write_text(SAMPLE)
    reading = read_host_pressure(str(psi))
    assert reading == PressureReading(Pressure(12.5, 3.25, 4.0, 1.0), Scope.HOST, str(psi))


# --- cgroup layouts, from mountinfo ----------------------------------------------------------


@pytest.mark.parametrize(("fixture", "unified", "memory", "layout"), [
    ("mountinfo-debian12-unified", "/sys/fs/cgroup", None, Layout.UNIFIED),
    ("mountinfo-hybrid-host", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory", Layout.HYBRID),
    ("mountinfo-legacy", None, "/sys/fs/cgroup/memory", Layout.LEGACY),
    # a container's mount table still lists the host's tree it copied, hidden under a new /sys
    ("mountinfo-sandbox-unified", "/sys/fs/cgroup", None, Layout.UNIFIED),
    ("mountinfo-sandbox-hybrid", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory",
     Layout.HYBRID),
], ids=lambda v: v if isinstance(v, str) and v.startswith("mountinfo") else "")
def test_parse_mountinfo(fixture: str, unified: str | None, memory: str | None,
                         layout: Layout) -> None:
    """The cgroup2 mount and the v1 memory hierarchy are found where they are visible."""
    mounts = parse_mountinfo((DATA / fixture).read_text())
    assert (mounts.unified, mounts.memory_v1, mounts.layout) == (unified, memory, layout)


def test_parse_mountinfo_without_cgroups() -> None:
    """No cgroup file system at all: layout NONE, nothing to read."""
    mounts = parse_mountinfo("22 1 0:21 / /proc rw,relatime - proc proc rw\n")
    assert (mounts.layout, mounts.memory_root) == (Layout.NONE, None)


def test_mount_paths_are_unescaped() -> None:
    r"""mountinfo escapes a space in a path as \040."""
    line = "30 21 0:26 / /srv/my\\040cgroups rw - cgroup2 cgroup2 rw\n"
    assert parse_mountinfo(line).unified == "/srv/my cgroups"


@pytest.mark.parametrize(("mounts", "root"), [
    (CgroupMounts("/u", None, True), "/u"),
    (CgroupMounts("/u", None, False), None),
    (CgroupMounts("/u", "/m", False), "/m"),
    (CgroupMounts(None, "/m", False), "/m"),
    (CgroupMounts(), None),
], ids=["v2-with-memory", "v2-without-memory", "hybrid", "legacy", "none"])
def test_memory_root(mounts: CgroupMounts, root: str | None) -> None:
    """memory.stat is read from the v1 memory hierarchy, else from cgroup2 if it has memory."""
    assert mounts.memory_root == root


def test_rebased_mounts() -> None:
    """Mounts of another mount namespace are reachable through /proc/PID/root."""
    mounts = CgroupMounts("/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory")
    assert mounts.rebased("/proc/42/root/") == CgroupMounts(
        "/proc/42/root/sys/fs/cgroup/unified", "/proc/42/root/sys/fs/cgroup/memory")


def _host_root(tmp_path: Path, cgroup_dir: str, tree: Path) -> str:
    """A root file system holding `tree` at `cgroup_dir`, as /proc/PID/root shows another's."""
    mount = tmp_path / cgroup_dir.lstrip("/")
    mount.parent.mkdir(parents=True)
    mount.symlink_to(tree)
    return str(tmp_path)


def test_debian12_unified_host_is_read_end_to_end(tmp_path: Path) -> None:
    """A v2 host (Debian 12's default), from its mountinfo and cgroup tree: the memory
    controller is found on cgroup2 (its cgroup.controllers), so units are ranked by `anon` from
    cgroup2's memory.stat and a unit's own PSI is read there."""
    root = _host_root(tmp_path, "/sys/fs/cgroup", UNIFIED_TREE)
    mounts = read_cgroup_mounts(str(DATA / "mountinfo-debian12-unified"), root)
    assert mounts.layout is Layout.UNIFIED
    assert mounts.memory_on_unified
    assert mounts.memory_root == f"{root}/sys/fs/cgroup"
    assert tuple(u.name for u in top_memory_users(3, mounts, proc="/nonexistent")) == \
        EXPECTED_TOP
    reading = read_unit_pressure("/system.slice/caddy.service", mounts)
    assert reading is not None and reading.pressure.some_avg10 == 38.12


def test_cgroup2_without_the_memory_controller_is_not_read_for_memory(tmp_path: Path) -> None:
    """A hybrid host whose cgroup2 lists no memory controller (this machine's: hugetlb only):
    memory.stat comes from the v1 hierarchy, never from cgroup2's files."""
    unified = tmp_path / "tree"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    root = _host_root(tmp_path / "root", "/sys/fs/cgroup/unified", unified)
    mounts = read_cgroup_mounts(str(DATA / "mountinfo-hybrid-host"), root)
    assert mounts.layout is Layout.HYBRID
    assert not mounts.memory_on_unified
    assert mounts.memory_root == f"{root}/sys/fs/cgroup/memory"


def test_this_machine_is_detected() -> None:
    """The reader finds this machine's layout, whichever it is, and a readable memory.stat."""
    mounts = read_cgroup_mounts()
    if mounts.layout is Layout.NONE:
        pytest.skip("no cgroup file system mounted here")
    if mounts.memory_root is not None:
        assert os.path.exists(os.path.join(mounts.memory_root, "memory.stat"))


# --- anonymous memory, from memory.stat and statm ---------------------------------------------


@pytest.mark.parametrize(("text", "layout", "expected"), [
    ("anon 4096\nfile 999999\n", Layout.UNIFIED, 4096),
    ("cache 999999\nrss 8192\ntotal_cache 999999\ntotal_rss 12288\n", Layout.HYBRID, 12288),
    ("cache 999999\nrss 8192\n", Layout.LEGACY, 8192),
    ("file 5\n", Layout.UNIFIED, None),
    ("anon 4096\n", Layout.HYBRID, None),
    ("rss lots\n", Layout.LEGACY, None),
    ("", Layout.UNIFIED, None),
], ids=["v2-anon", "v1-total-rss", "v1-rss", "v2-no-anon", "v1-reads-no-v2-key",
        "garbled", "empty"])
def test_anon_bytes(text: str, layout: Layout, expected: int | None) -> None:
    """Anonymous memory only: v2 `anon`, v1 `total_rss` (else `rss`); never the page cache."""
    assert anon_bytes(text, layout) == expected


@pytest.mark.parametrize(("statm", "expected"), [
    ("765 438 410 5 0 123 0\n", (438 - 410) * 4096),
    ("0 0 0 0 0 0 0\n", 0),
    ("10 5 9 0 0 0 0\n", 0),
    ("", None),
    ("a b c\n", None),
], ids=["process", "kernel-thread", "shared-above-resident", "empty", "garbled"])
def test_statm_anon_bytes(statm: str, expected: int | None) -> None:
    """A process's anonymous resident memory is resident minus shared pages."""
    assert statm_anon_bytes(statm, 4096) == expected


@pytest.mark.parametrize(("name", "unit"), [
    ("caddy.service", True), ("session-3.scope", True), ("getty@tty1.service", True),
    ("system.slice", False), ("init.scope", True), ("cgroup.procs", False),
    ("prober-sandbox-1-2", False), (".service", False),
])
def test_is_unit_cgroup(name: str, unit: bool) -> None:
    """Units that run processes are listed; slices and other folders are not."""
    assert is_unit_cgroup(name) is unit


@pytest.mark.parametrize(("path", "valid"), [
    ("/system.slice/caddy.service", True), ("/", True), ("system.slice", False),
    ("/system.slice/../../etc", False), ("/a//b", False), ("/a/./b", False), ("", False),
])
def test_valid_control_group(path: str, valid: bool) -> None:
    """Only absolute cgroup paths without `..` are read (they come from systemd)."""
    assert valid_control_group(path) is valid


def test_largest_ranks_by_bytes_then_name() -> None:
    """Largest first; ties in name order; nobody with nothing; at most `count`."""
    users = [MemoryUser("b", 5), MemoryUser("a", 5), MemoryUser("c", 9), MemoryUser("z", 0)]
    assert largest(users, 3) == (MemoryUser("c", 9), MemoryUser("a", 5), MemoryUser("b", 5))
    assert largest(users, 0) == ()


# --- the largest users, from fixture trees (v2) and a v1 tree ---------------------------------


EXPECTED_TOP = ("mastodon-sidekiq.service", "mastodon-web.service", "redis-server.service")


def test_top_units_on_unified_tree() -> None:
    """v2: units ranked by `anon`; the database, with gigabytes of page cache, is not named."""
    mounts = CgroupMounts(unified=str(UNIFIED_TREE), memory_on_unified=True)
    top = top_memory_users(3, mounts, proc="/nonexistent")
    assert tuple(u.name for u in top) == EXPECTED_TOP
    assert top[0].bytes == 1900 * MIB


def test_top_units_on_v1_tree() -> None:
    """v1: the same ranking from `total_rss`."""
    mounts = CgroupMounts(unified="/nonexistent", memory_v1=str(V1_TREE))
    top = top_memory_users(3, mounts, proc="/nonexistent")
    assert tuple(u.name for u in top) == EXPECTED_TOP


def test_units_are_leaves_of_nested_slices() -> None:
    """Units in nested slices are found; slices themselves (their sums) never are."""
    users = {u.name: u.bytes for u in unit_memory_users(
        CgroupMounts(unified=str(UNIFIED_TREE), memory_on_unified=True))}
    assert users["getty@tty1.service"] == 300 * 1024
    assert users["session-3.scope"] == 8 * MIB
    assert "init.scope" in users
    assert not any(name.endswith(".slice") for name in users)
    assert len(users) == 11


def test_walk_is_bounded(tmp_path: Path) -> None:
    """A hierarchy with more cgroups than MAX_CGROUPS is read only up to that many."""
    big = tmp_path / "system.slice"
    for number in range(MAX_CGROUPS + 50):
        unit = big / f"u{number}.service"
        unit.mkdir(parents=True)
        (unit / "memory.stat").write_text(f"anon {number + 1}\n")
    users = unit_memory_users(CgroupMounts(unified=str(tmp_path), memory_on_unified=True))
    assert 0 < len(users) < MAX_CGROUPS


def test_no_memory_hierarchy_falls_back_to_processes(tmp_path: Path) -> None:
    """Without a readable memory hierarchy, processes are ranked by anonymous resident memory."""
    proc = tmp_path / "proc"
    for pid, comm, statm in ((1, "systemd", "4000 3000 2000"), (4242, "convert", "90000 80000 100"),
                             (77, "kthreadd", "0 0 0"), (12, "bash", "900 500 300")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(f"{comm}\n")
        (proc / str(pid) / "statm").write_text(f"{statm} 0 0 0 0\n")
    (proc / "self").mkdir()
    page = os.sysconf("SC_PAGE_SIZE")
    top = top_memory_users(2, CgroupMounts(unified="/nonexistent"), proc=str(proc))
    assert top == (MemoryUser("convert (pid 4242)", (80000 - 100) * page),
                   MemoryUser("systemd (pid 1)", 1000 * page))


def test_processes_of_this_host() -> None:
    """The process fallback reads this host's /proc and finds this very process."""
    mine = [u for u in process_memory_users() if u.name.endswith(f"(pid {os.getpid()})")]
    assert mine and mine[0].bytes > 1 * MIB


# --- per-unit PSI ------------------------------------------------------------------------------


def test_unit_pressure_from_fixture_tree() -> None:
    """A unit's memory.pressure under the cgroup2 mount is read, and says it is the unit's."""
    mounts = CgroupMounts(unified=str(UNIFIED_TREE), memory_on_unified=True)
    reading = read_unit_pressure("/system.slice/caddy.service", mounts)
    assert reading == PressureReading(
        Pressure(38.12, 21.5, 30.07, 15.2), Scope.UNIT,
        str(UNIFIED_TREE / "system.slice" / "caddy.service" / "memory.pressure"),
        "/system.slice/caddy.service")


@pytest.mark.parametrize("cgroup", ["/system.slice/gone.service", "/system.slice/../../x",
                                    "system.slice/caddy.service"])
def test_unit_pressure_unreadable_is_none(cgroup: str) -> None:
    """A cgroup that is gone, or a path that is not a cgroup path: no reading (the caller falls
    back to the host's)."""
    mounts = CgroupMounts(unified=str(UNIFIED_TREE), memory_on_unified=True)
    assert read_unit_pressure(cgroup, mounts) is None


def test_unit_pressure_without_cgroup2_is_none() -> None:
    """A legacy (v1-only) host has no per-unit PSI."""
    assert read_unit_pressure("/system.slice/caddy.service",
                              CgroupMounts(memory_v1=str(V1_TREE))) is None


# --- a unit's OOM kills ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "count"), [
    ("low 0\nhigh 12\nmax 40\noom 5\noom_kill 4\noom_group_kill 0\n", 4),  # v2 memory.events
    ("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", 3),  # v1 memory.oom_control
    ("oom_kill_disable 0\nunder_oom 0\n", None),  # v1 before Linux 4.13
    ("oom_kill x\n", None), ("oom_killer 2\n", None), ("", None),
])
def test_oom_kill_count(text: str, count: int | None) -> None:
    assert oom_kill_count(text) == count


def test_oom_kills_on_a_unified_host_from_memory_events(tmp_path: Path) -> None:
    """A v2 host (its mountinfo and cgroup tree): a unit's OOM kills are `oom_kill` of its
    cgroup's memory.events."""
    root = _host_root(tmp_path, "/sys/fs/cgroup", UNIFIED_TREE)
    mounts = read_cgroup_mounts(str(DATA / "mountinfo-debian12-unified"), root)
    assert read_oom_kills("/system.slice/caddy.service", mounts) == 4
    assert read_oom_kills("/system.slice/gone.service", mounts) is None
    assert read_oom_kills("/system.slice/../../caddy.service", mounts) is None


def test_oom_kills_on_v1_from_memory_oom_control() -> None:
    """Where the memory controller is on v1 (this machine's hybrid layout), memory.oom_control
    counts them, not cgroup2's files."""
    mounts = CgroupMounts(unified=str(UNIFIED_TREE), memory_v1=str(V1_TREE))
    assert read_oom_kills("/system.slice/caddy.service", mounts) == 3


def test_oom_kills_without_a_memory_controller_are_none() -> None:
    """cgroup2 without the memory controller, and no v1 one: nothing to read."""
    mounts = CgroupMounts(unified=str(UNIFIED_TREE), memory_on_unified=False)
    assert read_oom_kills("/system.slice/caddy.service", mounts) is None


# --- for real: cgroups made for the test, a process with known memory in them ------------------


@dataclass(frozen=True)
class RealUnit:
    mounts: CgroupMounts  # rooted at the test's own cgroups
    control_group: str  # the unit's path below that root, as systemd's ControlGroup would be
    pid: int


_ids = itertools.count(1)
ANON_MIB, CACHE_MIB = 48, 96
HOLDER = f"""
import sys
anon = bytearray({ANON_MIB} * 1024 * 1024)
anon[::4096] = b"x" * (len(anon) // 4096)
with open(sys.argv[1], "rb") as cached:
    while cached.read(1 << 20):
        pass
print("ready", flush=True)
sys.stdin.read()
"""


def _require_root_cgroups() -> CgroupMounts:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("these tests create cgroups: run them as root")
        pytest.skip("these tests create cgroups: root only")
    mounts = read_cgroup_mounts()
    if mounts.unified is None or mounts.memory_root is None:
        pytest.skip(f"no cgroup2 with a memory hierarchy to create cgroups in ({mounts})")
    return mounts


def _own_dir(mount: str, hierarchy: str) -> Path:
    """This process's cgroup in the hierarchy mounted at `mount` ("0" for cgroup2, else the
    controller name), as a path under that mount."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if (hierarchy == "0" and number == "0") or hierarchy in controllers.split(","):
            return Path(mount + path.rstrip("/"))
    raise AssertionError(f"no {hierarchy} line in /proc/self/cgroup")


@contextlib.contextmanager
def real_unit(tmp_path: Path) -> Iterator[RealUnit]:
    """`prober-test.slice/holder.service` in the memory hierarchy and in cgroup2, holding
    ANON_MIB of anonymous memory and CACHE_MIB of page cache; everything removed after."""
    host = _require_root_cgroups()
    from tests.support.sandbox import memory_cgroup2_parent

    name = f"prober-test-{os.getpid()}-{next(_ids)}"
    roots: list[Path] = []
    unified_root = _own_dir(host.unified or "", "0") / name
    roots.append(unified_root)
    if host.memory_v1 is not None:
        memory_root = _own_dir(host.memory_v1, "memory") / name
        roots.append(memory_root)
    else:
        memory_root = memory_cgroup2_parent() / name
        roots = [memory_root]  # one hierarchy holds both
        unified_root = memory_root
    leaf = Path("prober-test.slice") / "holder.service"
    cache = tmp_path / "cache.bin"
    with cache.open("wb") as out:
        for _ in range(CACHE_MIB):
            out.write(os.urandom(MIB))
        out.flush()
        os.fsync(out.fileno())  # clean pages, which fadvise below can drop
    proc: subprocess.Popen[str] | None = None
    try:
        for root in roots:
            (root / leaf).mkdir(parents=True)
            if host.memory_v1 is None:  # v2: hand the memory controller down to the leaf
                (root / "cgroup.subtree_control").write_text("+memory")
                (root / "prober-test.slice" / "cgroup.subtree_control").write_text("+memory")
        join = " ".join(f'echo $$ > "{root / leaf}/cgroup.procs";' for root in roots)
        fd = os.open(cache, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # its pages are charged to the leaf
        os.close(fd)
        proc = subprocess.Popen(["sh", "-c", f'{join} exec "$@"', "sh", sys.executable, "-c",
                                 HOLDER, str(cache)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        mounts = CgroupMounts(unified=str(unified_root),
                              memory_v1=str(memory_root) if host.memory_v1 else None,
                              memory_on_unified=host.memory_v1 is None)
        yield RealUnit(mounts, "/" + str(leaf), proc.pid)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stdin is not None:
                proc.stdin.close()
        for root in roots:
            _remove_tree(root)


def _remove_tree(root: Path) -> None:
    deadline = time.monotonic() + 10
    for directory in sorted((Path(d) for d, _, _ in os.walk(root)),
                            key=lambda p: len(p.parts), reverse=True):
        while True:
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # the killed process is still leaving
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_real_unit_is_ranked_by_anonymous_memory(tmp_path: Path) -> None:
    """For real, in this machine's memory hierarchy (v1 here): a unit holding anonymous memory
    and page cache counts its anonymous memory only."""
    with real_unit(tmp_path) as unit:
        users = {u.name: u.bytes for u in unit_memory_users(unit.mounts)}
        top = top_memory_users(1, unit.mounts, proc="/nonexistent")
    held = users["holder.service"]
    assert ANON_MIB * MIB <= held < (ANON_MIB + 40) * MIB, held  # plus the interpreter's own
    assert top == (MemoryUser("holder.service", held),)


def test_real_unit_pressure(tmp_path: Path) -> None:
    """For real: a unit's own memory.pressure under this machine's cgroup2 mount is read, and
    is gone with the cgroup."""
    with real_unit(tmp_path) as unit:
        reading = read_unit_pressure(unit.control_group, unit.mounts)
        assert reading is not None
        assert reading.scope is Scope.UNIT and reading.cgroup == unit.control_group
        assert Path(reading.source).is_file()
        assert 0 <= reading.pressure.some_avg10 <= 100
    assert read_unit_pressure(unit.control_group, unit.mounts) is None


def test_real_process_fallback_names_the_holder(tmp_path: Path) -> None:
    """For real: with no memory hierarchy to read, the holder process is found by its anonymous
    memory (its page cache, twice as large, does not count)."""
    with real_unit(tmp_path) as unit:
        users = {u.name: u.bytes for u in process_memory_users()}
    name = next(n for n in users if n.endswith(f"(pid {unit.pid})"))
    assert ANON_MIB * MIB <= users[name] < (ANON_MIB + 40) * MIB

