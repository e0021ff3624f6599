"""Memory pressure (PSI, /proc/pressure/memory), read on each run so reports show whether
failures coincided with the host running short of memory."""

from __future__ import annotations

from dataclasses import dataclass

PSI_MEMORY = "/proc/pressure/memory"


@dataclass(frozen=True)
class Pressure:
    """Share of time (percent) that some / all tasks stalled on memory, over 10 s and 60 s."""

    some_avg10: float
    some_avg60: float
    full_avg10: float
    full_avg60: float

    def describe(self) -> str:
        return (f"memory pressure: some {self.some_avg10:.1f}% / full {self.full_avg10:.1f}% "
                "of the last 10s")


def parse_psi(text: str) -> Pressure:
    """Pressure from the kernel's `some avg10=.. avg60=.. ...` / `full ...` lines."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for field in rest.split():
            key, _, value = field.partition("=")
            if key in ("avg10", "avg60"):
                values[f"{kind}_{key}"] = float(value)
    return Pressure(values.get("some_avg10", 0.0), values.get("some_avg60", 0.0),
                    values.get("full_avg10", 0.0), values.get("full_avg60", 0.0))


def read_memory_pressure(path: str = PSI_MEMORY) -> Pressure | None:
    """The current memory pressure, or None where the kernel has no PSI."""
    try:
        with open(path, encoding="ascii") as handle:
            return parse_psi(handle.read())
    except (OSError, ValueError):
        return None
