"""sd_notify(3) for `prober watch`: READY=1, WATCHDOG=1 and STATUS= to systemd, stdlib only."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping


def notify_socket(environ: Mapping[str, str] = os.environ) -> str:
    """Where notifications go: systemd's socket, or "" when not run by systemd."""
    return environ.get("NOTIFY_SOCKET", "")


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one notification; False when not run by systemd (no $NOTIFY_SOCKET)."""
    address = notify_socket(environ)
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
        return True
    return False


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """How often to send WATCHDOG=1 (half of WatchdogSec=), or None if no watchdog is set."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2
