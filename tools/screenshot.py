"""docs/operating.md's picture of the status page, as headless Chromium draws it
(`make screenshot`).

    python -m tools.screenshot [PATH]     # default: docs/status-page.png
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.snapshots import snapshot
from tests.support.statuspage import SCREENSHOT, chromium_missing, screenshot


def main(argv: Sequence[str]) -> int:
    missing = chromium_missing()
    if missing:
        print(f"screenshot: {missing}", file=sys.stderr)
        return 2
    path = Path(argv[0]) if argv else SCREENSHOT
    asyncio.run(screenshot(snapshot(), path))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
