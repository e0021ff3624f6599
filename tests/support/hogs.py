"""The memory hogs of the 2018 outage, as programs for units of the test sandbox.

    python tests/support/hogs.py make-file PATH --mib N
    python tests/support/hogs.py thrash PATH [--workers N]
    python tests/support/hogs.py grow [--rate MIB_PER_S] [--step MIB] [--oom-score-adj N]
        [--max MIB]
                              [--parent]

make-file writes N MiB of incompressible data (not sparse), syncs it and drops it from the page
cache. thrash maps that file and reads every page of it in a loop, from --workers processes: a
file-backed working set larger than its cgroup's memory limit is evicted and read back over and
over, the refaults that PSI counts as memory stalls (its cache is dropped first, so that its pages
are charged to the thrasher's cgroup and not to whoever read the file before). grow allocates
anonymous memory at a bounded rate, touching every page, like ImageMagick's `convert` on large
images; with --oom-score-adj 1000 it is the kernel's first choice when the cgroup runs out.
With --parent it grows in a child process, as `convert` runs under Sidekiq: the parent stays
(and so does its unit's cgroup, with the kernel's OOM count in it), says how the child ended
(`grower PID killed by SIGKILL`), and waits to be stopped.

Each prints one line per pass or step on stdout (flushed): `pass N`, `grown N MiB`. SIGTERM ends
them; the thrash workers die with their parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import signal
import sys
import time
from pathlib import Path

MIB = 1024 * 1024
PAGE = mmap.PAGESIZE
_PR_SET_PDEATHSIG = 1


def drop_cache(path: Path) -> None:
    """Evict the file's clean pages from the page cache (this file only, not the host's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_file(path: Path, mib: int) -> None:
    chunk = os.urandom(MIB)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        for index in range(mib):
            # a different first word per MiB: no two pages alike, whatever dedups
            out.write(index.to_bytes(8, "little") + chunk[8:])
        out.flush()
        os.fsync(out.fileno())
    tmp.rename(path)
    drop_cache(path)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def thrash(path: Path, workers: int) -> None:
    drop_cache(path)
    for _ in range(workers - 1):
        if os.fork() == 0:
            _die_with_parent()
            _read_forever(path, quiet=True)
    _read_forever(path, quiet=False)


def _read_forever(path: Path, *, quiet: bool) -> None:
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as pages:
        size = len(pages)
        passes = 0
        while True:
            started = time.monotonic()
            pages[0:size:PAGE]  # reads one byte of every page: a fault where it was evicted
            passes += 1
            if not quiet:
                print(f"pass {passes} {time.monotonic() - started:.3f}s", flush=True)


def grow(rate: float, step: int, oom_score_adj: int | None, most: int | None) -> None:
    if oom_score_adj is not None:
        Path("/proc/self/oom_score_adj").write_text(str(oom_score_adj))
    held: list[bytearray] = []
    started = time.monotonic()
    total = 0
    while most is None or total < most:
        block = bytearray(step * MIB)
        block[::PAGE] = b"\x01" * (len(block) // PAGE)  # touch every page: resident, anonymous
        held.append(block)
        total += step
        print(f"grown {total} MiB", flush=True)
        pause = started + total / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    print(f"holding {total} MiB", flush=True)
    while True:
        time.sleep(3600)


def grow_in_child(rate: float, step: int, oom_score_adj: int | None, most: int | None) -> None:
    child = os.fork()
    if child == 0:
        _die_with_parent()
        grow(rate, step, oom_score_adj, most)
    print(f"grower {child} started", flush=True)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        ended = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        ended = f"exited with {os.WEXITSTATUS(status)}"
    print(f"grower {child} {ended}", flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="memory hogs for the pressure tests")
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("make-file", help="write a file to thrash")
    made.add_argument("path", type=Path)
    made.add_argument("--mib", type=int, required=True)
    thrasher = sub.add_parser("thrash", help="read every page of a file, over and over")
    thrasher.add_argument("path", type=Path)
    thrasher.add_argument("--workers", type=int, default=1)
    grower = sub.add_parser("grow", help="allocate anonymous memory at a bounded rate")
    grower.add_argument("--rate", type=float, default=16.0, help="MiB per second [16]")
    grower.add_argument("--step", type=int, default=4, help="MiB per allocation [4]")
    grower.add_argument("--oom-score-adj", type=int)
    grower.add_argument("--max", type=int, help="stop growing at this many MiB, and hold them")
    grower.add_argument("--parent", action="store_true",
                        help="grow in a child; stay when it is killed, and say how it ended")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.command == "make-file":
        make_file(args.path, args.mib)
    elif args.command == "thrash":
        thrash(args.path, max(1, args.workers))
    elif args.parent:
        grow_in_child(args.rate, args.step, args.oom_score_adj, args.max)
    else:
        grow(args.rate, args.step, args.oom_score_adj, args.max)
    return 0


if __name__ == "__main__":
    sys.exit(main())
