"""The errors prober shows to its users.

    ProberError            one line for the user, an optional hint, exit code 3
    ├── ConfigError        the config file is missing, unreadable or invalid
    ├── StateError         the state file or its directory cannot be used
    ├── SystemdError       systemd cannot be reached or refused a request
    ├── ActuatorFault      an actuator's manager cannot be used, through prober's own fault
    ├── UsageError         a command-line argument makes no sense
    └── InstallError       a file prober installs into the system cannot be written

Everything else reaching the CLI edge is a bug and shows a traceback only with --debug.
"""

from __future__ import annotations

from prober.core.text import one_line


class ProberError(Exception):
    """A failure the user can act on: one line, an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = self.message if self.hint is None else f"{self.message} (hint: {self.hint})"
        return one_line(text)


class ConfigError(ProberError):
    """The config file is missing, unreadable or invalid."""


class StateError(ProberError):
    """The state file or its directory cannot be used."""


class SystemdError(ProberError):
    """systemd cannot be reached, or refused what was asked."""


class ActuatorFault(ProberError):
    """An actuator cannot use its manager through prober's own fault, not the target's: its
    socket missing, a permission, an API too old, what it restarts briefly unknown. A run
    reports it as `prober-fault` (exit 1): nothing is restarted, nothing is counted."""


class UsageError(ProberError):
    """A command-line argument makes no sense."""


class InstallError(ProberError):
    """A file prober installs into the system (the polkit rule) cannot be written."""
