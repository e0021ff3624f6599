"""`make bench`, the hostile targets' figures: a one-shot `prober probe`'s peak RSS against
each hostile body (a gzip bomb of one and of two layers, a redirect with a 96 MiB body, a
regex that backtracks for ever), beside a healthy probe's peak measured in the same run.

Every probe is a fresh process against a loopback server of its own (tests/support/hostile.py, in
the bench process); after one warm-up run, which fills the bytecode cache, the runs of all the
cases are interleaved, and each figure is the largest peak of its runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from tests.support.hostile import (
    REDOS_BODY,
    REDOS_REGEX,
    bomb,
    encoded,
    redirect_with_body,
)
from tests.support.servers import Handler, answer, health, serve

REPS = 3
SLACK_MIB = 8

# name -> the server's behaviour, the probe's arguments after the URL, its exit codes
CASES: dict[str, tuple[Handler, Sequence[str], Sequence[int]]] = {
    "healthy": (health(), ("--expect-body", "OK"), (0,)),
    "gzip bomb, 1 layer": (encoded(bomb(1), 1), ("--expect-body", "OK"), (2,)),
    "gzip bomb, 2 layers": (encoded(bomb(2), 2), ("--expect-body", "OK"), (2,)),
    "redirect with a 96 MiB body": (redirect_with_body(),
                                    ("--follow-redirects", "--expect-body", "OK"), (0,)),
    "regex (A+)+B on 4 KiB of A": (answer(200, REDOS_BODY),
                                   ("--expect-body-regex", REDOS_REGEX, "--timeout", "1s"),
                                   (2,)),
}


def figure_hostile(bench: Any) -> None:
    """One row per hostile body: the probe's peak RSS beside the healthy probe's.

    `bench` is tools.bench's Bench (typed loosely, as in tools/bench_watch.py).
    """
    from tools.bench import MIB, PROBER, Row, measure, mib, verdict

    peaks: dict[str, list[int]] = {name: [] for name in CASES}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(serve(handler)).url("/health")
                for name, (handler, _, _) in CASES.items()}
        healthy_args = [*PROBER, "probe", urls["healthy"], *CASES["healthy"][1]]
        measure(healthy_args, bench.env)  # warm-up: fills the pycache
        for _ in range(REPS):
            for name, (_, args, codes) in CASES.items():
                run = measure([*PROBER, "probe", urls[name], *args], bench.env, expect=codes)
                peaks[name].append(run.rss_kib)
    healthy = max(peaks["healthy"])
    for name, found in peaks.items():
        if name == "healthy":
            continue
        peak = max(found)
        bench.rows.append(Row(
            f"hostile target, {name}: one-shot probe's peak RSS", mib(peak),
            f"healthy probe {mib(healthy)}", f"<= healthy + {SLACK_MIB} MiB",
            verdict(peak <= healthy + SLACK_MIB * MIB,
                    f"{(peak - healthy) / MIB:+.1f} MiB; max of {REPS} each"),
            {"peak_kib": found, "healthy_peak_kib": peaks["healthy"]}))
