"""The pressure harness's parts that need no sandbox: the cgroup hierarchies a memory sandbox
joins, the hog programs, the stand-in's slow mode."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.hogs import make_file
from tests.support.processes import stop_process
from tests.support.sandbox import Hierarchy, v1_hierarchies
from tests.support.standin import slow_seconds

DATA = Path(__file__).parent / "testdata" / "cgroups"
REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "tests" / "support"
OWN_CGROUPS = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/4f04
1:cpu:/
0::/
"""


def test_v1_hierarchies_of_a_hybrid_host() -> None:
    """Each v1 hierarchy of the host, with this process's cgroup in it and how to mount it."""
    found = v1_hierarchies((DATA / "mountinfo-hybrid-host").read_text(), OWN_CGROUPS)
    assert found == [
        Hierarchy("systemd", "none,name=systemd", Path("/sys/fs/cgroup/systemd")),
        Hierarchy("pids", "pids", Path("/sys/fs/cgroup/pids")),
        Hierarchy("memory", "memory", Path("/sys/fs/cgroup/memory/process_api/4f04")),
        Hierarchy("cpu", "cpu", Path("/sys/fs/cgroup/cpu")),
    ]


def test_v1_hierarchies_comounted() -> None:
    """Co-mounted controllers (cpu,cpuacct) are one hierarchy, mounted under its own name."""
    own = "3:cpu,cpuacct:/user.slice\n2:memory:/user.slice\n1:name=systemd:/user.slice/s.scope\n"
    found = v1_hierarchies((DATA / "mountinfo-legacy").read_text(), own)
    assert [(h.directory, h.options, str(h.cgroup)) for h in found] == [
        ("cpu,cpuacct", "cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/user.slice"),
        ("memory", "memory", "/sys/fs/cgroup/memory/user.slice"),
        ("systemd", "none,name=systemd", "/sys/fs/cgroup/systemd/user.slice/s.scope"),
    ]


def test_no_v1_hierarchies_on_a_unified_host() -> None:
    """A v2-only host has none: the memory sandbox then stays on cgroup2."""
    text = (DATA / "mountinfo-debian12-unified").read_text()
    assert v1_hierarchies(text, "0::/user.slice/user-0.slice/session-1.scope\n") == []


@pytest.mark.parametrize(("content", "seconds"), [
    (None, 0.0), ("", 1.0), ("2.5", 2.5), ("soon", 1.0), ("-3", 0.0)])
def test_slow_seconds(tmp_path: Path, content: str | None, seconds: float) -> None:
    """The stand-in sleeps what its slow file says, 1 s if it says nothing, 0 without it."""
    slow = tmp_path / "slow"
    if content is not None:
        slow.write_text(content)
    assert slow_seconds(slow) == seconds


def test_standin_answers_slowly_while_the_slow_file_exists(tmp_path: Path) -> None:
    """A real stand-in: fast, then slow by the file's seconds while it exists, then fast again."""
    slow = tmp_path / "slow"
    proc = subprocess.Popen([sys.executable, str(SUPPORT / "standin.py"), "--port", "0",
                             "--slow-file", str(slow)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{proc.stdout.readline().strip()}/health"

        def timed() -> float:
            started = time.monotonic()
            assert httpx.get(url, timeout=10, trust_env=False).text == "OK"
            return time.monotonic() - started

        assert timed() < 0.4
        slow.write_text("0.6")
        assert timed() >= 0.6
        slow.unlink()
        assert timed() < 0.4
    finally:
        stop_process(proc)


def test_grower_grows_at_its_rate_and_holds(tmp_path: Path) -> None:
    """The grower allocates resident anonymous memory step by step, then holds it."""
    proc = subprocess.Popen([sys.executable, str(SUPPORT / "hogs.py"), "grow",
                             "--rate", "64", "--step", "4", "--max", "16"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(5)]
        assert lines == ["grown 4 MiB", "grown 8 MiB", "grown 12 MiB", "grown 16 MiB",
                         "holding 16 MiB"]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        anon_kib = int(next(ln for ln in status.splitlines() if ln.startswith("RssAnon:"))
                       .split()[1])
        assert anon_kib >= 16 * 1024
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_grower_parent_says_how_its_child_ended(tmp_path: Path) -> None:
    """With --parent the grower runs in a child; when the child is killed, the parent says so
    and stays (its unit, and the unit's cgroup, outlive the kill)."""
    proc = subprocess.Popen([sys.executable, str(SUPPORT / "hogs.py"), "grow",
                             "--parent", "--rate", "64", "--max", "4"],
                            stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    seen: list[str] = []

    def next_line(matching: str) -> re.Match[str]:
        """A line matching `matching`, seen already or yet to come: parent and child write in
        either order, so the child's lines may come before the parent says it started it."""
        for line in seen:
            if found := re.fullmatch(matching, line):
                return found
        while True:
            seen.append(lines.get(timeout=30))
            if found := re.fullmatch(matching, seen[-1]):
                return found

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        child = int(next_line(r"grower (\d+) started")[1])
        next_line(r"holding \d+ MiB")
        subprocess.run(["kill", "-KILL", str(child)], check=True)
        next_line(rf"grower {child} killed by SIGKILL")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_thrasher_reads_its_file_in_passes(tmp_path: Path) -> None:
    """make-file writes a file of the size asked; the thrasher reads all of it, pass after pass."""
    data = tmp_path / "data.bin"
    make_file(data, 4)
    assert data.stat().st_size == 4 * 1024 * 1024
    assert data.stat().st_blocks * 512 >= 4 * 1024 * 1024  # written, not sparse
    proc = subprocess.Popen([sys.executable, str(SUPPORT / "hogs.py"), "thrash",
                             str(data), "--workers", "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert [proc.stdout.readline().split()[:2] for _ in range(3)] == [
            ["pass", "1"], ["pass", "2"], ["pass", "3"]]
    finally:
        stop_process(proc)
