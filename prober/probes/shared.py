"""Keys that more than one probe kind takes, declared once."""

from __future__ import annotations

from prober.keys import Key, Option, Shape, integer

DEFAULT_MAX_BODY = 64 * 1024

MAX_BODY = Key(
    "max_body", Shape.INTEGER, integer(1),
    "bytes read at most of a body or a command's output. Reading stops there; if an "
    "expectation is set and not found in those bytes of a longer body, the probe fails as "
    "`too-large`", default="65536", in_defaults=True, minimum=1,
    option=Option("--max-body", "BYTES"),
)
