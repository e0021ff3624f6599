"""Files prober reads and writes: a regular file read with bounds, and files written so that
readers never see half of one (a temp file, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


class FileRefused(ValueError):
    """A file prober will not read: not a regular file, or larger than its cap."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory",
          stat.S_IFSOCK: "a socket"}


def read_regular_file(path: str | Path, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at `path` (at most `limit`), and its fstat.

    Never blocks: a FIFO or a device is opened non-blocking and refused after fstat, before
    any read. FileRefused for those and for a file over `limit` (checked again while reading,
    as a file can grow or a kernel file can report size 0); OSError when it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
            raise FileRefused(f"not a regular file ({kind})")
        if st.st_size > limit:
            raise FileRefused(f"larger than {limit} bytes ({st.st_size} bytes)")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 16, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FileRefused(f"larger than {limit} bytes")
        return b"".join(chunks), st
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644, owner: int | None = None,
                     group: int | None = None, durable: bool = True) -> None:
    """Replace `path` with `data`: readers see the old file or the new one, never a mix.

    `durable` also fsyncs the file and its directory, so that a power cut cannot leave an empty
    file where the old one was. `owner`/`group` hand the file over (as root). OSError on failure,
    with the temp file removed.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            if owner is not None and group is not None:
                os.fchown(fd, owner, group)
            os.fchmod(fd, mode)  # the umask may have taken bits off
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            fsync_directory(path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(path: Path) -> None:
    """Remove temp files that writers of `path` killed mid-write left behind."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
