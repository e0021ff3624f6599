"""What a failed connection or request raised -> its failure class and reason, for every kind
that connects (http, tcp): one mapping, so the same fault reads the same whichever kind met it.

httpx is never imported here: its errors are looked for only once something has loaded it (an
httpx error cannot be raised before), so a tcp-only run does not pay for it.
"""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Iterator

from prober.core.results import FailureClass
from prober.core.text import lower_first, os_reason


def failure_of(exc: BaseException, *, host: str, connecting: bool = True,
               unix_socket: str | None = None) -> tuple[FailureClass, str]:
    """The failure class and reason (not yet one line) for `exc`, raised while connecting to
    `host` (or to `unix_socket`), or, unless `connecting`, once connected."""
    httpx = sys.modules.get("httpx")

    def raised(*names: str) -> bool:
        return httpx is not None and isinstance(exc, tuple(getattr(httpx, n) for n in names))

    if raised("TimeoutException"):  # not expected: httpx's timeouts are off
        return FailureClass.TIMEOUT, f"timed out ({type(exc).__name__})"
    causes = list(causes_of(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return FailureClass.TLS, f"certificate verify failed: {cause.verify_message}"
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            what = (cause.reason or str(cause)).replace("_", " ").lower()
            if connecting:
                return FailureClass.TLS, f"TLS handshake failed: {what}"
            return FailureClass.PROTOCOL, f"TLS error mid-response: {what}"
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return FailureClass.DNS, f"cannot resolve {host}: {os_reason(cause)}"
    if raised("RemoteProtocolError"):
        return FailureClass.PROTOCOL, lower_first(str(exc)) or "the server broke HTTP"
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return FailureClass.REFUSED, "connection refused"
        if isinstance(cause, FileNotFoundError) and unix_socket:
            return FailureClass.REFUSED, f"no such socket {unix_socket}"
    if raised("ReadError", "WriteError") and not connecting:
        return FailureClass.PROTOCOL, f"connection lost mid-response: {os_reason(causes[-1])}"
    if raised("DecodingError"):
        return FailureClass.PROTOCOL, lower_first(str(exc))
    for cause in causes:
        if isinstance(cause, ConnectionResetError):
            return FailureClass.REFUSED, "connection reset"
        if isinstance(cause, OSError) and cause.errno is not None:
            return FailureClass.CONNECT, f"cannot connect: {os_reason(cause)}"
    if raised("ConnectError"):
        return FailureClass.CONNECT, f"cannot connect: {os_reason(causes[-1])}"
    return FailureClass.ERROR, f"{type(exc).__name__}: {exc}"


def causes_of(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, what caused it and the members of any exception group on the way."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        # httpcore re-raises `from None`, hiding the OSError beneath: follow the context too.
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
