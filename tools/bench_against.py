"""`python -m tools.bench --only against --against REV`: the healthy one-shot check of this
checkout beside the same check of REV (`HEAD~1`, `main`, a tag), measured in the same run.

REV's tree is exported with `git archive` into the bench's work directory (a throwaway copy: no
worktree gets registered in the repository, so a killed bench leaves nothing behind there) and
runs on this venv's interpreter and dependencies, its own `prober/` first on the path. Both run
the same way: `python -P -m prober` with PYTHONPATH set to their tree, so neither the current
directory nor the editable install decides which prober is imported. The config is figure
"healthy"'s (two loopback servers answering OK); the commands are timed by tools.bench's
`compare`, one warm-up run each, then interleaved runs. The spread of each is its interquartile
range over its median: the noise the verdict allows.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.servers import health, serve


def figure_against(bench: Any, rev: str) -> None:
    """The row comparing this checkout's healthy check with REV's.

    `bench` is tools.bench's Bench (typed loosely: `python -m tools.bench` runs that module as
    __main__, and the Bench it passes is of that copy).
    """
    from tools.bench import PY, REPO, Row, compare, ms, verdict, write_config

    commit = _git(REPO, "rev-parse", "--verify", "--short", f"{rev}^{{commit}}").strip()
    tree = export(REPO, commit, bench.path(f"against-{commit}"))
    with serve(health()) as first, serve(health()) as second:
        config = write_config(bench.path("against.toml"),
                              [("a", first.url("/health")), ("b", second.url("/health"))])
        args = ["check", "--config", str(config), "--state", str(bench.path("against.json"))]

        def check(root: Path) -> list[str]:
            return ["env", f"PYTHONPATH={root}", PY, "-P", "-m", "prober", *args]

        times = compare({"this": check(REPO), rev: check(tree)}, bench.env, bench.reps)
    mine, theirs = statistics.median(times["this"]), statistics.median(times[rev])
    noise = {name: spread(values) for name, values in times.items()}
    ratio = mine / theirs
    allowed = max(noise.values())
    bench.rows.append(Row(
        f"healthy check, 2 targets: this checkout vs {rev} ({commit}), median wall", ms(mine),
        f"{rev} {ms(theirs)}", f"<= {rev} + noise",
        verdict(ratio <= 1 + allowed,
                f"{ratio:.2f}x; spread this {noise['this']:.0%}, {rev} {noise[rev]:.0%}; "
                f"{len(times['this'])} interleaved runs each"),
        {"rev": rev, "commit": commit, "seconds": times["this"], "rev_seconds": times[rev],
         "ratio": ratio, "spread": noise["this"], "rev_spread": noise[rev]}))


def spread(values: Sequence[float]) -> float:
    """The interquartile range over the median: how much the runs of one command moved."""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)


def export(repo: Path, commit: str, into: Path) -> Path:
    """REV's committed tree, unpacked into `into` (git archive: no worktree, no checkout)."""
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit],
                             capture_output=True, timeout=120, check=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          timeout=60, check=True).stdout
