"""The state file: versioned JSON, written atomically, guarded by a lock held for the whole run.

The prober never dies of its own state: a corrupt or unreadable file is moved aside with a
warning and the run goes on from fresh state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prober.errors import StateError
from prober.files import remove_stale_temp_files, write_atomically
from prober.pressure import MemoryUser
from prober.text import os_reason
from prober.tracker import Event, Health, State, TargetState, Transition

log = logging.getLogger("prober")

STATE_VERSION = 1
DEFAULT_STATE_DIR = "/var/lib/prober"
_LOCK_POLL = 0.05


def state_path(cli_value: str | None, environ: Mapping[str, str]) -> str:
    """--state beats PROBER_STATE beats $STATE_DIRECTORY (systemd's StateDirectory=)."""
    if cli_value:
        return cli_value
    if environ.get("PROBER_STATE"):
        return environ["PROBER_STATE"]
    # StateDirectory= may list several directories, separated by colons.
    directory = environ.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIR
    return os.path.join(directory, "state.json")


# --- JSON <-> State: pure -------------------------------------------------------------------

_TARGET_FIELDS = {f.name: f for f in dataclasses.fields(TargetState)}


def _target_to_json(state: TargetState) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies the history only for it to be rebuilt below.
    out = {name: getattr(state, name) for name in _TARGET_FIELDS}
    out["health"] = state.health.value
    out["history"] = [_transition_to_json(t) for t in state.history]
    out["restarts"] = list(state.restarts)
    out["failure_times"] = list(state.failure_times)
    return out


def _transition_to_json(entry: Transition) -> dict[str, Any]:
    out: dict[str, Any] = {"at": entry.at, "event": entry.event.value, "reason": entry.reason}
    if entry.top_memory:
        out["top_memory"] = [{"name": u.name, "bytes": u.bytes} for u in entry.top_memory]
    return out


def _transition_from_json(data: Mapping[str, Any]) -> Transition:
    users = tuple(MemoryUser(str(u["name"]), int(u["bytes"])) for u in data.get("top_memory", ()))
    return Transition(float(data["at"]), Event(data["event"]), str(data["reason"]), users)


def to_json(state: State) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "updated_at": state.updated_at,
        "targets": {name: _target_to_json(t) for name, t in sorted(state.targets.items())},
    }


def _target_from_json(data: Mapping[str, Any]) -> TargetState:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TARGET_FIELDS:
            continue  # written by a newer prober: ignore rather than lose everything
        if key == "health":
            values[key] = Health(value)
        elif key == "history":
            values[key] = tuple(_transition_from_json(t) for t in value)
        elif key in ("restarts", "failure_times"):
            values[key] = tuple(float(x) for x in value)
        else:
            values[key] = value
    state = TargetState(**values)
    _check_types(state)
    return state


def _check_types(state: TargetState) -> None:
    ints = (state.consecutive_failures, state.consecutive_passes, state.restarts_total,
            state.unhelpful_restarts)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ints):
        raise ValueError("counters must be non-negative integers")
    if not isinstance(state.given_up, bool) or not isinstance(state.last_reason, str):
        raise ValueError("bad field types")


def from_json(data: Any) -> State:
    """A State from parsed JSON; ValueError/KeyError/TypeError if it is not one."""
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} state file")
    targets = data["targets"]
    if not isinstance(targets, dict):
        raise ValueError("targets is not an object")
    updated = data.get("updated_at")
    return State(
        targets={str(n): _target_from_json(t) for n, t in targets.items()},
        updated_at=None if updated is None else float(updated),
    )


def dumps(state: State) -> str:
    # No indent: only without one does json use its C encoder, not the pure-Python one.
    # `jq . state.json` or `prober status` show it to people.
    return json.dumps(to_json(state), sort_keys=True) + "\n"


# --- the file: I/O ----------------------------------------------------------------------------


class LockBusy(Exception):
    """Another prober run holds the state lock."""


class StateStore:
    """The state file at `path`, its lock file beside it.

    With `keep_lock_file_open` (the watcher, which locks every cycle), the lock file is opened
    once and kept: each lock is then one flock and one unlock, plus a stat that finds the file
    still there (it is opened anew if it was removed or replaced). Call `close()` at the end.
    """

    def __init__(self, path: str, *, keep_lock_file_open: bool = False) -> None:
        self.path = Path(path)
        if not self.path.name or self.path.is_dir():
            raise StateError(f"{path}: is a directory, not a state file",
                             f"name the file, e.g. {self.path / 'state.json'}")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.beat_path = self.path.with_name(self.path.name + ".last-run")
        # As strings, for the calls every watcher cycle makes (a Path converts on each one).
        self._path_name, self._lock_name = str(self.path), str(self.lock_path)
        self._beat_name = str(self.beat_path)
        self._keep_open = keep_lock_file_open
        self._held: tuple[int, int, int] | None = None  # the open lock file: fd, device, inode

    @contextlib.contextmanager
    def locked(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the run lock; LockBusy if another run holds it for more than `wait` seconds.

        A run does not wait (the next run will come); an operator's command waits its turn.
        """
        fd = self._lock_file()
        try:
            _flock(fd, wait, self._lock_name)
        except BaseException:
            self._release(fd, locked=False)
            raise
        try:
            yield
        finally:
            self._release(fd, locked=True)

    def close(self) -> None:
        """Close the lock file kept open, if any."""
        held, self._held = self._held, None
        if held is not None:
            os.close(held[0])

    def _lock_file(self) -> int:
        if self._held is not None:
            fd, device, inode = self._held
            with contextlib.suppress(OSError):
                st = os.stat(self._lock_name)
                if (st.st_dev, st.st_ino) == (device, inode):
                    return fd
            self.close()
        self._ensure_directory()
        try:
            # Read-only and world-readable: flock needs no write access, so a lock file left
            # by root (an admin's manual run) never locks out the `prober` user's timer.
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(
                f"{self.lock_path}: cannot open the lock file: {os_reason(exc)}") from None
        try:
            self._give_to_directory_owner(fd)
            if self._keep_open:
                st = os.fstat(fd)
                self._held = (fd, st.st_dev, st.st_ino)
        except OSError as exc:
            os.close(fd)
            raise StateError(
                f"{self.lock_path}: cannot open the lock file: {os_reason(exc)}") from None
        return fd

    def _release(self, fd: int, *, locked: bool) -> None:
        if self._held is None or self._held[0] != fd:
            os.close(fd)  # closing releases the lock
        elif locked:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _ensure_directory(self) -> None:
        directory = self.path.parent
        if directory.is_dir():
            return
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"{directory}: cannot create the state directory: {os_reason(exc)}",
                "create it, or pass --state / set PROBER_STATE to a writable path",
            ) from None

    def load(self) -> State:
        """The stored state; fresh state (with a warning) if it is missing or unusable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return State()
        except (OSError, UnicodeDecodeError) as exc:
            return self._set_aside(f"cannot read it: {os_reason(exc)}")
        try:
            return from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._set_aside(f"it is corrupt ({exc})")

    def _set_aside(self, problem: str) -> State:
        if not self.path.is_file():  # only ever move our own file, never a directory or device
            raise StateError(f"{self.path}: not a regular file: {problem}")
        aside = self.path.with_name(f"{self.path.name}.corrupt")
        try:
            os.replace(self.path, aside)
            where = f"moved it to {aside}"
        except OSError as exc:
            where = f"could not move it aside: {os_reason(exc)}"
        log.warning("state file %s: %s; %s and starting from fresh state", self.path, problem,
                    where)
        return State()

    def save(self, state: State) -> None:
        """Write the state atomically: a temp file, fsync, rename, fsync the directory."""
        self._ensure_directory()
        try:
            owner = self._directory_owner()
            write_atomically(self.path, dumps(state).encode(), owner=owner[0], group=owner[1])
            remove_stale_temp_files(self.path)
        except OSError as exc:
            hint = "the disk is full" if exc.errno == errno.ENOSPC else None
            raise StateError(f"{self.path}: cannot write the state: {os_reason(exc)}",
                             hint) from None

    def signature(self) -> tuple[int, int, int] | None:
        """What tells one version of the file from another: a writer's rename makes a new
        inode, an edit a new mtime or size. None when there is no file."""
        try:
            st = os.stat(self._path_name)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def touch_heartbeat(self) -> None:
        """Say a run happened, without writing the state: the mtime of a file beside it.

        The watcher writes the state only when something in it changed; `check --if-stale`
        (the cron fallback) and `status` read this to know the watcher or the timer is alive.
        """
        try:
            os.utime(self._beat_name)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                fd = os.open(self.beat_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    self._give_to_directory_owner(fd)
                finally:
                    os.close(fd)
        except OSError:
            pass

    def last_run_at(self, state: State) -> float | None:
        """When a run last happened: the state's own time, or a later heartbeat."""
        try:
            beat: float | None = os.stat(self.beat_path).st_mtime
        except OSError:
            beat = None
        times = [t for t in (state.updated_at, beat) if t is not None]
        return max(times) if times else None

    def _directory_owner(self) -> tuple[int | None, int | None]:
        """As root, new files go to the state directory's owner (the `prober` user of
        StateDirectory=), so a manual root run leaves nothing the timer cannot use."""
        if os.geteuid() != 0:
            return None, None
        owner = os.stat(self.path.parent)
        return owner.st_uid, owner.st_gid

    def _give_to_directory_owner(self, fd: int) -> None:
        uid, gid = self._directory_owner()
        if uid is None or gid is None:
            return
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)


def _flock(fd: int, wait: float, path: str) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockBusy(path) from None
            time.sleep(_LOCK_POLL)
