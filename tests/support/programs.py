"""Programs from Debian packages that tests drive for real (promtool, chromium)."""

from __future__ import annotations

import os

import pytest

PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"
CADDY = "/usr/bin/caddy"
NGINX = "/usr/sbin/nginx"
HTPASSWD = "/usr/bin/htpasswd"
CHROMIUM = "/usr/bin/chromium"


def require_program(path: str, package: str) -> str:
    """`path`, or skip (with $CI set: fail) when Debian's `package` is not installed."""
    if os.access(path, os.X_OK):
        return path
    message = f"needs {path} (Debian: {package}; `make deps` installs it)"
    if os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
