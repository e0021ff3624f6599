"""Probing's own logic, with a fake probe kind: which deadline each attempt gets, and that a
watcher's targets are prepared once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

import prober.core.config
from prober.core.config import RestartRules, Target
from prober.core.kinds import Argument, ProbeKind
from prober.core.results import Deadline, FailureClass, Finding
from prober.probes.probing import Probing


@dataclass(frozen=True)
class FakeSpec:
    """A probe that fails its first `failures` attempts."""

    name: str
    failures: int = 0

    @property
    def endpoint(self) -> str:
        return self.name


@dataclass
class Seen:
    """What the fake kind was asked: each attempt's deadline, and each prepare()."""

    deadlines: dict[str, list[Deadline]] = field(default_factory=dict)
    prepared: list[list[str]] = field(default_factory=list)

    async def prepare(self, specs: Sequence[Any]) -> None:
        self.prepared.append([spec.name for spec in specs])

    async def aclose(self) -> None:
        return None


def fake_kind(seen: Seen) -> ProbeKind[FakeSpec, Seen]:
    async def probe(spec: FakeSpec, deadline: Deadline, context: Seen) -> Finding:
        attempts = context.deadlines.setdefault(spec.name, [])
        attempts.append(deadline)
        time.sleep(0.01)  # starting a probe takes time: the next one starts later
        if len(attempts) <= spec.failures:
            return Finding("refused", FailureClass.REFUSED)
        return Finding("ok")

    def build(values: Mapping[str, Any]) -> FakeSpec:
        return FakeSpec(**values)

    return ProbeKind(name="fake", spec=FakeSpec, keys=(), selectors=(), build=build,
                     probe=probe, context=lambda: seen,
                     argument=Argument("FAKE", "a fake", lambda args: None))


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    found = Seen()
    kind = fake_kind(found)
    monkeypatch.setattr(prober.core.config, "kind_of", lambda spec: kind)
    return found


def target(name: str, failures: int = 0, timeout: float = 2.0) -> Target:
    return Target(name=name, probe=FakeSpec(name, failures),
                  policy=RestartRules(timeout=timeout, retries=1, retry_delay=0.01))


def test_first_attempts_of_a_run_share_its_start(seen: Seen) -> None:
    """Every first attempt of a run counts its timeout from the run's start, however long
    starting the others took; a retry counts from its own start."""
    targets = [target("a", failures=1), target("b"), target("c", timeout=3.0)]

    async def main() -> None:
        async with Probing() as probing:
            results = await probing.probe_all(targets)
        assert [r.ok for r in results] == [True, True, True]

    asyncio.run(main())
    first = {name: attempts[0] for name, attempts in seen.deadlines.items()}
    starts = {first[name].at - first[name].seconds for name in first}
    assert len(starts) == 1
    (start,) = starts
    retry = seen.deadlines["a"][1]
    assert retry.at - retry.seconds > start
    assert [len(seen.deadlines[n]) for n in ("a", "b", "c")] == [2, 1, 1]


def test_the_same_targets_are_prepared_once(seen: Seen) -> None:
    """A watcher probes the same targets every cycle: its kinds prepare them once, and again
    only for a new set (a reloaded config)."""
    targets = (target("a"), target("b"))
    reloaded = (target("a"), target("c"))

    async def main() -> None:
        async with Probing() as probing:
            for batch in (targets, targets, targets, reloaded, reloaded):
                await probing.probe_all(batch)

    asyncio.run(main())
    assert seen.prepared == [["a", "b"], ["a", "c"]]
