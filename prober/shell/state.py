"""The state file: versioned JSON, written atomically, guarded by a lock held for the whole run.

The prober never dies of its own state. Only a regular file is read (a FIFO, a device or a
socket is a StateError, never opened for reading), and no more of it than a config of its size
can write. Every field is checked on load: a damaged target entry costs that target its entry,
with a warning naming the field, and no other target anything. A file that is not JSON, or not
a state at all, is moved aside with a warning and the run goes on from fresh state.

Format versions: the file says its `version`. A file of an older version is brought up to
STATE_VERSION by MIGRATIONS, one pure step per version (`MIGRATIONS[1]` turns a version 1
document into a version 2 one), applied in order by `migrate`; the next save writes the new
version. A change to the format is a new step and a bump of STATE_VERSION, never an edit of an
old step. A file of a newer version than this prober's is moved aside, like a corrupt one.

    v1  targets, updated_at
    v2  + trial (a dry run's own file, which a real run refuses), written_by (the version)
    v3  + each target's last_notice (a warning that is no failure), for `prober status`
    v4  + each target's unit_seen (what the unit_health kind last read of its unit, and the
        restarts, crashes and OOM kills within its window), null for the other kinds
    v5  + pressure (the memory-pressure episode going on) and systemd_unreachable_since, so
        that the outage record (prober/shell/record.py) says when each began and ended

A dry run writes only a trial file: one named with --state or PROBER_STATE, apart from the
default path, that a dry run created (`may_write`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from prober import __version__
from prober.core.config import Config
from prober.core.errors import StateError
from prober.core.psi import MemoryUser
from prober.core.results import FailureClass
from prober.core.text import LATEST_TIME, one_line, os_reason
from prober.core.tracker import (
    HISTORY_LIMIT,
    Event,
    Health,
    PressureEpisode,
    State,
    TargetState,
    Transition,
    transition_json,
)
from prober.core.unit_seen import MAX_INCIDENTS, Happened, Incident, UnitSeen
from prober.io.files import remove_stale_temp_files, write_atomically

log = logging.getLogger("prober")

STATE_VERSION = 5
DEFAULT_STATE_DIR = "/var/lib/prober"
DEFAULT_SIZE_LIMIT = 256 << 20  # for a reader with no config at hand
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


def named_apart(cli_value: str | None, environ: Mapping[str, str]) -> bool:
    """Whether the state file was named for this run (--state, PROBER_STATE) and is not the
    one a run finds by default: the only kind of file a dry run may create."""
    if not cli_value and not environ.get("PROBER_STATE"):
        return False
    default = {k: v for k, v in environ.items() if k != "PROBER_STATE"}
    return os.path.abspath(state_path(cli_value, environ)) != \
        os.path.abspath(state_path(None, default))


def may_write(*, dry_run: bool, named_apart: bool, found: bool, trial: bool,
              path: Path) -> bool:
    """Whether a run writes back the state it read. A real run writes a real run's file and
    refuses a trial's (StateError); a dry run writes only a trial file: one it made, named apart
    from the default path. Otherwise a dry run reads the state and leaves it as it was."""
    if not dry_run:
        if trial:
            raise StateError(f"{path}: a trial state file, written by a --dry-run; a real run "
                             "does not use its counts",
                             "name the real state file with --state or PROBER_STATE, or remove "
                             "this one to start afresh")
        return True
    return named_apart and (trial or not found)


def size_limit(config: Config) -> int:
    """The most bytes a state file of this config is read up to: generous (an entry of history
    takes far less than its share here, so a lowered `history` or a few removed targets still
    fit), yet bounded, so that no file makes a run read without end."""
    targets = len(config.targets) + 16
    return (1 << 20) + targets * ((64 << 10) + config.history * (4 << 10))


# --- migrations: pure -------------------------------------------------------------------------

Document = dict[str, Any]


def _v1_to_v2(data: Document) -> Document:
    return {**data, "version": 2, "trial": False, "written_by": ""}


def _v2_to_v3(data: Document) -> Document:
    targets = data.get("targets")
    if not isinstance(targets, dict):  # from_json says what is wrong with it
        return {**data, "version": 3}
    return {**data, "version": 3, "targets": {
        name: {**entry, "last_notice": ""} if isinstance(entry, dict) else entry
        for name, entry in targets.items()}}


def _v3_to_v4(data: Document) -> Document:
    targets = data.get("targets")
    if not isinstance(targets, dict):
        return {**data, "version": 4}
    return {**data, "version": 4, "targets": {
        name: {"unit_seen": None, **entry} if isinstance(entry, dict) else entry
        for name, entry in targets.items()}}


def _v4_to_v5(data: Document) -> Document:
    return {**data, "version": 5, "pressure": None, "systemd_unreachable_since": None}


MIGRATIONS: dict[int, Callable[[Document], Document]] = {1: _v1_to_v2, 2: _v2_to_v3,
                                                         3: _v3_to_v4, 4: _v4_to_v5}


def migrate(data: Document) -> Document:
    """`data` brought up to STATE_VERSION, one migration at a time; ValueError if its version is
    not one this prober knows (a newer prober's file is moved aside like a corrupt one)."""
    version = data.get("version")
    if not _is_int(version) or version < 1:
        raise ValueError(f"not a state file: version {one_line(repr(version))[:40]}")
    if version > STATE_VERSION:
        raise ValueError(f"version {version}, written by a newer prober; this one reads up to "
                         f"{STATE_VERSION}")
    while version < STATE_VERSION:
        data = MIGRATIONS[version](data)
        version = data["version"]
    return data


# --- JSON <-> State: pure -------------------------------------------------------------------

_TARGET_FIELDS = {f.name: f for f in dataclasses.fields(TargetState)}
# 2100-01-01 UTC: past any time prober writes (a pause is at most MAX_DURATION long), and far
# enough from datetime's year 9999 that such a time plus a cooldown still shows as a date.
_LATEST = LATEST_TIME
_COUNT_LIMIT = 1 << 53  # exact as a float too: metrics and JSON readers see the same number
_FAILURES = frozenset(FailureClass)


def _target_to_json(state: TargetState) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies the history only for it to be rebuilt below.
    out = {name: getattr(state, name) for name in _TARGET_FIELDS}
    out["health"] = state.health.value
    out["history"] = [transition_json(t) for t in state.history]
    out["restarts"] = list(state.restarts)
    out["failure_times"] = list(state.failure_times)
    out["unit_seen"] = None if state.unit_seen is None else _seen_json(state.unit_seen)
    return out


def _seen_json(seen: UnitSeen) -> dict[str, Any]:
    return {"restarts": seen.restarts, "oom_kills": seen.oom_kills, "exited_at": seen.exited_at,
            "incidents": [{"at": i.at, "happened": i.happened.value, "detail": i.detail}
                          for i in seen.incidents],
            "host_oom_kills": seen.host_oom_kills, "unit": seen.unit}


def to_json(state: State) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "trial": state.trial,
        "written_by": __version__,
        "updated_at": state.updated_at,
        "targets": {name: _target_to_json(t) for name, t in sorted(state.targets.items())},
        "pressure": None if state.pressure is None else _episode_json(state.pressure),
        "systemd_unreachable_since": state.systemd_unreachable_since,
    }


def _episode_json(episode: PressureEpisode) -> dict[str, Any]:
    return {"since": episode.since, "peak": episode.peak, "peak_at": episode.peak_at,
            "top_memory": [{"name": u.name, "bytes": u.bytes} for u in episode.top_memory]}


def _episode(data: Any) -> PressureEpisode | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BadField("not an object")
    peak = data.get("peak")
    if not (_is_int(peak) or isinstance(peak, float)) or not 0 <= peak <= 100:
        raise BadField("peak: not a percentage")
    users = data.get("top_memory")
    if not isinstance(users, list) or len(users) > 16:
        raise BadField("top_memory: not a short list")
    return PressureEpisode(_time(data.get("since")), float(peak), _time(data.get("peak_at")),
                           tuple(_memory_user(u) for u in users))


class BadField(ValueError):
    """One field of a target's entry is not what prober writes there."""


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _time(value: Any) -> float:
    if (_is_int(value) or isinstance(value, float)) and 0 <= value <= _LATEST:  # not NaN
        return float(value)
    raise BadField("not a time in seconds since 1970")


def _optional_time(value: Any) -> float | None:
    return None if value is None else _time(value)


def _times(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) > HISTORY_LIMIT:
        raise BadField("not a list of times")
    return tuple(_time(v) for v in value)


def _count(value: Any) -> int:
    if not _is_int(value) or not 0 <= value < _COUNT_LIMIT:
        raise BadField("not a count")
    return int(value)


def _optional_count(value: Any) -> int | None:
    return None if value is None else _count(value)


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not -_COUNT_LIMIT < value < _COUNT_LIMIT:
        raise BadField("not an integer")
    return int(value)


def _optional_latency(value: Any) -> float | None:
    if value is None:
        return None
    if (_is_int(value) or isinstance(value, float)) and 0 <= value <= _LATEST:
        return float(value)
    raise BadField("not a latency in milliseconds")


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadField("not true or false")
    return value


def _optional_flag(value: Any) -> bool | None:
    return None if value is None else _flag(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadField("not a string")
    return value


_HEALTHS = {health.value: health for health in Health}


def _health(value: Any) -> Health:
    found = _HEALTHS.get(value) if isinstance(value, str) else None
    if found is None:
        raise BadField(f"not one of {', '.join(Health)}")
    return found


def _failure(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value in _FAILURES):
        return value
    raise BadField("not a failure class")


def _history(value: Any) -> tuple[Transition, ...]:
    if not isinstance(value, list) or len(value) > HISTORY_LIMIT:
        raise BadField("not a list of events")
    return tuple(_transition(entry) for entry in value)


_EVENTS = {event.value: event for event in Event}


def _transition(data: Any) -> Transition:
    # The loop of every load, over each target's history: the common case checked first.
    if type(data) is not dict:
        raise BadField("an event that is not an object")
    at, name, reason = data.get("at"), data.get("event"), data.get("reason")
    if not (type(at) is float and 0.0 <= at <= _LATEST):
        at = _time(at)
    event = _EVENTS.get(name) if type(name) is str else None
    if event is None:
        raise BadField("an event of no known kind")
    if type(reason) is not str:
        raise BadField("an event's reason is not a string")
    users = data.get("top_memory")
    if users is None:
        return Transition(at, event, reason)
    if not isinstance(users, list) or len(users) > HISTORY_LIMIT:
        raise BadField("an event's top_memory is not a list")
    return Transition(at, event, reason, tuple(_memory_user(u) for u in users))


def _memory_user(data: Any) -> MemoryUser:
    if not isinstance(data, dict):
        raise BadField("a memory user that is not an object")
    return MemoryUser(_text(data.get("name")), _count(data.get("bytes")))


_HAPPENINGS = {happened.value: happened for happened in Happened}


def _incident(data: Any) -> Incident:
    if not isinstance(data, dict):
        raise BadField("an incident that is not an object")
    name = data.get("happened")
    happened = _HAPPENINGS.get(name) if isinstance(name, str) else None
    if happened is None:
        raise BadField("an incident of no known kind")
    return Incident(_time(data.get("at")), happened, _text(data.get("detail", "")))


def _unit_seen(value: Any) -> UnitSeen | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadField("not an object")
    incidents = value.get("incidents")
    if not isinstance(incidents, list) or len(incidents) > MAX_INCIDENTS:
        raise BadField(f"incidents is not a list of at most {MAX_INCIDENTS}")
    return UnitSeen(_count(value.get("restarts")), _count(value.get("oom_kills")),
                    _optional_time(value.get("exited_at")),
                    tuple(_incident(i) for i in incidents),
                    _optional_count(value.get("host_oom_kills")), _text(value.get("unit", "")))


# How each field of a target's entry is read: the value it had in the file, checked.
_READERS: dict[str, Callable[[Any], Any]] = {
    "health": _health,
    "since": _optional_time,
    "consecutive_failures": _count,
    "consecutive_passes": _count,
    "failure_times": _times,
    "last_checked_at": _optional_time,
    "last_ok": _optional_flag,
    "last_reason": _text,
    "last_failure": _failure,
    "last_status_code": _optional_int,
    "last_latency_ms": _optional_latency,
    "last_notice": _text,
    "down_since": _optional_time,
    "streak_starving": _flag,
    "held_at": _optional_time,
    "restarts": _times,
    "restarts_total": _count,
    "unhelpful_restarts": _count,
    "last_restart_at": _optional_time,
    "given_up": _flag,
    "given_up_reason": _text,
    "paused_until": _optional_time,
    "paused_reason": _text,
    "unit_seen": _unit_seen,
    "history": _history,
}


def _target_from_json(data: Any) -> TargetState:
    """One target's entry; BadField naming the first field that is not what prober writes."""
    if not isinstance(data, dict):
        raise BadField("the entry is not an object")
    values: dict[str, Any] = {}
    for key, value in data.items():
        reader = _READERS.get(key)
        if reader is None:
            continue  # written by a newer prober: ignore rather than lose everything
        try:
            values[key] = reader(value)
        except BadField as exc:
            raise BadField(f"{key}: {exc}") from None
    return TargetState(**values)


@dataclass(frozen=True)
class Salvaged:
    """A state read from a file: what could be kept, and a line per entry that could not."""

    state: State
    dropped: tuple[str, ...] = ()


def from_json(data: Any) -> Salvaged:
    """A State from parsed JSON of any version we know, keeping every good target entry.

    ValueError if it is not a state at all (not an object, no version of ours, no targets, a
    trial flag that is not true or false).
    """
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    data = migrate(data)
    targets = data.get("targets")
    if not isinstance(targets, dict):
        raise ValueError("targets is not an object")
    trial = data.get("trial")
    if not isinstance(trial, bool):
        raise ValueError("trial is not true or false")
    kept: dict[str, TargetState] = {}
    dropped: list[str] = []
    for name, entry in targets.items():
        try:
            kept[name] = _target_from_json(entry)
        except BadField as exc:
            dropped.append(f'target "{one_line(name)[:200]}": {exc}')
    top: dict[str, Any] = {}
    for name, reader in _TOP_READERS.items():
        try:
            top[name] = reader(data.get(name))
        except BadField as exc:
            dropped.append(f"{name}: {exc}")
    return Salvaged(State(targets=kept, trial=trial, **top), tuple(dropped))


# How each top-level field but `targets` and `trial` is read; a bad one is left out alone.
_TOP_READERS: dict[str, Callable[[Any], Any]] = {
    "updated_at": _optional_time,
    "pressure": _episode,
    "systemd_unreachable_since": _optional_time,
}


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

    def __init__(self, path: str, *, keep_lock_file_open: bool = False,
                 named_apart: bool = False) -> None:
        self.path = Path(path)
        self.named_apart = named_apart  # see `named_apart`: a dry run may keep a trial here
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
            # Non-blocking: a FIFO put there is opened (and locked) at once, never waited on.
            fd = os.open(self.lock_path,
                         os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
                         0o644)
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

    def load(self, max_bytes: int = DEFAULT_SIZE_LIMIT, *, move_aside: bool = True) -> State:
        """The stored state; fresh state (with a warning) if it is missing or corrupt.

        StateError if the path is not a regular file. A corrupt file (a newer prober's too) is
        moved aside, unless `move_aside` is false (a dry run touches nothing).
        """
        try:
            raw = _read_regular(self._path_name, max_bytes)
        except FileNotFoundError:
            return State()
        except _TooLarge:
            return self._set_aside(f"it is larger than {max_bytes} bytes, more than this "
                                   "config's targets and history write", move_aside)
        except OSError as exc:
            return self._set_aside(f"cannot read it: {os_reason(exc)}", move_aside)
        try:
            salvaged = from_json(json.loads(raw.decode("utf-8")))
        except (ValueError, RecursionError) as exc:
            return self._set_aside(f"it is corrupt ({one_line(str(exc))[:200]})", move_aside)
        for problem in salvaged.dropped:
            log.warning("state file %s: %s; left out, the other entries are kept", self.path,
                        problem)
        return salvaged.state

    def _set_aside(self, problem: str, move_aside: bool) -> State:
        if not self.path.is_file():  # only ever move our own file, never a directory or device
            raise StateError(f"{self.path}: not a regular file: {problem}")
        if not move_aside:
            log.warning("state file %s: %s; left where it is, read as fresh state", self.path,
                        problem)
            return State()
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
            owner = self.directory_owner()
            write_atomically(self.path, dumps(state).encode(), owner=owner[0], group=owner[1])
            remove_stale_temp_files(self.path)
        except OSError as exc:
            hint = "the disk is full" if exc.errno == errno.ENOSPC else None
            raise StateError(f"{self.path}: cannot write the state: {os_reason(exc)}",
                             hint) from None

    def writes_back(self, state: State, *, dry_run: bool, found: bool) -> bool:
        """Whether a run that read `state` (`found`: from a file) writes it back; StateError
        for a real run given a trial's file. See `may_write`."""
        return may_write(dry_run=dry_run, named_apart=self.named_apart, found=found,
                         trial=state.trial, path=self.path)

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

    def directory_owner(self) -> tuple[int | None, int | None]:
        """As root, new files go to the state directory's owner (the `prober` user of
        StateDirectory=), so a manual root run leaves nothing the timer cannot use."""
        if os.geteuid() != 0:
            return None, None
        owner = os.stat(self.path.parent)
        return owner.st_uid, owner.st_gid

    def _give_to_directory_owner(self, fd: int) -> None:
        uid, gid = self.directory_owner()
        if uid is None or gid is None:
            return
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)


class _TooLarge(Exception):
    """The state file is larger than the config it serves can write."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
          "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _require_regular(st: os.stat_result, path: str) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
    raise StateError(f"{path}: {kind}, not a regular file: prober keeps its state only in a "
                     "regular file", "remove it; the next run starts from fresh state")


def _read_regular(path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path` (a symlink to one is followed), at most
    `max_bytes` of them, else _TooLarge. Anything else is a StateError and is never read: a
    FIFO without a writer would block the run, holding the lock, for good."""
    _require_regular(os.stat(path), path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        _require_regular(st, path)  # replaced by something else since the stat
        if st.st_size > max_bytes:
            raise _TooLarge
        chunks, left = [], max_bytes + 1
        while left > 0 and (chunk := os.read(fd, min(left, max(st.st_size + 1, 1 << 16)))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise _TooLarge
    return b"".join(chunks)


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
