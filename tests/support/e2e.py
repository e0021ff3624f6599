"""Helpers shared by the end-to-end tests: traffic checks and unit freezing."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.sandbox import Sandbox


def answers(url: str, within: float = 10.0) -> bool:
    """Whether `url` answers 200 "OK" within `within` seconds (polling)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=1.0, trust_env=False)
            if response.status_code == 200 and response.text == "OK":
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def refuses(url: str) -> bool:
    """Whether connecting to `url` is refused (nothing listens)."""
    try:
        httpx.get(url, timeout=1.0, trust_env=False)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def freeze(sandbox: Sandbox, unit: str) -> None:
    """SIGSTOP the unit's processes: up, `active`, and silent (the outage's failure)."""
    sandbox.systemctl("kill", "--signal=SIGSTOP", unit)


def thaw(sandbox: Sandbox, unit: str) -> None:
    """SIGCONT the unit's processes."""
    sandbox.systemctl("kill", "--signal=SIGCONT", unit, check=False)


def wait_for(predicate: Callable[[], object], within: float, what: str) -> None:
    """Poll `predicate` until it is true; fail saying `what` did not happen in time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {within}s: {what}")
