"""What a probe kind is: the shape every module under prober/probes/ fills in.

A kind declares its config keys, builds its frozen spec from their values, and probes: one async
function of one neutral signature, `probe(spec, deadline, context) -> Finding`, which returns by
`deadline.at` and never raises for a failed target (a failure is data). The context is the
kind's own (one httpx client pool for HTTP), opaque to the rest of prober, created once per run
or once for the watcher's life, and closed with `aclose()`.

Everything else prober needs to know about a kind is asked here too, never written into a
shared module: how `prober probe` spells it on the command line, and what a passing probe may
still warn about. Files a key names that must exist when the config loads are marked on the key
itself (`Key.existing_file`). A failure that is prober's own, not the target's (a file the
kind's config names is unusable), is `prober.core.results.prober_fault(reason)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from prober.core.keys import Key
from prober.core.results import Deadline, Finding, ProbeResult
from prober.core.unit_seen import UnitSeen


class ProbeSpec(Protocol):
    """A kind's frozen spec dataclass: everything needed to probe one target that way."""

    @property
    def endpoint(self) -> str:
        """Where the probe goes, for humans (no secrets)."""
        ...


class Context(Protocol):
    """A kind's shared probing machinery (clients, certificates)."""

    async def prepare(self, specs: Sequence[Any]) -> None:
        """Set up, before the probes start, what would otherwise stall the first of them."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Remembering(Protocol):
    """A context whose kind keeps what it saw of a target between runs, in the state (its
    finding's `seen`, the target's `unit_seen`): told it before each run's probes."""

    def recall(self, spec: Any, seen: UnitSeen | None) -> None: ...


class Invalid(ValueError):
    """A spec that its keys' values cannot make: names the key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class KeyClash(TypeError):
    """A registry whose kinds declare a key that another owner declares too: names both."""


class NoContext:
    """The context of a kind that shares nothing between probes."""

    async def prepare(self, specs: Sequence[Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class Argument:
    """How `prober probe ARGUMENT...` names a target of one kind."""

    metavar: str  # "tcp://HOST:PORT": its part of the usage line
    help: str  # "tcp://HOST:PORT": what it is, in the help text and in the error for none
    # The key values the arguments stand for, or None if they are not of this kind.
    parse: Callable[[Sequence[str]], Mapping[str, Any] | None]


def no_notice(spec: Any, result: ProbeResult, now: float) -> str | None:
    """The notice of a kind whose passing probes never warn."""
    return None


def watches_nothing(spec: Any) -> str | None:
    """The watched unit of a kind that probes what answers, not a systemd unit."""
    return None


S = TypeVar("S")
C = TypeVar("C", bound=Context)


@dataclass(frozen=True)
class ProbeKind(Generic[S, C]):
    """One probe kind, as registered in prober/probes/__init__.py.

    Its spec is a frozen dataclass whose fields are named after its keys (`build` may add
    others): `validate` shows those that differ from their defaults, and `load_config` checks
    the files of keys marked `existing_file`.
    """

    name: str  # "http": the value reports show
    spec: type[S]
    keys: tuple[Key, ...]  # its own config keys
    selectors: tuple[str, ...]  # a target with any of these keys is of this kind
    build: Callable[[Mapping[str, Any]], S]  # the keys' values -> the spec; raises Invalid
    probe: Callable[[S, Deadline, C], Awaitable[Finding]]
    context: Callable[[], C]
    argument: Argument
    # Why a target whose probe passed is still *warning* (a certificate about to expire), or
    # None. Pure: the spec, the result and `now` in.
    notice: Callable[[S, ProbeResult, float], str | None] = no_notice
    # Whether its targets may name what restarts them: False for a kind that watches what
    # something else restarts already (unit_health: systemd's Restart=).
    restartable: bool = True
    # The systemd unit the kind itself watches, whose journal tells why a target failed when
    # nothing restarts it (unit_health: its unit), or None.
    watches: Callable[[S], str | None] = watches_nothing


REGISTRY = "prober.probes"  # the package whose KINDS are the registered kinds


def registered() -> tuple[ProbeKind[Any, Any], ...]:
    """The registered kinds, looked up by the registry's name: the core imports no kind."""
    kinds: tuple[ProbeKind[Any, Any], ...] = importlib.import_module(REGISTRY).KINDS
    return kinds
