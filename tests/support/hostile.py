"""Hostile targets, shared by tests/test_hostile.py and `make bench` (tools/bench_hostile.py):
gzip bombs, a redirect with a huge body, a body that sends a regex into backtracking; and a
one-shot `prober` run whose peak RSS is measured in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from dataclasses import dataclass

from tests.support.servers import Exchange, Handler, head

MIB = 1 << 20
BOMB_SIZE = 128 * MIB  # what a bomb decodes to, a layer at a time
REDIRECT_BODY = 96 * MIB
REDOS_REGEX = "(A+)+B"
REDOS_BODY = b"A" * 4096

# Run in a fresh interpreter: the peak RSS of its children is the measured command's alone.
# It ends the command itself at its timeout: a hung one is killed, not left behind.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[2:], timeout=float(sys.argv[1]))\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(done.returncode)\n"
)


def gzipped(data: bytes) -> bytes:
    return zlib.compress(data, 9, wbits=31)


def bomb(layers: int, size: int = BOMB_SIZE) -> bytes:
    """`size` zero bytes, gzipped `layers` times: a small body that decodes to `size`."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MIB)
    body = b"".join(squeeze.compress(block) for _ in range(size // MIB)) + squeeze.flush()
    for _ in range(layers - 1):
        body = gzipped(body)
    return body


def encoded(body: bytes, layers: int) -> Handler:
    """Answer every request with `body`, marked as gzipped `layers` times, whatever the
    request's Accept-Encoding."""
    coding = ", ".join(["gzip"] * layers)

    def handle(exchange: Exchange) -> None:
        exchange.respond(200, body, [("Content-Type", "text/plain"),
                                     ("Content-Encoding", coding)])

    return handle


def redirect_with_body(size: int = REDIRECT_BODY) -> Handler:
    """Redirect / to /in with a body of `size` bytes, streamed until the client goes away;
    answer /in 200 "OK"."""
    block = bytes(64 * 1024)

    def handle(exchange: Exchange) -> None:
        if exchange.request.path == "/in":
            exchange.respond(200, b"OK")
            return
        if not exchange.send(head(302, [("Location", "/in"), ("Content-Length", str(size)),
                                        ("Connection", "close")])):
            return
        for _ in range(size // len(block)):
            if not exchange.send(block):
                return

    return handle


@dataclass(frozen=True)
class Measured:
    code: int
    out: str
    err: str
    peak_kib: int  # the peak RSS of the prober process


def measured_prober(*args: str, env: dict[str, str] | None = None,
                    timeout: float = 60) -> Measured:
    """`python -m prober ARGS`, and its peak RSS."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROBER_")}
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(timeout), sys.executable, "-m",
                           "prober", *args], capture_output=True, text=True, env=environ,
                          timeout=timeout + 10, check=False)
    err, _, peak = done.stderr.rstrip("\n").rpartition("\n")
    assert peak.isdigit(), done.stderr  # else the command outlived its timeout
    return Measured(done.returncode, done.stdout, err, int(peak))
