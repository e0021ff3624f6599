"""prober: HTTP liveness prober and auto-restarter for systemd hosts."""

__version__ = "0.1.0"
