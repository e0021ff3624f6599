"""docs/operating.md's pictures of the status page, as headless Chromium draws it at a
desktop's width and a phone's (`make screenshot`).

    python -m tools.screenshot [PATH]     # default: docs/status-page.png, and
                                          # docs/status-page-phone.png beside it
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.snapshots import snapshot
from tests.support.statuspage import SCREENSHOT, chromium_missing, screenshot

DESKTOP = (1280, 1000)
PHONE = (390, 2400)


def main(argv: Sequence[str]) -> int:
    missing = chromium_missing()
    if missing:
        print(f"screenshot: {missing}", file=sys.stderr)
        return 2
    path = Path(argv[0]) if argv else SCREENSHOT
    phone = path.with_name(f"{path.stem}-phone{path.suffix}")
    asyncio.run(screenshot(snapshot(), path, window=DESKTOP))
    asyncio.run(screenshot(snapshot(), phone, window=PHONE))
    print(path)
    print(phone)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
