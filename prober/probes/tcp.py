"""The TCP probe kind: a connect, closed at once (a database or Redis port that accepts)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prober.core.keys import Key, Shape, format_duration, host_port
from prober.core.kinds import Argument, NoContext, ProbeKind
from prober.core.results import Deadline, FailureClass, Finding
from prober.core.text import reason
from prober.probes.failures import failure_of

_CLOSE_BOUND = 0.2


@dataclass(frozen=True)
class TcpProbe:
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


KEYS = (
    Key("tcp", Shape.HOST_PORT, host_port,
        '`"host:port"` (`"[::1]:6379"`): connect-only check'),
)


def build(values: Mapping[str, Any]) -> TcpProbe:
    host, port = values["tcp"]
    return TcpProbe(host, port)


def argument(args: Sequence[str]) -> Mapping[str, Any] | None:
    if len(args) == 1 and args[0].lower().startswith("tcp://"):
        return {"tcp": args[0][len("tcp://"):].rstrip("/")}
    return None


async def probe(spec: TcpProbe, deadline: Deadline, context: NoContext) -> Finding:
    """Connect to each address of the host in turn until one accepts."""
    timeout = asyncio.timeout_at(deadline.at)
    try:
        async with timeout:
            return await _connect(spec)
    except Exception as exc:
        if timeout.expired():
            return Finding(f"no connection within {format_duration(deadline.seconds)}",
                           FailureClass.TIMEOUT)
        return _classify(exc, spec)


async def _connect(spec: TcpProbe) -> Finding:
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for *_, address in addresses:
        try:
            _, writer = await asyncio.open_connection(str(address[0]), int(address[1]))
        except OSError as exc:
            errors.append(exc)
            continue
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_BOUND):
                await writer.wait_closed()
        return Finding("connected")
    # asyncio would merge several errors into one message; keep each.
    if len(errors) == 1:
        raise errors[0]
    raise ExceptionGroup("connect", errors)


def _classify(exc: Exception, spec: TcpProbe) -> Finding:
    failure, text = failure_of(exc, host=spec.host)
    return Finding(reason(text), failure)


KIND: ProbeKind[TcpProbe, NoContext] = ProbeKind(
    name="tcp",
    spec=TcpProbe,
    keys=KEYS,
    selectors=("tcp",),
    build=build,
    probe=probe,
    context=NoContext,
    argument=Argument("tcp://HOST:PORT", "tcp://HOST:PORT", argument),
)
