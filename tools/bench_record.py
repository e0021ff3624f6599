"""`make bench`, the outage record: its size after 30 days, the time of `status --since 7d` on
it, and what a healthy check costs with it beside what it cost before it.

The month is simulated for examples/mastodon.toml's targets, and is a bad one: every target
has an outage every day (failing, down under memory pressure with the three largest memory
users, a restart asked and done, recovered), a dependent blamed on its dependency, each run's
entries appended by `RecordFile.append` as a run appends them, the clock moving on, so that
compaction happens as it would.

`status --since 7d` is the real CLI on that record, beside `status` on the same state (which
reads no record), interleaved. The healthy check is figure "healthy"'s (two loopback servers
answering OK), with the 30-day record beside its state, timed beside the same check of the
commit before the record (`git merge-base HEAD main`, exported as tools/bench_against.py does),
interleaved: a healthy run never opens the record, and this row shows that it costs nothing
measurable there either.
"""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Any

from prober.core.config import DEFAULT_RECORD_MAX_AGE, DEFAULT_RECORD_MAX_MIB
from prober.core.psi import MemoryUser
from prober.core.record import Entry, Kind
from prober.shell.record import RecordFile, record_path
from tests.support.servers import health, serve

DAYS = 30
AT = 1_800_000_000.0
DAY = 86400.0
TARGETS = (("caddy", "caddy.service"), ("web", "mastodon-web.service"),
           ("streaming", "mastodon-streaming@4000.service"),
           ("sidekiq", "mastodon-sidekiq.service"), ("postgres", "postgresql@15-main.service"),
           ("redis", "redis-server.service"), ("sidekiq-threads", "mastodon-sidekiq.service"))
USERS = (MemoryUser("mastodon-sidekiq.service", 1_288_490_188),
         MemoryUser("postgresql@15-main.service", 402_653_184),
         MemoryUser("mastodon-web.service", 350_224_384))
RATIO_TARGET = 3.0


def _outage(at: float, name: str, unit: str) -> list[list[Entry]]:
    """One outage's runs, each run's entries as it appends them."""
    return [
        [Entry(at, name, Kind.FAILING, "connection refused", unit),
         Entry(at, name, Kind.BLAMED, "its dependency web is failing", unit, on="web")],
        [Entry(at + 60, name, Kind.DOWN, "connection refused", unit, psi=31.5,
               top_memory=USERS)],
        [Entry(at + 61, name, Kind.RESTART_ASKED, "restart asked of the actuator", unit),
         Entry(at + 63, name, Kind.RESTART, "restarted (job done in 1.2s, MainPID 4242 -> "
               "4343); answering again", unit, psi=31.5, top_memory=USERS),
         Entry(at + 63, name, Kind.RECOVERED, "answering again after the restart", unit,
               duration=63.0)],
    ]


def simulate(path: Path) -> tuple[int, int]:
    """A bad month into the record at `path`: its size in bytes and its entries."""
    record = RecordFile(path, DEFAULT_RECORD_MAX_AGE, DEFAULT_RECORD_MAX_MIB << 20)
    for day in range(DAYS):
        for number, (name, unit) in enumerate(TARGETS):
            at = AT + day * DAY + number * 3600
            for run in _outage(at, name, unit):
                record.append(run, run[-1].at)
    return path.stat().st_size, len(record.read().entries)


def figure_record(bench: Any) -> None:
    from tools.bench import PY, REPO, Row, compare, ms, verdict, write_config
    from tools.bench_against import _git, export, spread

    with serve(health()) as first, serve(health()) as second:
        config = write_config(bench.path("record.toml"),
                              [("a", first.url("/health")), ("b", second.url("/health"))])
        state = bench.path("record-state.json")
        size, entries = simulate(record_path(state))
        bench.rows.append(Row(
            f"outage record after {DAYS} days, {len(TARGETS)} targets, an outage each a day",
            f"{size / 1024:.0f} KiB", f"bound {DEFAULT_RECORD_MAX_MIB} MiB", "within the bound",
            verdict(size <= DEFAULT_RECORD_MAX_MIB << 20, f"{entries} entries"),
            {"bytes": size, "entries": entries}))
        base = ["--config", str(config), "--state", str(state)]
        check = [PY, "-m", "prober", "check", *base]
        subprocess.run(check, env=bench.env, capture_output=True, timeout=60, check=False)
        times = compare({"since": [PY, "-m", "prober", "status", "--since", "7d", *base],
                         "status": [PY, "-m", "prober", "status", *base]}, bench.env, bench.reps)
        since, status = statistics.median(times["since"]), statistics.median(times["status"])
        bench.rows.append(Row(
            f"status --since 7d on that record ({entries} entries): median wall", ms(since),
            f"status {ms(status)}", f"<= {RATIO_TARGET:g}x",
            verdict(since / status <= RATIO_TARGET, f"{since / status:.2f}x, "
                    f"{len(times['since'])} interleaved runs each"),
            {"seconds": times["since"], "status_seconds": times["status"]}))
        commit = _git(REPO, "merge-base", "HEAD", "main").strip()[:12]
        tree = export(REPO, commit, bench.path(f"record-before-{commit}"))
        before_state = bench.path("record-before.json")

        def healthy(root: Path, state_file: Path) -> list[str]:
            return ["env", f"PYTHONPATH={root}", PY, "-P", "-m", "prober", "check", "--config",
                    str(config), "--state", str(state_file)]

        times = compare({"after": healthy(REPO, state), "before": healthy(tree, before_state)},
                        bench.env, bench.reps)
    after, before = statistics.median(times["after"]), statistics.median(times["before"])
    noise = max(spread(times["after"]), spread(times["before"]))
    bench.rows.append(Row(
        f"healthy check, 2 targets, a {DAYS}-day record beside it: median wall", ms(after),
        f"before the record ({commit}) {ms(before)}", "<= before + noise",
        verdict(after / before <= 1 + noise, f"{after / before:.2f}x; spread {noise:.0%}"),
        {"seconds": times["after"], "before_seconds": times["before"], "commit": commit}))
