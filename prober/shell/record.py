"""The record file: the outage record (prober/core/record.py) as JSON lines beside the state.

    state.json.record   one entry per line, `{"v": 1, "at": ..., "target": ..., "event": ...}`

Written only by a run (or an operator's command) that recorded something, under the state's
lock, with the state's durability: the lines are appended in one write and fsync'd (and the
directory, when the file is new) before the state is saved. A healthy run never opens it.

A crash mid-append leaves at most one partial last line: the next append starts on a line of its
own, and readers skip the partial one with a warning, as any line that is not an entry. The
file is compacted (rewritten atomically, as the state is) only when an append finds it over
`record_max_mib` or its first entry older than `record_max_age` by a tenth of it: rarely.
Reading takes at most the last `record_max_mib` and a half of the file, whatever its size.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prober.core.config import Config
from prober.core.errors import StateError
from prober.core.keys import format_duration
from prober.core.record import Entry, Kind, from_changes, from_histories, kept, parse_line
from prober.core.record import dump_line as _line
from prober.core.runs import RunReport
from prober.core.text import os_reason
from prober.core.tracker import Change, State, recorded_since
from prober.core.view import systemd_unit
from prober.io.files import fsync_directory, write_atomically

log = logging.getLogger("prober")

_HEAD = 4096  # enough for the first line, to tell its age
_WARN_MAX = 5  # damaged lines named one by one; the rest counted


def record_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".record")


@dataclass(frozen=True)
class Read:
    """What a read of the record found: its entries, and how many lines it skipped."""

    entries: tuple[Entry, ...]
    skipped: int = 0
    clipped: bool = False  # the file was larger than the read's cap: its oldest lines unread


class RecordFile:
    """The record at `path`, bounded by `max_age` seconds and `max_bytes`."""

    def __init__(self, path: Path, max_age: float, max_bytes: int) -> None:
        self.path = path
        self.max_age = max_age
        self.max_bytes = max_bytes

    @classmethod
    def beside(cls, state_path: Path, config: Config) -> RecordFile:
        return cls(record_path(state_path), config.record_max_age, config.record_max_mib << 20)

    @property
    def read_cap(self) -> int:
        return self.max_bytes + self.max_bytes // 2

    def exists(self) -> bool:
        return self.path.exists()

    def append(self, entries: Sequence[Entry], now: float,
               owner: tuple[int | None, int | None] = (None, None)) -> None:
        """Append `entries` durably, compacting the file if it has grown past its bounds;
        StateError if it cannot be written."""
        if not entries:
            return
        data = b"".join(_line(e) for e in entries)
        try:
            created = self._append(data, owner)
            if created:
                fsync_directory(self.path.parent)
            self._compact_if_due(now, owner)
        except OSError as exc:
            hint = "the disk is full" if exc.errno == errno.ENOSPC else None
            raise StateError(f"{self.path}: cannot write the record: {os_reason(exc)}",
                             hint) from None

    def _append(self, data: bytes, owner: tuple[int | None, int | None]) -> bool:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | \
            os.O_NOCTTY | os.O_NOFOLLOW
        created = not self.path.exists()
        fd = _open(self.path, flags, 0o644)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if created and owner[0] is not None and owner[1] is not None:
                os.fchown(fd, owner[0], owner[1])
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                data = b"\n" + data  # a crash cut the last line short: ours starts anew
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return created

    def _compact_if_due(self, now: float, owner: tuple[int | None, int | None]) -> None:
        size = self.path.stat().st_size
        first = self._first_entry()
        too_old = first is not None and now - first.at > self.max_age * 1.1
        if size <= self.max_bytes and not too_old:
            return
        found = self.read()
        # Down to three quarters of the size bound, so that the next compaction is far off.
        keep = kept(found.entries, now, self.max_age, self.max_bytes * 3 // 4)
        write_atomically(self.path, b"".join(_line(e) for e in keep), owner=owner[0],
                         group=owner[1])
        log.info("record %s: compacted to %d entries (at most %s old, %d bytes)", self.path,
                 len(keep), format_duration(self.max_age), self.max_bytes)

    def _first_entry(self) -> Entry | None:
        with contextlib.suppress(OSError, ValueError):
            fd = _open(self.path, _READ_FLAGS)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    return parse_line(os.pread(fd, _HEAD, 0).split(b"\n", 1)[0])
            finally:
                os.close(fd)
        return None

    def read(self) -> Read:
        """The entries of the record (the newest `read_cap` bytes of it), oldest first; damaged
        lines skipped, each with a warning. An empty read when there is no file; StateError
        when it is not a regular file or cannot be read."""
        try:
            fd = _open(self.path, _READ_FLAGS)
        except FileNotFoundError:
            return Read(())
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise StateError(f"{self.path}: not a regular file: prober keeps its record "
                                 "only in a regular file", "remove it") from None
            raise StateError(f"{self.path}: cannot read the record: {os_reason(exc)}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateError(f"{self.path}: not a regular file: prober keeps its record "
                                 "only in a regular file", "remove it")
            start = max(0, st.st_size - self.read_cap)
            raw = _read_from(fd, start, self.read_cap)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read the record: {os_reason(exc)}") from None
        finally:
            os.close(fd)
        lines = raw.split(b"\n")
        if start:
            lines = lines[1:]  # begun mid-line
            log.warning("record %s: larger than %d bytes; its oldest entries are not read",
                        self.path, self.read_cap)
        return self._parsed(lines, clipped=start > 0)

    def _parsed(self, lines: list[bytes], *, clipped: bool) -> Read:
        entries: list[Entry] = []
        skipped = 0
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(parse_line(line))
            except ValueError as exc:
                skipped += 1
                if skipped <= _WARN_MAX:
                    log.warning("record %s: line %d skipped: %s", self.path, number, exc)
        if skipped > _WARN_MAX:
            log.warning("record %s: %d damaged lines skipped in all", self.path, skipped)
        entries.sort(key=lambda e: e.at)
        return Read(tuple(entries), skipped, clipped)


_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW


def _open(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open`, never through a symlink: one planted by the state directory's owner would
    have a root run write where it points."""
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.EINVAL, "not a regular file") from None
        raise


def _read_from(fd: int, start: int, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < cap and (chunk := os.pread(fd, min(1 << 16, cap - size), start + size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def run_entries(report: RunReport, state: State) -> list[Entry]:
    """What a run recorded, as the record's entries (none for a healthy run)."""
    units = {item.target.name: systemd_unit(item.target) or "" for item in report.targets}
    blamed = {item.target.name: item.blamed_on for item in report.targets
              if item.blamed_on is not None}
    psi = None if report.pressure is None else report.pressure.some_avg10
    asked = [Entry(at, name, Kind.RESTART_ASKED, "restart asked of the actuator",
                   units.get(name, "")) for name, at in report.restarts_asked]
    entries = from_changes(report.changes, state.targets, units, blamed_on=blamed, psi=psi)
    return sorted([*asked, *entries, *report.events], key=lambda e: e.at)


def command_entries(config: Config, before: State, after: State) -> list[Entry]:
    """What an operator's command (reset, pause, resume) recorded, as the record's entries."""
    changes = [Change(name, t) for name, new in after.targets.items()
               for t in recorded_since(before.get(name), new)]
    units = {t.name: systemd_unit(t) or "" for t in config.targets}
    return from_changes(changes, after.targets, units)


def seed(state: State, config: Config, until: float) -> list[Entry]:
    """The entries a new record file starts with: the state's histories before `until`."""
    units = {t.name: systemd_unit(t) or "" for t in config.targets}
    return [e for e in from_histories(state.targets, units) if e.at < until]


class CachedRecord:
    """The record as the watcher's page reads it: its last `keep` seconds, read again only
    when the file changed (a writer's append or rename), never more than its read cap; None
    when there is no record to read (none written yet, a dry run's, one that cannot be read),
    for the page to draw from the state's histories instead."""

    def __init__(self, record: RecordFile, keep: float) -> None:
        self.record = record
        self.keep = keep
        self._signature: tuple[int, int, int] | None = None
        self._entries: tuple[Entry, ...] | None = None

    def entries(self) -> tuple[Entry, ...] | None:
        try:
            st = os.stat(self.record.path)
        except OSError:
            return None
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature != self._signature:
            try:
                found = self.record.read().entries
            except StateError as exc:
                log.warning("%s; the page's timelines are drawn from the state", exc)
                self._entries = None
            else:
                newest = found[-1].at if found else 0.0
                self._entries = tuple(e for e in found if e.at >= newest - self.keep)
            self._signature = signature
        return self._entries
