"""The actuators, one module each (prober/actuators/<name>.py, see prober/core/actuator.py for
the shape). A target is restarted by the actuator whose selector key it sets.

Adding an actuator is one module and one line below.
"""

from __future__ import annotations

import importlib

from prober.core.actuator import ActuatorKind

_MODULES = (
    "systemd",
    "container",
)

ACTUATORS: tuple[ActuatorKind, ...] = tuple(
    importlib.import_module(f"prober.actuators.{name}").ACTUATOR for name in _MODULES
)
