"""The status page in a real browser: headless Chromium (Debian's `chromium`) loading it from
prober's own web server on loopback.

    python -m tools.screenshot [PATH]     # docs/operating.md's screenshot: docs/status-page.png

Screenshots use Chromium's command line (`--screenshot`). The DOM is read over the DevTools
protocol (`--remote-debugging-pipe`): Chromium's `--dump-dom` itself runs a script, so with
JavaScript off it prints nothing, while DevTools' DOM domain reads the document either way and
`Emulation.setScriptExecutionDisabled` switches scripts off for the page.

Every Chromium started here runs in a process group of its own, with a fresh profile directory;
when it is done (or its deadline passes) the whole group is killed, and any process still naming
that profile is killed by its PID, so that nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from prober.core.runs import Snapshot
from prober.outputs.web import WebServer, serve
from tests.support.programs import CHROMIUM

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
WINDOW = (1100, 1600)
DEMO_HOST = "mastodon.example.org"
PROFILE_PREFIX = "prober-chromium-"
TIMEOUT = 60.0
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-extensions", "--hide-scrollbars", "--mute-audio")


class ChromiumError(Exception):
    """Chromium did not do what it was asked."""


def chromium_missing() -> str:
    """Why Chromium cannot be used here ("" if it can)."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (Debian's chromium package)"
    return ""


def pids_using(profile: str) -> list[int]:
    """Processes whose command line names `profile`: Chromium's, started from here."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if profile.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@contextlib.asynccontextmanager
async def launched(*args: str, pass_fds: Sequence[int] = (), redirect: str = ""
                   ) -> AsyncIterator[asyncio.subprocess.Process]:
    """Chromium with `args`, in a process group of its own and a fresh profile, killed with
    everything it started when the `with` ends. `redirect`: bash's fd redirections for it."""
    profile = tempfile.mkdtemp(prefix=PROFILE_PREFIX)
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    env["HOME"] = profile
    argv = [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args]
    if redirect:
        argv = ["bash", "-c", f'exec "$@" {redirect}', "bash", *argv]  # dash: fds 0-9 only
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True, pass_fds=pass_fds)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()
        for pid in pids_using(profile):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)


async def chromium(url: str, *args: str, timeout: float = TIMEOUT) -> str:
    """Run headless Chromium's command line on `url` with `args` (`--screenshot=...`) and
    return its standard output."""
    async with launched(*args, url) as proc:
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            raise ChromiumError(f"chromium did not finish within {timeout:g}s") from None
        if proc.returncode != 0:
            raise ChromiumError(f"chromium exited with {proc.returncode}: "
                                f"{err.decode(errors='replace')[-2000:]}")
        return out.decode()


class DevTools:
    """The DevTools protocol over Chromium's pipe: NUL-terminated JSON both ways."""

    def __init__(self, commands: int, replies: asyncio.StreamReader) -> None:
        self._commands = commands
        self._replies = replies
        self._last_id = 0
        self._events: list[dict[str, Any]] = []

    async def _next(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads((await self._replies.readuntil(b"\0"))[:-1])
        return message

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = await self._next()
            if reply.get("id") != self._last_id:
                self._events.append(reply)
                continue
            if "error" in reply:
                raise ChromiumError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result

    def seen(self, method: str, session: str) -> list[dict[str, Any]]:
        """The events of `method` for `session` read so far, in order."""
        return [e for e in self._events
                if e.get("method") == method and e.get("sessionId") == session]

    async def event(self, method: str, session: str) -> dict[str, Any]:
        while True:
            for event in self._events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self._events.append(await self._next())


def _high(fd: int) -> int:
    """`fd` moved to 10 or above, clear of the 3 and 4 Chromium's pipe must become."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


@dataclass(frozen=True)
class Loaded:
    """A page as Chromium loaded it: its document, serialized, and every URL it requested."""

    dom: str
    requests: tuple[str, ...]
    layout: dict[str, Any] | None = None  # when loaded at a width: `_MEASURE`'s answer


async def page_dom(url: str, *, javascript: bool = True, timeout: float = TIMEOUT) -> str:
    """The document Chromium builds from `url`, serialized once it has loaded, with scripts
    allowed or not."""
    return (await load_page(url, javascript=javascript, timeout=timeout)).dom


async def load_page(url: str, *, javascript: bool = True, timeout: float = TIMEOUT,
                    width: int | None = None) -> Loaded:
    """`url` loaded by Chromium: its document once loaded, and the requests it made."""
    commands_in, commands = (_high(fd) for fd in os.pipe())
    replies_fd, replies_out = (_high(fd) for fd in os.pipe())
    try:
        async with launched("--remote-debugging-pipe", "about:blank",
                            pass_fds=(commands_in, replies_out),
                            redirect=f"3<&{commands_in} 4>&{replies_out}"):
            os.close(commands_in)
            os.close(replies_out)
            commands_in = replies_out = -1
            replies = asyncio.StreamReader(limit=1 << 26)
            await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(replies),
                os.fdopen(replies_fd, "rb", buffering=0))
            replies_fd = -1  # the transport owns it now
            tools = DevTools(commands, replies)
            try:
                return await asyncio.wait_for(_load(tools, url, javascript, width), timeout)
            except TimeoutError:
                raise ChromiumError(f"chromium did not load {url} within {timeout:g}s") \
                    from None
    finally:
        for fd in (commands_in, commands, replies_fd, replies_out):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


async def _load(tools: DevTools, url: str, javascript: bool, width: int | None = None
                ) -> Loaded:
    target = await tools.call("Target.createTarget", {"url": "about:blank"})
    session = (await tools.call("Target.attachToTarget",
                                {"targetId": target["targetId"], "flatten": True}))["sessionId"]
    await tools.call("Page.enable", session=session)
    await tools.call("Network.enable", session=session)
    if width is not None:
        await tools.call("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": 900, "deviceScaleFactor": 1,
                          "mobile": width < PHONE_BREAK}, session=session)
    await tools.call("Emulation.setScriptExecutionDisabled", {"value": not javascript},
                     session=session)
    await tools.call("Page.navigate", {"url": url}, session=session)
    await tools.event("Page.loadEventFired", session)
    document = await tools.call("DOM.getDocument", {"depth": 0}, session=session)
    html = await tools.call("DOM.getOuterHTML", {"nodeId": document["root"]["nodeId"]},
                            session=session)
    requests = tuple(str(event["params"]["request"]["url"])
                     for event in tools.seen("Network.requestWillBeSent", session))
    layout = None
    if width is not None:
        measured = await tools.call("Runtime.evaluate", {"expression": _MEASURE,
                                                         "returnByValue": True}, session=session)
        layout = measured["result"]["value"]
    return Loaded(str(html["outerHTML"]), requests, layout)


PHONE_BREAK = 500
# Read by DevTools, not by the page (which has no script): how wide the document is drawn
# against the viewport, and where each target's row is.
_MEASURE = """({viewport: window.innerWidth,
  scrolled: document.documentElement.scrollWidth,
  rows: [...document.querySelectorAll('section.target')].map(e => {
    const box = e.getBoundingClientRect();
    return {name: e.dataset.target, top: box.top, bottom: box.bottom, left: box.left,
            right: box.right};
  })})"""


@contextlib.asynccontextmanager
async def serving(snapshot: Callable[[], Snapshot], **options: object
                  ) -> AsyncIterator[WebServer]:
    """prober's web server on 127.0.0.1, on a free port, in the running loop."""
    server = await serve("127.0.0.1", 0, snapshot, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.close()


async def dump_dom(snapshot: Snapshot, *, javascript: bool = True,
                   hostname: str = DEMO_HOST) -> str:
    """The DOM Chromium builds from the page of `snapshot`, served by prober's web server."""
    async with serving(lambda: snapshot, hostname=hostname) as server:
        return await page_dom(f"http://127.0.0.1:{server.port}/", javascript=javascript)


async def screenshot(snapshot: Snapshot, path: Path, window: Sequence[int] = WINDOW,
                     hostname: str = DEMO_HOST) -> None:
    """A PNG of the page of `snapshot` as Chromium draws it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    async with serving(lambda: snapshot, hostname=hostname) as server:
        await chromium(f"http://127.0.0.1:{server.port}/", f"--screenshot={path}",
                       f"--window-size={window[0]},{window[1]}")
    if not path.is_file():
        raise ChromiumError(f"chromium wrote no screenshot at {path}")


async def laid_out(snapshot: Snapshot, width: int, hostname: str = DEMO_HOST
                   ) -> dict[str, Any]:
    """How Chromium lays out the page of `snapshot` in a viewport `width` pixels wide."""
    async with serving(lambda: snapshot, hostname=hostname) as server:
        loaded = await load_page(f"http://127.0.0.1:{server.port}/", width=width)
    assert loaded.layout is not None
    return loaded.layout


class Dom(HTMLParser):
    """What the tests read from a dumped DOM: the targets' cards in order, their timeline marks
    and bands, the text of elements by id, every tag seen."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.targets: dict[str, dict[str, str]] = {}
        self.events: dict[str, list[str]] = {}
        self.bands: dict[str, list[str]] = {}
        self.titles: dict[str, list[str]] = {}
        self.text_of: dict[str, str] = {}
        self.card_text: dict[str, str] = {}
        self.tags: set[str] = set()
        self._target: str | None = None
        self._depth = 0
        self._open: list[list[str | int]] = []  # [id, tag, depth] of elements being read
        self._title = False
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = {k: v or "" for k, v in attrs}
        if tag == "section" and "data-target" in values:
            self._target, self._depth = values["data-target"], 0
            self.targets[self._target] = values
            for table in (self.events, self.bands, self.titles):
                table[self._target] = []
            self.card_text[self._target] = ""
        if self._target is not None and tag == "section":
            self._depth += 1
        if self._target is not None:
            if "data-event" in values:
                self.events[self._target].append(values["data-event"])
            if "data-band" in values:
                self.bands[self._target].append(values["data-band"])
        if tag == "title":
            self._title = True
        for element in self._open:
            if element[1] == tag:
                element[2] = int(element[2]) + 1
        if "id" in values:
            self.text_of[values["id"]] = ""
            self._open.append([values["id"], tag, 1])

    def handle_endtag(self, tag: str) -> None:
        for element in self._open:
            if element[1] == tag:
                element[2] = int(element[2]) - 1
        self._open = [element for element in self._open if int(element[2]) > 0]
        if tag == "title":
            self._title = False
        if tag == "section" and self._target is not None:
            self._depth -= 1
            if self._depth == 0:
                self._target = None

    def handle_data(self, data: str) -> None:
        for element in self._open:
            self.text_of[str(element[0])] += data
        if self._target is not None:
            if self._title:
                self.titles[self._target].append(data)
            else:
                self.card_text[self._target] += data
