"""The status page in a real browser: headless Chromium loads it from prober's web server on
loopback, and the tests read the DOM it built (see tests/support/statuspage.py)."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Coroutine
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import pytest

from prober.core.psi import MemoryUser
from prober.core.runs import ConfigReload, Snapshot
from prober.core.tracker import Event, Health, Transition
from prober.outputs import page
from tests.support import snapshots
from tests.support.programs import CHROMIUM, require_program
from tests.support.statuspage import (
    PROFILE_PREFIX,
    Dom,
    dump_dom,
    laid_out,
    load_page,
    page_dom,
    pids_using,
    screenshot,
    serving,
)

pytestmark = pytest.mark.timeout(120)
HOUR = 3600.0

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], deadline: float = 90.0) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, deadline))


async def both(first: Awaitable[T], second: Awaitable[T]) -> tuple[T, T]:
    one, two = await asyncio.gather(first, second)
    return one, two


@pytest.fixture(scope="module")
def browser() -> str:
    return require_program(CHROMIUM, "chromium")


@pytest.fixture(scope="module")
def rendered(browser: str) -> Dom:
    return Dom(run(dump_dom(snapshots.snapshot())))


def test_targets_worst_first_with_their_status(rendered: Dom) -> None:
    """Down and given-up targets come first, then the never probed, the paused, the healthy;
    each card carries its status, health and flags."""
    assert list(rendered.targets) == ["web", "sidekiq", "postgres", "streaming", "caddy",
                                      "redis"]
    summary = {name: (a["data-status"], a["data-health"], a["data-paused"], a["data-given-up"])
               for name, a in rendered.targets.items()}
    assert summary == {
        "web": ("critical", "down", "false", "false"),
        "sidekiq": ("critical", "down", "false", "true"),
        "postgres": ("unknown", "unknown", "false", "false"),
        "streaming": ("warning", "healthy", "true", "false"),
        "caddy": ("ok", "healthy", "false", "false"),
        "redis": ("ok", "healthy", "false", "false"),
    }
    assert rendered.text_of["overall"].startswith("CRITICAL prober on mastodon.example.org")
    assert "1 down, 1 given up, 1 unknown, 1 paused, 2 ok of 6 targets" in \
        rendered.text_of["counts"]


def test_each_card_says_what_happened(rendered: Dom) -> None:
    """Health and since when, the last result with its latency, restarts in the window, the
    pause (until when, why: its markup shown as text), why it was given up."""
    web, sidekiq = rendered.card_text["web"], rendered.card_text["sidekiq"]
    streaming = rendered.card_text["streaming"]
    assert "down since 03:30 UTC (42 min ago)" in web
    assert "failed (timeout) in 5000 ms, 2 s ago: timeout: no answer within 5s" in web
    assert ("2 of 3 in the last 1 h, 9 in all; last 04:10:00 UTC (2 min ago); next allowed "
            "04:14:00 UTC (in 2 min)") in web
    assert "wait: cooldown: next restart allowed in 2m" in web
    assert "given up3 restarts within 1h did not bring it back" in sidekiq
    assert f"until 04:37 UTC (in 25 min): {snapshots.PAUSE_REASON}" in streaming
    assert "passed in 3.2 ms" in rendered.card_text["caddy"]
    assert "monitored only: no unit to restart" in rendered.card_text["redis"]
    assert "script" not in rendered.tags  # the reason's <script> stayed text


def test_timelines_mark_failures_holds_restarts_pauses_recoveries(rendered: Dom) -> None:
    """Each target's 24-hour SVG timeline has a mark per event of the window and bands for
    its failing, down and paused periods; an event older than 24 hours is not drawn."""
    assert rendered.events == {
        "web": ["failing", "recovered", "failing", "down", "restart", "restart-failed"],
        "sidekiq": ["failing", "down", "restart", "restart", "restart", "given-up"],
        "postgres": [],
        "streaming": ["paused"],
        "caddy": ["failing", "down", "held", "restart", "recovered"],
        "redis": [],
    }
    assert rendered.bands["web"] == ["failing", "failing", "down"]
    assert rendered.bands["caddy"] == ["failing", "down"]
    assert rendered.bands["streaming"] == ["paused"]
    assert {"svg", "rect", "path", "circle", "title"} <= rendered.tags
    held = [t for t in rendered.titles["caddy"] if " held: " in t]
    assert held == ["22:48 UTC held: memory pressure some 41.0% >= 10%: restart held back"]
    assert all(re.match(r"\d\d:\d\d(:\d\d)? UTC [a-z-]+: ", t) for t in rendered.titles["web"]
               if not t.startswith(("failing from", "down from")))


def test_memory_pressure_and_the_last_run(rendered: Dom) -> None:
    """The header shows memory pressure now against the threshold, and when the last run was."""
    assert rendered.text_of["pressure"] == (
        "memory pressure now: some 23.4%, full 4.1% of the last 10 s (threshold 10%)")
    assert rendered.text_of["last-run"] == "last run 04:11:59 UTC (0 s ago), took 0.81 s"


def test_javascript_off_changes_nothing(browser: str) -> None:
    """The DOM Chromium builds with JavaScript disabled is the one it builds with it enabled:
    the page needs no script (and has none)."""
    snapshot = snapshots.snapshot()
    with_js, without_js = run(both(dump_dom(snapshot), dump_dom(snapshot, javascript=False)))
    assert with_js == without_js
    assert "<script" not in page.render(snapshot)


def test_the_javascript_switch_works(browser: str, tmp_path: Path) -> None:
    """The comparison above can fail: with the same Chromium and flags, a page whose script
    changes the DOM gives two different DOMs."""
    scripted = tmp_path / "scripted.html"
    scripted.write_text("<!DOCTYPE html><html><body><p>static</p>"
                        "<script>document.body.dataset.js = 'ran'</script></body></html>")
    url = scripted.as_uri()
    with_js, without_js = run(both(page_dom(url), page_dom(url, javascript=False)))
    assert '<body data-js="ran"><p>static</p>' in with_js
    assert "<body><p>static</p>" in without_js


def test_before_the_first_run(browser: str) -> None:
    """A watcher that has not run yet shows the stored state, says its first run is due, and
    that memory pressure is not read yet."""
    dom = Dom(run(dump_dom(snapshots.snapshot(with_report=False))))
    assert list(dom.targets)[:2] == ["web", "sidekiq"]
    assert dom.text_of["overall"].startswith("UNKNOWN")
    assert "before this watcher started; its first run is due" in dom.text_of["last-run"]
    assert dom.text_of["pressure"] == "memory pressure: read by the first run"
    assert dom.events["caddy"] == ["failing", "down", "held", "restart", "recovered"]


def test_a_stale_page_says_so(browser: str) -> None:
    """When no run ended for over three intervals plus a run's deadline, the header says so."""
    late = replace(snapshots.snapshot(), now=snapshots.NOW + 3 * 3600)
    dom = Dom(run(dump_dom(late)))
    assert dom.text_of["last-run"].startswith("STALE: no run for 3 h; last run ")


def test_screenshot_comes_from_the_real_page(browser: str, tmp_path: Path) -> None:
    """docs/operating.md's screenshot is Chromium's drawing of the served page: a PNG of the
    window's size, and no Chromium process is left behind."""
    path = tmp_path / "page.png"
    run(screenshot(snapshots.snapshot(), path, window=(800, 600)))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 600)
    assert pids_using(PROFILE_PREFIX) == []


def test_no_secret_in_the_rendered_page(rendered: Dom) -> None:
    """What the browser shows holds no URL password, header or env value; the endpoint is
    there with its password as ***."""
    text = " ".join([*rendered.card_text.values(), *rendered.text_of.values()])
    for secret in snapshots.SECRETS:
        assert secret not in text
    assert "http://prober:***@127.0.0.1:3000/health" in rendered.card_text["web"]


def test_the_page_loads_nothing_but_itself(browser: str) -> None:
    """Chromium, loading the served page, requests that page and nothing else: no style
    sheet, font, image or script from anywhere, this server included."""
    snapshot = snapshots.snapshot()

    async def load() -> tuple[str, tuple[str, ...]]:
        async with serving(lambda: snapshot) as server:
            url = f"http://127.0.0.1:{server.port}/"
            return url, (await load_page(url)).requests

    url, requests = run(load())
    assert requests == (url,)


# --- the rendering itself, without a browser ----------------------------------------------


def _flapping(events: int, every: float) -> Snapshot:
    """The sample host, its web target having flapped `events` times, `every` seconds apart."""
    base = snapshots.snapshot()
    kinds = (Event.FAILING, Event.DOWN, Event.RESTART, Event.RECOVERED)
    first = snapshots.NOW - events * every  # the last one `every` before now
    history = tuple(Transition(first + k * every, kinds[k % 4], f"flap {k}")
                    for k in range(events))
    web = replace(base.state.get("web"), history=history)
    return replace(base, state=base.state.with_target("web", web))


def _card(html: str, name: str) -> str:
    return html.split(f'data-target="{name}"', 1)[1].split("</section>", 1)[0]


def test_a_flapping_target_stays_readable() -> None:
    """Events of one kind close together are one mark (its title says how many times, from
    when to when), and close bands of one kind one band: the timeline and the page stay
    bounded however often a target flaps."""
    dense = _card(page.render(_flapping(400, 6.0), hostname="h"), "web")  # within 40 minutes
    # 40 minutes are a few dozen SVG units: a mark per kind and unit group, 400 events drawn
    # as at most 4 kinds x 8 groups, and the bands as few
    assert dense.count('class="mark"') <= 4 * 8
    assert dense.count('class="band') <= 2 * 8
    assert re.search(r'data-event="restart" data-count="\d+"><title>03:32 UTC to \d\d:\d\d(:'
                     r"\d\d)? UTC, \d+ times restart: flap \d+</title>", dense)
    sparse = _card(page.render(_flapping(8, 900.0), hostname="h"), "web")  # 15 minutes apart
    assert sparse.count('class="mark"') == 8
    assert 'data-count="1"><title>02:12 UTC failing: flap 0</title>' in sparse


@pytest.mark.parametrize("with_report", [True, False], ids=["after-a-run", "before-any-run"])
def test_a_prober_fault_shows_as_itself(with_report: bool) -> None:
    """A target prober cannot judge through its own fault is a warning with its own badge and
    reason, not down, not ok; the page's counts name it too."""
    html = page.render(snapshots.prober_fault_snapshot(with_report=with_report), hostname="h")
    card = _card(html, "cache")
    assert 'data-status="warning"' in card and 'data-health="healthy"' in card
    assert ">prober fault<" in card
    assert "failed (prober-fault)" in card and snapshots.FAULT_REASON in card
    assert "1 prober fault" in html


def test_everything_printed_is_escaped() -> None:
    """Names, reasons and endpoints go through HTML escaping: markup in a reason is text."""
    html = page.render(snapshots.snapshot(), hostname="<b>host</b>")
    assert "<b>host</b>" not in html and "&lt;b&gt;host&lt;/b&gt;" in html
    assert snapshots.MARKUP not in html
    assert "<script" not in html


class _References(HTMLParser):
    """What a document refers to: links followed only when clicked (<a href>), and what a
    browser would fetch along with it (any other src=, href=, srcset=, ...)."""

    _FETCHED = ("src", "srcset", "href", "xlink:href", "poster", "data", "action",
                "formaction", "background", "manifest", "ping")

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.fetched: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "href" and tag == "a":
                self.links.append(value or "")
            elif name in self._FETCHED and not (value or "").startswith("#"):
                self.fetched.append(f"<{tag} {name}={value}>")


def test_the_page_refers_to_no_external_asset() -> None:
    """The page fetches nothing along with itself (no src=, no <link href>, no CSS url() or
    @import), and its links are relative: they stay on whichever address serves it."""
    for snapshot in (snapshots.snapshot(), snapshots.snapshot(with_report=False)):
        html = page.render(snapshot, hostname="h")
        references = _References(html)
        assert references.fetched == []
        assert not re.search(r"url\s*\(|@import", html, re.IGNORECASE)
        assert sorted(references.links) == ["?range=1h", "?range=24h", "?range=7d", "metrics",
                                            "status.json"]


def _four_am() -> Snapshot:
    """The sample host with caddy down too, blamed on web it depends on, a memory hog named
    when caddy went down, and the last reload rejected."""
    base = snapshots.snapshot(with_report=False)
    caddy = replace(
        base.state.targets["caddy"], health=Health.DOWN, since=snapshots.NOW - 0.7 * HOUR,
        down_since=snapshots.NOW - 0.7 * HOUR, consecutive_failures=84, last_ok=False,
        last_reason="status 502, expected 2xx",
        history=(Transition(snapshots.NOW - 0.7 * HOUR, Event.DOWN, "status 502, expected 2xx",
                            (MemoryUser("mastodon-sidekiq.service", 3 << 30),)),))
    state = replace(base.state, targets={**base.state.targets, "caddy": caddy})
    reload = ConfigReload(successful=False, last_success_at=snapshots.NOW - 2 * HOUR,
                          error='/etc/prober/prober.toml: target "x": url: missing')
    return replace(base, state=state, reload=reload)


@pytest.fixture(scope="module")
def four_am(browser: str) -> Dom:
    return Dom(run(dump_dom(_four_am())))


def test_the_root_cause_sits_above_what_it_broke(four_am: Dom) -> None:
    """caddy, down because web (its dependency) is down, comes right under web, though the
    config lists it first."""
    assert list(four_am.targets)[:3] == ["web", "caddy", "sidekiq"]


def test_a_failing_target_has_its_next_step(browser: str) -> None:
    """A down target's card says where to look: its unit's journal since the outage began."""
    dom = Dom(run(dump_dom(snapshots.snapshot(with_report=False))))
    assert ('next stepjournalctl -u mastodon-web.service --since "2025-11-29 03:30:00 UTC"'
            in dom.card_text["web"])
    assert "next step" not in dom.card_text["redis"] + dom.card_text["streaming"]


def test_a_rejected_reload_is_a_banner_and_stops_the_next_step(four_am: Dom) -> None:
    """After a rejected reload the header says so, with the error and the config in force, and
    a failing target's next step is that restarts are not possible."""
    assert four_am.text_of["reload"] == (
        'the config reload was rejected: /etc/prober/prober.toml: target "x": url: missing; '
        "running the config loaded 02:12 UTC (2 h ago)")
    assert "next steprestarts are not possible: the config does not load" in \
        four_am.card_text["caddy"]


def test_the_memory_users_of_an_outage_are_on_its_card(four_am: Dom) -> None:
    """The largest memory users named when caddy went down are on caddy's card; a run's are in
    the header."""
    assert "largest users then: mastodon-sidekiq.service 3.0 GiB" in four_am.card_text["caddy"]
    after_run = snapshots.snapshot()
    assert after_run.report is not None
    report = replace(after_run.report,
                     top_memory=(MemoryUser("mastodon-sidekiq.service", 3 << 30),))
    html = page.render(replace(after_run, report=report), hostname="h")
    assert '<p id="memory-users" class="flag-warning">largest memory users: ' \
        "mastodon-sidekiq.service 3.0 GiB</p>" in html


@pytest.mark.parametrize("width", [390, 1280])
def test_one_row_per_target_without_overflow_on_a_phone_and_a_desktop(browser: str,
                                                                       width: int) -> None:
    """At a phone's width and a desktop's, nothing is wider than the screen, each target is
    one row, full width, rows stacked worst first, and a desktop shows a screenful of them."""
    layout = run(laid_out(_four_am(), width))
    assert layout["scrolled"] <= layout["viewport"] == width
    rows = layout["rows"]
    assert [r["name"] for r in rows][:3] == ["web", "caddy", "sidekiq"]
    assert all(r["right"] <= width for r in rows)
    assert all(a["bottom"] <= b["top"] for a, b in itertools.pairwise(rows))
    if width >= 1000:
        assert all(r["bottom"] - r["top"] < 200 for r in rows)
