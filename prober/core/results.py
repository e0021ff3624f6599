"""What one probe of one target found: plain data shared by the probes, the tracker and reports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prober.core.unit_seen import UnitSeen


class FailureClass(StrEnum):
    """Why a probe failed; the values are what logs, JSON and metrics show.

    One vocabulary for every kind, kept here and not brought by each kind: the values are a
    contract with users (alert rules and dashboards match them, docs/failure-modes.md's
    table lists them), and the run and the policy read them (`means_gone`, `means_starving`).
    A new kind maps its failures onto these; a new class changes that contract, so it is made
    here on purpose.
    """

    REFUSED = "refused"  # nothing listens: connection refused or reset, no such socket file
    TIMEOUT = "timeout"  # no complete answer within the target's timeout
    TLS = "tls"  # handshake or certificate verification failed
    DNS = "dns"  # the host name does not resolve
    CONNECT = "connect"  # any other failure to connect (host or network unreachable)
    PROTOCOL = "protocol"  # the peer broke HTTP: closed mid-response, garbage
    STATUS = "status"  # an answer, with a status not in expect_status
    BODY = "body"  # the body did not contain expect_body / match expect_body_regex
    SLOW = "slow"  # answered correctly but slower than max_latency
    TOO_LARGE = "too-large"  # the body is over max_body and the expectation was not in it
    REDIRECT = "redirect"  # too many redirects
    EXIT = "exit"  # a command exited with another code than expect_exit
    OUTPUT = "output"  # a command's output lacked expect_output / expect_output_regex
    EXEC = "exec"  # a command could not be run: not found, not executable, permission
    UNIT = "unit"  # systemd says the unit failed, or restarts it again and again
    OOM = "oom"  # the kernel OOM-killed the unit within its window
    ERROR = "error"  # anything else; the reason says what
    PROBER_FAULT = "prober-fault"  # prober's own config, files or environment: see prober_fault

    @property
    def means_starving(self) -> bool:
        """Whether this failure may only mean the host is short of resources: the service
        answered too late (or not yet), not wrongly. Every other class means it is broken."""
        return self in (FailureClass.TIMEOUT, FailureClass.SLOW)

    @property
    def means_gone(self) -> bool:
        """Whether this failure can only mean that nothing listens any more, so that a few
        quick probes confirm it as surely as a few runs do (`confirm_interval`).

        Only `refused`: the kernel answered that no socket takes the connection, or a unix
        socket's file is gone. Not `connect`: an unreachable host or network says nothing of
        the service. A slow deploy or a starving host also gives `timeout`, `slow`, `status`,
        `dns` or `tls`; `protocol`, `exit` and `error` may be passing troubles of a live
        service.
        """
        return self is FailureClass.REFUSED


@dataclass(frozen=True)
class Deadline:
    """When a probe must be done, on the event loop's clock, and the budget that gave it."""

    at: float
    seconds: float


@dataclass(frozen=True)
class Certificate:
    """The peer certificate of a verified TLS connection."""

    subject: str
    not_after: float  # epoch seconds


@dataclass(frozen=True)
class Finding:
    """What a probe kind found; the runner adds name, latency and attempts (a ProbeResult)."""

    reason: str
    failure: FailureClass | None = None
    status_code: int | None = None
    certificate: Certificate | None = None
    seen: UnitSeen | None = None  # what the unit_health kind remembers for the next run


def prober_fault(reason: str) -> Finding:
    """A target prober could not judge, through a fault of its own: a file its config names
    that is missing, unreadable or unsafe, a socket or a tool its environment lacks.

    The admin's to fix, not the target's: the failure streak neither grows nor resets, nothing
    is restarted, no dependent is blamed on it, and `check` exits 1 (warning), never 2 for it.
    Every output shows it as `prober-fault`: the text table's action, `check --json`'s
    `failure` and `action`, the Nagios line, `status`, the status page and the
    `prober_target_prober_fault` series. `reason` names the key and the file or thing at fault.
    """
    return Finding(reason, FailureClass.PROBER_FAULT)


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of probing one target once (after its retries)."""

    name: str
    ok: bool
    reason: str
    failure: FailureClass | None = None
    status_code: int | None = None
    latency: float | None = None  # seconds, until the answer was judged
    attempts: int = 1
    certificate: Certificate | None = None
    seen: UnitSeen | None = None  # the finding's, kept in the target's state (unit_seen)

    @property
    def prober_fault(self) -> bool:
        """Whether prober could not judge the target through its own fault (see prober_fault)."""
        return self.failure is FailureClass.PROBER_FAULT

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency is None else round(self.latency * 1000, 1)
