"""The outage record: its lines read as hostile input (a table of cases), its entries from a
run's changes, outages and compaction as pure functions; then the file met as a user meets it,
through the real `prober check`, `status --since` and `report` against loopback servers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from prober.core.config import parse_config
from prober.core.errors import StateError
from prober.core.psi import MemoryUser
from prober.core.record import (
    LINE_MAX,
    RANGES,
    BadLine,
    Entry,
    Kind,
    dump_line,
    from_changes,
    kept,
    outages,
    parse_line,
    pressure_peaks,
    pressure_step,
    systemd_reached,
    systemd_step,
)
from prober.core.text import utc
from prober.core.tracker import Change, Event, State, TargetState, Transition
from prober.outputs.mail import body
from prober.outputs.notify import payloads
from prober.outputs.page import render, window_of
from prober.outputs.timeline import postmortem
from prober.outputs.web import route
from prober.shell.record import RecordFile, record_path, seed
from prober.shell.state import StateStore
from prober.shell.watcher import Watcher
from tests.support import snapshots
from tests.support.servers import Server, answer, flaky, health, refused_port, serve
from tests.test_cli import Prober
from tests.test_cli import _config as _cli_config
from tests.test_watcher import HangingActuator, in_one_loop, loader
from tests.test_watcher import write_config as _watcher_config

# The runs below judge targets, not the host: with the host's memory PSI off, memory pressure
# from whatever else this machine runs records no episode in their records.
_CALM = "pressure_threshold = 0\n"


def _config(*targets: str, defaults: str = "") -> str:
    return _cli_config(*targets, defaults=_CALM + defaults)


def write_config(path: Path, *targets: str, threshold: int = 1) -> None:
    _watcher_config(path, *targets, threshold=threshold)
    path.write_text(path.read_text().replace("[defaults]\n", "[defaults]\n" + _CALM, 1))


NOW = 1_800_000_000.0
DAY = 86400.0
V3_FILE = Path(__file__).parent / "testdata" / "state-v3.json"


def _line(**fields: object) -> bytes:
    return json.dumps({"v": 1, "at": NOW, "target": "web", "event": "down", "reason": "x",
                       **fields}).encode()


@pytest.mark.parametrize(("line", "problem"), [
    (b"", "not JSON"),
    (b'{"v": 1, "at": 1', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not an object"),
    (b"[" * 100_000, "a line longer"),
    (_line(v=2), "not version 1"),
    (_line(v=True), "not version 1"),
    (_line(event="exploded"), "no known kind"),
    (_line(event=["down"]), "no known kind"),
    (_line(at="yesterday"), "at: not a time"),
    (_line(at=-1), "at: not a time"),
    (_line(at=1e300), "at: not a time"),
    (_line(target=7), "target: not a string"),
    (_line(psi=101), "psi: not a number"),
    (_line(duration=float("nan")), "duration: not a number"),
    (_line(top_memory=[{"name": "x"}] * 11), "top_memory: not a short list"),
    (_line(top_memory=[{"name": "x", "bytes": -1}]), "top_memory: not a name"),
    (_line(top_memory=[{"name": 1, "bytes": 1}]), "top_memory: not a string"),
], ids=["empty", "torn", "not-utf8", "list", "deep", "newer", "bool-version", "unknown-event",
        "event-list", "at-text", "at-negative", "at-huge", "target-number", "psi-over-100",
        "duration-nan", "many-users", "negative-bytes", "user-name-number"])
def test_a_damaged_line_is_refused_with_what_is_wrong(line: bytes, problem: str) -> None:
    """Each line that is not an entry prober writes is refused, saying what is wrong."""
    with pytest.raises(BadLine, match=problem):
        parse_line(line)


def test_every_tracker_event_is_a_kind_of_the_record() -> None:
    """An event the tracker records (a new one too) has its kind, of the same value, in the
    record: add it to prober.core.record.Kind."""
    assert {e.value for e in Event} <= {k.value for k in Kind}


def test_an_entry_survives_its_line() -> None:
    """An entry written as a line reads back equal, its text kept on one line."""
    entry = Entry(NOW, "caddy", Kind.DOWN, "refused", "caddy.service", psi=41.5,
                  top_memory=(MemoryUser("grower.service", 1 << 28),))
    assert parse_line(dump_line(entry).rstrip(b"\n")) == entry
    forged = parse_line(_line(reason="a\nforged line"))
    assert "\n" not in forged.reason and len(dump_line(forged)) < LINE_MAX


def _history(*events: tuple[float, Event]) -> TargetState:
    return TargetState(history=tuple(Transition(at, event, "") for at, event in events))


def test_a_recovery_carries_its_outages_length_and_a_blame_comes_once() -> None:
    """recovered says how long since the outage's first failing entry (not its down); a
    target blamed on a dependency gets one `blamed` entry per outage, not one per event."""
    state = _history((NOW - 500, Event.RECOVERED), (NOW - 90, Event.FAILING),
                     (NOW - 30, Event.DOWN), (NOW, Event.RECOVERED))
    changes = [Change("caddy", t) for t in state.history[1:]]
    entries = from_changes(changes, {"caddy": state}, {"caddy": "caddy.service"},
                           blamed_on={"caddy": "web"})
    assert [e.kind for e in entries] == [Kind.FAILING, Kind.BLAMED, Kind.DOWN, Kind.RECOVERED]
    assert entries[1].on == "web" and entries[-1].duration == 90
    assert {e.unit for e in entries} == {"caddy.service"}


def test_outages_pair_each_start_with_its_recovery() -> None:
    """Two targets' outages, one over and one not, each with its length and culprit."""
    users = (MemoryUser("grower.service", 1 << 28),)
    entries = [Entry(NOW, "caddy", Kind.FAILING), Entry(NOW + 5, "web", Kind.DOWN),
               Entry(NOW + 10, "caddy", Kind.DOWN, top_memory=users),
               Entry(NOW + 60, "caddy", Kind.RECOVERED, duration=60.0)]
    found = outages(entries)
    assert [(o.target, o.lasted(NOW + 100), o.culprit) for o in found] == \
        [("caddy", 60.0, "grower.service"), ("web", 95.0, "")]


def test_compaction_keeps_the_newest_within_age_and_size() -> None:
    """Entries older than the age bound go; of the rest, the newest that fit the size."""
    entries = [Entry(NOW - DAY * (40 - i), "web", Kind.DOWN, "x" * 100) for i in range(40)]
    young = kept(entries, NOW, 30 * DAY, 1 << 20)
    assert len(young) == 30 and young[-1] == entries[-1]
    small = kept(entries, NOW, 30 * DAY, len(dump_line(entries[0])) * 5)
    assert small == entries[-5:]


def test_the_postmortem_escapes_what_targets_said() -> None:
    """A reason with Markdown in it cannot forge a heading, a link or a table cell."""
    text = postmortem([Entry(NOW, "web", Kind.DOWN, "# hi [x](http://e) | `y`")], NOW - 60,
                      NOW + 60)
    assert "\\[x\\]" in text and "\\|" in text and "\\`y\\`" in text


# --- what concerns no one target -------------------------------------------------------

GROWER = (MemoryUser("grower.service", 1 << 28),)


def _pressure(readings: list[float], threshold: float = 10.0) -> list[tuple[str, float | None]]:
    """The entries a run of readings records, one run a second, the culprit read at each peak."""
    episode = None
    out: list[tuple[str, float | None]] = []
    for second, psi in enumerate(readings):
        users = GROWER if pressure_peaks(episode, psi, threshold) else ()
        episode, entries = pressure_step(episode, psi, threshold, NOW + second, users)
        out += [(e.kind.value, e.psi) for e in entries]
        for entry in entries:
            assert entry.kind is not Kind.PRESSURE_END or entry.top_memory == GROWER
    return out


@pytest.mark.parametrize(("readings", "expected"), [
    ([0, 1, 9.9, 0], []),
    ([12, 30, 20, 4], [("pressure-start", 12), ("pressure-end", 30)]),
    ([12, 6, 11, 9, 4.9], [("pressure-start", 12), ("pressure-end", 12)]),
    ([12, 4, 12, 4], [("pressure-start", 12), ("pressure-end", 12)] * 2),
    ([50, 50, 50], [("pressure-start", 50)]),
], ids=["never", "one-episode-with-its-peak", "around-the-threshold-is-one",
        "two-episodes", "not-over"])
def test_pressure_episodes_start_peak_and_end(readings: list[float],
                                              expected: list[tuple[str, float]]) -> None:
    """An episode starts at the threshold and ends below half of it, its end carrying the
    peak and who held the memory then; readings around the threshold are one episode."""
    assert _pressure(readings) == expected


def test_pressure_threshold_0_records_no_episode() -> None:
    """`pressure_threshold = 0` turns the pressure rules off: no episode either."""
    assert _pressure([90, 0], threshold=0.0) == []


@pytest.mark.parametrize(("runs", "expected"), [
    ([(None, False), (None, True)], []),
    ([("no bus", False), ("no bus", False), (None, True)],
     [("systemd-unreachable", None), ("systemd-reachable", 2.0)]),
    ([("no bus", False), (None, False), (None, True)],
     [("systemd-unreachable", None), ("systemd-reachable", 2.0)]),
], ids=["always-answered", "once-each-way", "not-asked-is-not-reached"])
def test_systemd_unreachable_and_reachable_again_once_each(
        runs: list[tuple[str | None, bool]], expected: list[tuple[str, float | None]]) -> None:
    """systemd not answering is recorded once, and its answering again once, with how long
    it did not; a run that asked nothing says nothing of it."""
    since = None
    out: list[tuple[str, float | None]] = []
    for second, (unreachable, reached) in enumerate(runs):
        since, entries = systemd_step(since, unreachable, reached, NOW + second)
        out += [(e.kind.value, e.duration) for e in entries]
    assert out == expected


@pytest.mark.parametrize(("runs", "reachable_at"), [
    ([(True, False, False, False, True), (False, True, False, False, True)], [1.0]),
    ([(True, False, False, False, True), (False, False, False, False, False)], [1.0]),
    ([(True, False, False, False, True), (False, False, False, False, True),
      (False, False, False, False, False)], [2.0]),
    ([(True, False, False, False, True), (False, False, True, False, True)], [1.0]),
    ([(True, False, False, False, True), (False, False, True, True, True),
      (False, True, False, False, True)], [2.0]),
    ([(True, False, False, False, True), (True, True, True, False, False)], []),
], ids=["asked-and-answered", "recovered", "blamed-then-recovered", "unit-health-read",
        "unit-health-fault-is-not-reached", "unreachable-again"])
def test_systemd_answers_again_when_asked_read_or_no_longer_needed(
        runs: list[tuple[bool, bool, bool, bool, bool]], reachable_at: list[float]) -> None:
    """An unreachable episode ends at the first run in which systemd answered about a systemd
    target's unit, or a unit_health probe read its unit and none failed to, or no target
    fails any more (nothing needs systemd); a run still failing without asking it ends
    nothing. Each run: (unreachable, asked, read, faulted, failing)."""
    since = None
    ended: list[float] = []
    for second, (unreachable, asked, read, faulted, failing) in enumerate(runs):
        reached = systemd_reached(asked=asked, read=read, faulted=faulted, failing=failing)
        since, entries = systemd_step(since, "no bus" if unreachable else None, reached,
                                      NOW + second)
        ended += [e.at - NOW for e in entries if e.kind is Kind.SYSTEMD_REACHABLE]
    assert ended == reachable_at


# --- the journal line -------------------------------------------------------------------


def test_a_notification_carries_the_journal_since_the_outage_began() -> None:
    """A down target's notification, and the mail of it, carry the command that shows its
    unit's journal from its first failure on; a recovery carries none."""
    config = parse_config({"target": [{"name": "web", "url": "http://127.0.0.1:1/",
                                       "unit": "web.service"}]}, path="t")
    history = (Transition(NOW - 90, Event.FAILING, "refused"),
               Transition(NOW, Event.DOWN, "refused"), Transition(NOW + 60, Event.RECOVERED, ""))
    sent = payloads([Change("web", t) for t in history[1:]], config,
                    states={"web": TargetState(history=history)})
    began = utc(NOW - 90)
    assert [p["journal"] for p in sent] == [f'journalctl -u web.service --since "{began}"', None]
    assert f'  journalctl -u web.service --since "{began}"' in body(sent, "h").splitlines()


def test_a_watched_units_outage_is_recorded_with_its_unit_and_its_journal() -> None:
    """A unit_health target's entries name the unit it watches, so that the report's Logs
    give that unit's journal from just before the outage, as for a unit prober restarts."""
    config = parse_config({"target": [{"name": "netdata", "unit_health": "netdata"}]},
                          path="t")
    history = (Transition(NOW, Event.DOWN, "netdata.service was OOM-killed 3 times in 1m"),)
    entries = seed(State(targets={"netdata": TargetState(history=history)}), config, NOW + 1)
    assert [(e.kind, e.unit) for e in entries] == [(Kind.DOWN, "netdata.service")]
    logs = postmortem(entries, NOW - 60, NOW + 60).split("## Logs", 1)[1]
    assert f'journalctl -u netdata.service --since "{utc(NOW - 60)}"' in logs


def test_status_shows_a_down_targets_journal_line(prober: Prober) -> None:
    """`status` and its JSON give a down target's journal command, from its outage's start."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"\nunit = "web.service"',
                         defaults='failure_threshold = 1\nconfirm_interval = "0s"'))
    assert prober("check").code == 2
    text = prober("status")
    assert text.code == 2 and 'its journal: journalctl -u web.service --since "' in text.out, text
    (target,) = prober("status", "--json").json()["targets"]
    assert target["journal"].startswith('journalctl -u web.service --since "')


# --- the page's views -------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ("", "24h"), ("range=1h", "1h"), ("range=7d", "7d"), ("range=24h", "24h"),
    ("range=1y", "24h"), ("range=1H", "24h"), ("range=%00", "24h"), ("range=7d&range=1h", "7d"),
    ("x=1&range=1h", "1h"), ("range=1h" + "&x" * 5000, "24h"), ("%ff%fe=%", "24h"),
    ("range=" + "9" * 100_000, "24h"), ("a=1&b=2&c=3&d=4&range=1h", "24h"),
], ids=["none", "1h", "7d", "24h", "unknown", "case", "nul", "repeated", "among-others",
        "many-fields", "not-utf8", "huge", "range-past-four-fields"])
def test_a_range_query_is_one_of_three_or_the_default(query: str, expected: str) -> None:
    """`?range=` picks one of the page's views; anything else, however hostile, the 24 h one."""
    assert window_of(query) == RANGES[expected]


def test_the_pages_views_draw_from_the_record() -> None:
    """The 7 d view draws an outage three days ago that only the record holds (its state's
    history was trimmed), the 1 h view leaves it out; the chosen view's link is marked."""
    base = snapshots.snapshot()
    now = base.now
    old = [Entry(now - 3 * DAY, "web", Kind.DOWN, "an outage three days ago"),
           Entry(now - 3 * DAY + 600, "web", Kind.RECOVERED, "back", duration=600.0)]
    snapshot = replace(base, record=lambda: old)
    week = render(snapshot, hostname="h", window=RANGES["7d"])
    hour = render(snapshot, hostname="h", window=RANGES["1h"])
    assert "an outage three days ago" in week and "an outage three days ago" not in hour
    assert '<a href="?range=7d" aria-current="page">' in week
    assert 'data-window="1h"' in hour and 'data-window="7d"' in week


def test_the_watchers_page_reads_the_record_again_only_when_it_changed(tmp_path: Path,
                                                                      web: Server) -> None:
    """The watcher's snapshot draws from the record beside its state: an outage three days ago
    is on its 7 d view; an append shows at the next render, an unchanged file is not re-read."""
    config = tmp_path / "prober.toml"
    write_config(config, f'name = "web"\nurl = "{web.url("/health")}"')
    store = StateStore(str(tmp_path / "state.json"))
    watcher = Watcher(lambda: loader(config), store, None, interval=0.01)
    now = time.time()
    record = RecordFile(record_path(store.path), 30 * DAY, 1 << 20)
    record.append([Entry(now - 3 * DAY, "web", Kind.DOWN, "three days ago")], now)
    first = watcher.snapshot()
    assert "three days ago" in render(first, hostname="h", window=RANGES["7d"])
    assert first.record is not None and first.record() is first.record()  # cached
    record.append([Entry(now - 60, "web", Kind.DOWN, "a minute ago")], now)
    assert "a minute ago" in render(watcher.snapshot(), hostname="h", window=RANGES["1h"])


@pytest.mark.parametrize("place", ["none", "a directory"])
def test_the_watchers_page_draws_from_the_state_while_there_is_no_record(
        tmp_path: Path, web: Server, place: str) -> None:
    """No record to read (none written yet, as after an upgrade or under `watch --dry-run`, or
    one that cannot be read): the page's timelines are drawn from the state's histories."""
    config = tmp_path / "prober.toml"
    write_config(config, f'name = "web"\nurl = "{web.url("/health")}"')
    store = StateStore(str(tmp_path / "state.json"))
    if place == "a directory":
        record_path(store.path).mkdir()
    watcher = Watcher(lambda: loader(config), store, None, interval=0.01)
    now = time.time()
    down = Transition(now - 600, Event.DOWN, "an outage ten minutes ago")
    state = State(targets={"web": TargetState(history=(down,))})
    page = render(replace(watcher.snapshot(), state=state), hostname="h", window=RANGES["1h"])
    assert "an outage ten minutes ago" in page


def test_a_hostile_range_query_is_served_the_default_view() -> None:
    """The real route: a query of junk answers the page (24 h), never an error."""
    found = route("GET", "/?range=%ff%00" + "&x" * 2000)
    assert callable(found)
    answer = found(snapshots.snapshot(), "h")
    assert answer.status == 200 and b'data-window="24h"' in answer.body


# --- the file ------------------------------------------------------------------------------


def _file(tmp_path: Path, max_bytes: int = 1 << 20) -> RecordFile:
    return RecordFile(tmp_path / "state.json.record", 30 * DAY, max_bytes)


def test_damaged_lines_are_skipped_with_a_warning(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Good lines around garbage are kept; each bad line is named in a warning, counted."""
    record = _file(tmp_path)
    good = Entry(NOW, "web", Kind.DOWN, "refused")
    record.path.write_bytes(b"garbage\n" + dump_line(good) + b'{"v": 9}\n\x00\x01\n')
    with caplog.at_level(logging.WARNING, "prober"):
        found = record.read()
    assert found.entries == (good,) and found.skipped == 3
    assert "line 1 skipped: not JSON" in caplog.text and "line 3 skipped" in caplog.text


def test_an_append_after_a_torn_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """A crash that cut the last line short costs that line only, not the next run's."""
    record = _file(tmp_path)
    record.append([Entry(NOW, "web", Kind.FAILING)], NOW)
    with record.path.open("ab") as file:
        file.write(b'{"v": 1, "at": 18')  # a writer killed mid-line
    record.append([Entry(NOW + 1, "web", Kind.DOWN)], NOW + 1)
    found = record.read()
    assert [e.kind for e in found.entries] == [Kind.FAILING, Kind.DOWN] and found.skipped == 1


def test_a_writer_killed_mid_append_costs_at_most_its_last_line(tmp_path: Path) -> None:
    """SIGKILL while a run appends, again and again: every line but at most the last one of
    each kill reads back, and the appends after it are whole."""
    path = tmp_path / "state.json.record"
    script = (
        "import sys; from prober.core.record import Entry, Kind\n"
        "from prober.shell.record import RecordFile\n"
        "record = RecordFile(__import__('pathlib').Path(sys.argv[1]), 1e9, 1 << 30)\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1; record.append([Entry(1e9 + n, 'web', Kind.DOWN, 'x' * 3000)] * 3, 1e9)\n"
        "    if n == 1: print('go', flush=True)\n"
    )
    kills = 5
    for _ in range(kills):
        writer = subprocess.Popen([sys.executable, "-c", script, str(path)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "go"
        writer.kill()
        writer.wait()
        writer.stdout.close()
    record = RecordFile(path, 1e9, 1 << 30)
    before = record.read()
    assert before.skipped <= kills and len(before.entries) >= 3 * kills
    record.append([Entry(NOW, "web", Kind.RECOVERED)], NOW)
    after = record.read()
    assert after.entries[-1] == Entry(NOW, "web", Kind.RECOVERED)
    assert after.skipped == before.skipped


def test_a_huge_record_is_read_only_up_to_its_cap(tmp_path: Path) -> None:
    """A record far over its bound (another tool's file, a bound lowered) is read from its end,
    never whole: the newest entries, the first line cut by the cap skipped."""
    record = _file(tmp_path, max_bytes=64 << 10)
    line = dump_line(Entry(NOW, "web", Kind.DOWN, "x" * 200))
    with record.path.open("wb") as file:
        file.truncate(256 << 20)  # sparse: a quarter GiB of NULs, then real lines
        file.seek(0, os.SEEK_END)
        file.write(b"\n" + line * 10)
    found = record.read()
    assert len(found.entries) == 10 and found.clipped


def test_a_record_over_its_bounds_is_compacted_on_the_next_append(tmp_path: Path) -> None:
    """An append that finds the file over its size is the one that compacts it, to three
    quarters of its bound, atomically; the old entries go first."""
    record = _file(tmp_path, max_bytes=8 << 10)
    for i in range(100):
        record.append([Entry(NOW + i, "web", Kind.DOWN, "x" * 100)], NOW + i)
    assert record.path.stat().st_size <= 8 << 10
    assert record.read().entries[-1].at == NOW + 99


def test_a_fifo_in_the_records_place_is_never_read(tmp_path: Path) -> None:
    """A FIFO where the record should be is refused, never opened to block a reader."""
    record = _file(tmp_path)
    os.mkfifo(record.path)
    with pytest.raises(Exception, match="not a regular file"):
        record.read()


def test_a_symlink_in_the_records_place_is_never_followed(prober: Prober,
                                                          tmp_path: Path) -> None:
    """A symlink planted where the record goes (by whoever owns the state's directory) is
    refused: a run that records events leaves the file it points at as it was, and says so in
    one line; the run goes on and its state is kept."""
    outside = tmp_path / "ld.so.preload"
    outside.write_bytes(b"untouched\n")
    prober.state.parent.mkdir()
    record_path(prober.state).symlink_to(outside)
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"',
                         defaults='failure_threshold = 1\nconfirm_interval = "0s"'))
    run = prober("check")
    assert run.code == 2, run
    assert outside.read_bytes() == b"untouched\n"
    errors = [line for line in run.err.splitlines() if "record" in line]
    assert len(errors) == 1 and "not a regular file" in errors[0], run.err
    assert prober.state.exists()
    with pytest.raises(StateError, match="not a regular file"):
        RecordFile(record_path(prober.state), 30 * DAY, 1 << 20).read()


# --- the commands --------------------------------------------------------------------------


def test_a_healthy_run_never_touches_the_record(prober: Prober, web: Server) -> None:
    """Healthy runs create no record (after an outage, they leave it as it was: see below)."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    for _ in range(3):
        assert prober("check").code == 0
    assert not record_path(prober.state).exists()


def test_status_since_and_report_tell_an_outage_in_order(prober: Prober) -> None:
    """failing, down, recovered with the outage's length, in order, in `status --since`, its
    JSON and `report`; healthy runs after it add nothing to the file."""
    with serve(flaky(2)) as server:
        prober.write(_config(f'name = "web"\nurl = "{server.url("/health")}"',
                             defaults='failure_threshold = 2\nconfirm_interval = "0s"'))
        assert [prober("check").code for _ in range(3)] == [1, 2, 0]
        written = record_path(prober.state).stat()
        assert prober("check").code == 0
        assert record_path(prober.state).stat().st_mtime_ns == written.st_mtime_ns
    status = prober("status", "--since", "1h", "--json")
    assert status.code == 0, status
    data = status.json()
    assert [e["event"] for e in data["events"]] == ["failing", "down", "recovered"]
    (outage,) = data["outages"]
    assert outage["ended"] is not None and outage["duration"] == data["events"][-1]["duration"]
    text = prober("status", "web", "--since", "7d")
    assert text.code == 0 and "recovered" in text.out and "web: " in text.out, text
    report = prober("report", "--since", "1h")
    assert report.code == 0 and report.out.startswith("# Outage report"), report
    assert "## Timeline" in report.out and "**web** recovered" in report.out


def test_systemd_unreachable_is_recorded_once_while_a_target_is_down(prober: Prober) -> None:
    """A target down whose unit systemd cannot be asked about (no bus here): one
    `systemd-unreachable` entry with the reason, however many runs see it."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"\nunit = "web.service"',
                         defaults='failure_threshold = 1\nconfirm_interval = "0s"'))
    assert [prober("check").code for _ in range(3)] == [2, 2, 2]
    events = prober("status", "--since", "1h", "--json").json()["events"]
    host = [e for e in events if e["event"].startswith("systemd-")]  # not the host's pressure
    assert [e["event"] for e in host] == ["systemd-unreachable"], events
    assert "web.service" in host[0]["reason"]


def test_systemd_answering_again_is_recorded_when_the_target_recovers(prober: Prober) -> None:
    """systemd unreachable while a target is down (no bus here); the target recovers with
    nothing asking systemd: its answering again is recorded then, with how long it did not,
    and the state forgets the episode."""
    with serve(flaky(2)) as server:
        prober.write(_config(f'name = "web"\nurl = "{server.url("/health")}"\n'
                             'unit = "web.service"',
                             defaults='failure_threshold = 1\nconfirm_interval = "0s"'))
        assert [prober("check").code for _ in range(3)] == [2, 2, 0]
    events = prober("status", "--since", "1h", "--json").json()["events"]
    systemd = [e["event"] for e in events if e["event"].startswith("systemd-")]
    assert systemd == ["systemd-unreachable", "systemd-reachable"], events
    assert json.loads(prober.state.read_text())["systemd_unreachable_since"] is None


def test_the_watchers_reloads_are_recorded_with_its_next_run(tmp_path: Path,
                                                            web: Server) -> None:
    """A reload that loads and one that is rejected are each one entry, written with the next
    cycle's, the rejected one with why; healthy cycles between them write nothing."""
    config = tmp_path / "prober.toml"
    target = f'name = "web"\nurl = "{web.url("/health")}"'
    write_config(config, target)
    store = StateStore(str(tmp_path / "state.json"))
    watcher = Watcher(lambda: loader(config), store, None, interval=0.01)

    def good() -> None:
        assert not record_path(store.path).exists()
        watcher.request_reload()

    def bad() -> None:
        config.write_text("[[target]]\nname = 'broken'\n")
        watcher.request_reload()

    in_one_loop(lambda: watcher.run(2), good, lambda: watcher.run(2), bad,
                lambda: watcher.run(2))
    found = RecordFile(record_path(store.path), 30 * DAY, 1 << 20).read().entries
    assert [e.kind for e in found] == [Kind.CONFIG_RELOADED, Kind.CONFIG_REJECTED], found
    assert "keeping the previous config" in found[1].reason and found[1].target == ""


def test_a_new_record_starts_with_what_the_state_remembered(prober: Prober) -> None:
    """Upgrading loses no event: the first command that records something (here a pause) on a
    version 3 state of the last release starts the record with every target's history, oldest
    first, its memory users kept, then the pause."""
    v3 = json.loads(V3_FILE.read_text())
    names = sorted(v3["targets"])
    prober.write(_config(*(f'name = "{n}"\nurl = "http://127.0.0.1:1/"' for n in names)))
    prober.state.parent.mkdir(parents=True)
    prober.state.write_bytes(V3_FILE.read_bytes())
    assert prober("pause", names[0], "--for", "1h").code == 0
    events = prober("status", "--since", "3650d", "--json").json()["events"]
    remembered = sorted((h["at"], n, h["event"]) for n in names
                         for h in v3["targets"][n]["history"])
    assert [(e["at"], e["target"], e["event"]) for e in events[:-1]] == remembered
    assert events[-1]["event"] == "paused" and events[-1]["target"] == names[0]
    assert any(e.get("top_memory") for e in events), events


def _stop_watcher_once_a_restart_is_asked(config: Path, store: StateStore) -> None:
    """Run a watcher until it asks a restart that never ends (HangingActuator), then stop it."""
    actuator = HangingActuator()
    watcher = Watcher(lambda: loader(config), store, lambda: actuator, interval=0.01)

    async def stop_once_asked() -> None:
        task = asyncio.ensure_future(watcher.run())
        while not actuator.asked:
            await asyncio.sleep(0.01)
        watcher.stop()
        await asyncio.wait_for(task, 2)

    asyncio.run(stop_once_asked())


def test_a_restart_asked_by_a_stopped_watcher_is_in_the_record(tmp_path: Path) -> None:
    """Stopped while systemd has a restart to do, the watcher records it as asked, in the
    record as in the state: restart-asked, then the restart whose outcome it never learnt."""
    config = tmp_path / "prober.toml"
    with serve(answer(500, b"broken")) as broken:
        write_config(config, f'name = "web"\nurl = "{broken.url("/")}"\nunit = "web"')
        store = StateStore(str(tmp_path / "state.json"))
        _stop_watcher_once_a_restart_is_asked(config, store)
    found = RecordFile(record_path(store.path), 30 * DAY, 1 << 20).read().entries
    assert [(e.kind, e.unit) for e in found][-2:] == \
        [(Kind.RESTART_ASKED, "web.service"), (Kind.RESTART, "web.service")], found
    assert "stopped" in found[-1].reason


def test_a_record_that_cannot_be_written_leaves_pause_and_resume_working(prober: Prober,
                                                                         web: Server) -> None:
    """A directory in the record's place: `pause` and `resume` still do their work, each
    saying in one line that the record could not be written."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    record_path(prober.state).mkdir(parents=True)
    paused = prober("pause", "web")
    assert paused.code == 0, paused
    assert paused.err.count("\n") == 1 and "cannot write the record" in paused.err, paused.err
    assert prober("status", "--json").json()["targets"][0]["paused_until"] is not None
    resumed = prober("resume", "web")
    assert resumed.code == 0 and "cannot write the record" in resumed.err, resumed
    assert prober("status", "--json").json()["targets"][0]["paused_until"] is None


def test_a_stopped_watcher_saves_the_restart_it_asked_without_its_record(tmp_path: Path) -> None:
    """Stopped while systemd has a restart to do, with a directory in the record's place:
    the restart asked is saved in the state all the same."""
    config = tmp_path / "prober.toml"
    store = StateStore(str(tmp_path / "state.json"))
    record_path(store.path).mkdir()
    with serve(answer(500, b"broken")) as broken:
        write_config(config, f'name = "web"\nurl = "{broken.url("/")}"\nunit = "web"')
        _stop_watcher_once_a_restart_is_asked(config, store)
    saved = store.load(1 << 20).get("web")
    assert saved is not None and saved.restarts, saved


@pytest.mark.parametrize("value", ["bogus", "-5m", "11y", "1h; rm -rf /"])
def test_a_bad_since_is_one_line_and_exit_3(prober: Prober, value: str) -> None:
    """A --since that is not a duration is one error line, exit 3, for status and report."""
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{refused_port()}/"'))
    for command in ("status", "report"):
        run = prober(command, "--since", value)
        assert run.code == 3 and run.out == "", run
        assert run.err.startswith("prober: error: --since:") and run.err.count("\n") == 1, run


def test_a_target_without_since_or_unknown_is_a_usage_error(prober: Prober) -> None:
    """`status TARGET` needs --since; an unknown TARGET is named with a hint."""
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{refused_port()}/"'))
    assert "goes with --since" in prober("status", "web").err
    run = prober("status", "wbe", "--since", "1h")
    assert run.code == 3 and 'did you mean "web"' in run.err, run


@pytest.fixture
def prober(tmp_path: Path) -> Prober:
    return Prober(tmp_path)


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(health()) as server:
        yield server
