"""Files the config names (an exec target's `env_file`, `[notify] token_file`): prober's own
business, read on every use as the running user, and never trusted more than the config is.

A value is an absolute path, or a credential name that systemd's `LoadCredential=` put in
`$CREDENTIALS_DIRECTORY` (never a path relative to wherever prober was started). A file is
used only if it is a regular file owned by root or the running user and not writable by group
or others, as `load_config` demands of the config itself: whoever can write it chooses the
environment of a command that may run as root (an admin's manual `prober check`). It is opened
without blocking (a FIFO or a device never hangs a run) and read up to a size cap.

Whatever is wrong is a `FileFault` naming the key and the file: a probe turns it into a prober
fault (prober/core/results.py), never a failure of the target.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from prober.core.config import (
    NOTIFY_KEYS,
    Config,
    Where,
    check_ownership,
    named_files,
    parse_config,
    parse_toml,
    text_position,
)
from prober.core.errors import ConfigError
from prober.core.keys import Key, Shape
from prober.core.text import os_reason, size
from prober.io.files import FileRefused, read_regular_file

MAX_NAMED_FILE = 64 * 1024
MAX_CONFIG_BYTES = 1 << 20

T = TypeVar("T")


class FileFault(Exception):
    """A file the config names cannot be used; the message names the key and the file."""

    def __init__(self, key: str, path: str, problem: str) -> None:
        super().__init__(f"{key} {path}: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class NamedFile:
    """One file a config key names."""

    key: str  # "env_file", "token_file"
    value: str  # as the config spells it: an absolute path or a credential name

    def where(self, environ: Mapping[str, str]) -> str:
        """Where the file is: the absolute path, or the credential in $CREDENTIALS_DIRECTORY;
        ValueError for a credential name with no such directory."""
        if os.path.isabs(self.value):
            return self.value
        directory = environ.get("CREDENTIALS_DIRECTORY", "")
        if not os.path.isabs(directory):
            raise ValueError(f'"{self.value}" is a credential name, but $CREDENTIALS_DIRECTORY '
                             "is not set")
        return os.path.join(directory, self.value)

    def parsed(self, environ: Mapping[str, str], euid: int, parse: Callable[[str], T]) -> T:
        """The file's text through `parse` (whose ValueError says what is wrong), or
        FileFault."""
        text = self.read(environ, euid)
        try:
            return parse(text)
        except ValueError as exc:
            raise FileFault(self.key, self.where(environ), str(exc)) from None

    def read(self, environ: Mapping[str, str], euid: int, limit: int = MAX_NAMED_FILE) -> str:
        """The file's text, or FileFault."""
        try:
            path = self.where(environ)
        except ValueError as exc:
            raise FileFault(self.key, self.value, str(exc)) from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise FileFault(self.key, path, os_reason(exc)) from None
        try:
            problem = unsafe(os.fstat(fd), euid)
            if problem is not None:
                raise FileFault(self.key, path, problem)
            data = _read_at_most(fd, limit + 1)
        except OSError as exc:
            raise FileFault(self.key, path, os_reason(exc)) from None
        finally:
            os.close(fd)
        if len(data) > limit:
            raise FileFault(self.key, path, f"larger than {size(limit)}")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise FileFault(self.key, path, "not UTF-8 text") from None


def unsafe(st: os.stat_result, euid: int) -> str | None:
    """Why a file with this status must not be used by a process running as `euid`, or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({_file_type(st.st_mode)})"
    if st.st_uid not in (0, euid):
        return f"owned by uid {st.st_uid}, not by root or the running user (uid {euid})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {st.st_mode & 0o777:o})"
    return None


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _read_at_most(fd: int, count: int) -> bytes:
    chunks = []
    left = count
    while left > 0:
        chunk = os.read(fd, min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_config_text(path: str) -> tuple[str, os.stat_result]:
    """The config file's text (a regular file, capped in size, UTF-8 without NUL bytes) and the
    status of the file that text was read from, for the ownership check."""
    try:
        data, st = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file",
            "copy one of the examples/ to /etc/prober/prober.toml or pass --config",
        ) from None
    except FileRefused as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {os_reason(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        valid = data[:exc.start].decode("utf-8")
        where = text_position(valid, len(valid))
        raise ConfigError(f"{path}: not valid UTF-8 (at {where})") from None
    if (nul := text.find("\0")) >= 0:
        raise ConfigError(f"{path}: contains a NUL byte (at {text_position(text, nul)})")
    return text, st


def load_config(path: str, *, insecure: bool = False,
                environ: Mapping[str, str] | None = os.environ) -> Config:
    """Read, parse and validate the config file at `path`.

    Like sshd and sudo, refuses a file that someone other than root or the running user
    could have written (it decides what gets restarted and which commands run), unless
    `insecure`. Files a target names with a key marked `existing_file` (ca_file) must exist.
    With `environ` (every command that reads the files the config names), a credential name
    needs $CREDENTIALS_DIRECTORY in it; the files themselves are read when used (a missing one
    is a prober fault then, see prober/io/configfiles.py).
    """
    text, read_from = read_config_text(path)
    if not insecure:  # the file that was read, not whatever the path names a moment later
        check_ownership(path, read_from, os.geteuid())
    config = parse_config(parse_toml(text, path), path)
    for target in config.targets:
        for key, file in named_files(target):
            if not os.path.isfile(file):
                raise ConfigError(f'{path}: target "{target.name}": {key}: "{file}" '
                                  "does not exist")
    if environ is not None:
        for scope, _, named in credential_files(config):
            try:
                named.where(environ)
            except ValueError as exc:
                raise Where(path, scope).error(
                    named.key, str(exc), "give an absolute path, or run prober under systemd "
                    "with LoadCredential=") from None
    return config


def credential_files(config: Config) -> list[tuple[str, Key, NamedFile]]:
    """(where, key, file) of each file the config names with a credential key, read when used:
    an exec target's env_file, [notify] token_file and smtp_password_file."""
    named = [(f'target "{target.name}"', key, value) for target in config.targets
             for key in target.kind.keys
             if key.shape is Shape.CREDENTIAL and (value := getattr(target.probe, key.name, None))]
    if config.notify is not None:
        named += [("[notify]", key, value) for key in NOTIFY_KEYS
                  if key.shape is Shape.CREDENTIAL and (value := getattr(config.notify, key.name))]
    if not named:
        return []
    return [(where, key, NamedFile(key.name, value)) for where, key, value in named]
