"""One mapping from what a connection raised to a failure class and reason
(prober/probes/failures.py), shared by the http and tcp kinds."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest

from prober.core.config import RestartRules, Target
from prober.core.results import FailureClass
from prober.probes.failures import failure_of
from prober.probes.http_spec import HttpProbe
from prober.probes.probing import probe_sync
from prober.probes.tcp import TcpProbe
from tests.support.servers import refused_port


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def _ssl_error(reason: str) -> ssl.SSLError:
    """An SSLError as the ssl module raises it, its `reason` set."""
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(("exc", "connecting", "expected"), [
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), True,
     (FailureClass.DNS, "cannot resolve db.example: name or service not known")),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True,
     (FailureClass.REFUSED, "connection refused")),
    (ExceptionGroup("connect", [OSError(errno.ENETUNREACH, "Network is unreachable"),
                                ConnectionRefusedError(errno.ECONNREFUSED, "refused")]), True,
     (FailureClass.REFUSED, "connection refused")),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True,
     (FailureClass.REFUSED, "connection reset")),
    (OSError(errno.EHOSTUNREACH, "No route to host"), True,
     (FailureClass.CONNECT, "cannot connect: no route to host")),
    (_caused(RuntimeError("wrapped"), OSError(errno.ENETUNREACH, "Network is unreachable")),
     True, (FailureClass.CONNECT, "cannot connect: network is unreachable")),
    (_ssl_error("WRONG_VERSION_NUMBER"), True,
     (FailureClass.TLS, "TLS handshake failed: wrong version number")),
    (_ssl_error("WRONG_VERSION_NUMBER"), False,
     (FailureClass.PROTOCOL, "TLS error mid-response: wrong version number")),
    (ValueError("odd"), True, (FailureClass.ERROR, "ValueError: odd")),
], ids=["dns", "refused", "group-refused-wins", "reset", "errno", "a-cause-beneath",
        "tls-connecting", "tls-mid-response", "unknown"])
def test_failure_of(exc: BaseException, connecting: bool,
                    expected: tuple[FailureClass, str]) -> None:
    """Each exception, direct, in a group or as a cause, maps to one class and reason."""
    assert failure_of(exc, host="db.example", connecting=connecting) == expected


@pytest.mark.parametrize(("host", "port"), [
    ("127.0.0.1", refused_port()),
    ("nothing.invalid", 80),
], ids=["refused", "unresolvable"])
def test_http_and_tcp_say_the_same_of_the_same_fault(host: str, port: int) -> None:
    """A port nothing listens on, a name that does not resolve: both kinds fail with the same
    class and reason, through the one mapping."""
    policy = RestartRules(timeout=5.0)
    http, tcp = probe_sync([
        Target(name="web", probe=HttpProbe(url=f"http://{host}:{port}/"), policy=policy),
        Target(name="db", probe=TcpProbe(host, port), policy=policy),
    ])
    assert not http.ok
    assert (http.failure, http.reason) == (tcp.failure, tcp.reason)
