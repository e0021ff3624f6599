"""The probe kinds, one module each (prober/probes/<kind>.py, see base.py for the shape).

Adding a kind is one module and one line below; a key of its that another kind, the policy or
every target declares too is refused here (KeyClash).
"""

from __future__ import annotations

import importlib
from typing import Any

from prober.core.config import checked_registry
from prober.core.kinds import ProbeKind

_MODULES = (
    "http",
    "tcp",
    "exec",
    "unit_health",
)

KINDS: tuple[ProbeKind[Any, Any], ...] = checked_registry(tuple(
    importlib.import_module(f"prober.probes.{name}").KIND for name in _MODULES
))
