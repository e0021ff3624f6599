"""What one probe of one target found: plain data shared by the probes, the tracker and reports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FailureClass(StrEnum):
    """Why a probe failed; the values are what logs, JSON and metrics show."""

    REFUSED = "refused"  # nothing listens: connection refused or reset at connect
    TIMEOUT = "timeout"  # no complete answer within the target's timeout
    TLS = "tls"  # handshake or certificate verification failed
    DNS = "dns"  # the host name does not resolve
    CONNECT = "connect"  # any other failure to connect (unreachable, no such socket file)
    PROTOCOL = "protocol"  # the peer broke HTTP: closed mid-response, garbage
    STATUS = "status"  # an answer, with a status not in expect_status
    BODY = "body"  # the body did not contain expect_body / match expect_body_regex
    SLOW = "slow"  # answered correctly but slower than max_latency
    TOO_LARGE = "too-large"  # the body is over max_body and the expectation was not in it
    REDIRECT = "redirect"  # too many redirects
    ERROR = "error"  # anything else; the reason says what


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

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency is None else round(self.latency * 1000, 1)
