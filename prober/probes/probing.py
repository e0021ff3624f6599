"""Probing targets: the one caller of every probe kind (prober/probes/).

    async with Probing() as probing:       # one per run, or one for the watcher's life
        results = await probing.probe_all(targets)

The caller owns what every kind shares: it sets each attempt's deadline and measures its
latency, judges `max_latency`, retries (tenacity), and re-probes after a restart. A kind only
finds; a failed target is data (`ok`, a FailureClass, a one-line reason), never an exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from prober.core.config import Target
from prober.core.keys import format_duration
from prober.core.kinds import Context, ProbeKind, Remembering
from prober.core.results import Deadline, FailureClass, Finding, ProbeResult
from prober.core.text import os_reason, reason
from prober.core.tracker import State
from prober.io.limits import USUAL_SOFT_LIMIT, raise_open_files

log = logging.getLogger("prober")

VERIFY_INTERVAL = 0.5
# How long past its deadline a kind may take to return before the caller gives up on it: a
# kind is written to return by its deadline; this only bounds one that has a bug.
_BACKSTOP = 1.0


class Probing:
    """The probe kinds' shared contexts, created on first use and closed together."""

    def __init__(self) -> None:
        self._contexts: dict[str, Context] = {}
        self._prepared: Sequence[Target] | None = None  # the targets of the last prepare()

    def _context(self, kind: ProbeKind[Any, Any]) -> Any:
        context = self._contexts.get(kind.name)
        if context is None:
            context = self._contexts[kind.name] = kind.context()
        return context

    async def prepare(self, targets: Sequence[Target]) -> None:
        """Let each kind set up what `targets` need before any probe starts (the watcher's
        targets, the same every cycle until a reload, only once)."""
        if targets is self._prepared:
            return
        _enough_descriptors(len(targets))
        by_kind: dict[str, tuple[ProbeKind[Any, Any], list[Any]]] = {}
        for target in targets:
            kind = target.kind
            by_kind.setdefault(kind.name, (kind, []))[1].append(target.probe)
        for kind, specs in by_kind.values():
            await self._context(kind).prepare(specs)
        self._prepared = targets

    def recall(self, targets: Sequence[Target], state: State) -> None:
        """Tell the kinds that remember what they saw of their targets (unit_health) what the
        state kept of it: the state file, not the context, is what outlives a run."""
        for target in targets:
            context = self._context(target.kind)
            if isinstance(context, Remembering):
                context.recall(target.probe, state.get(target.name).unit_seen)

    async def probe_all(self, targets: Sequence[Target]) -> list[ProbeResult]:
        """Probe every target concurrently; one result per target, in the same order.

        The first attempts share one start, the run's: each ends by it + its timeout, however
        long starting a thousand of them took, so the run ends by then too.
        """
        await self.prepare(targets)
        start = asyncio.get_running_loop().time()
        if len(targets) == 1:  # no task to start and wait for
            return [await self.probe(targets[0], start)]
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.probe(target, start)) for target in targets]
        return [task.result() for task in tasks]

    async def probe(self, target: Target, start: float | None = None) -> ProbeResult:
        """Probe one target, with its quick retries; the first attempt's timeout counts from
        `start` when given (a run's), else from when it begins, like every retry's."""
        if target.policy.retries <= 0:
            return await self._attempt(target, 1, start)
        return await self._with_retries(target, start)

    async def verify(self, target: Target, budget: float) -> ProbeResult:
        """Probe again, every VERIFY_INTERVAL, until the target passes or `budget` has gone."""
        from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_fixed

        retrying = AsyncRetrying(
            stop=stop_after_delay(max(0.0, budget - VERIFY_INTERVAL)),
            wait=wait_fixed(VERIFY_INTERVAL),
            retry=retry_if_result(_worth_another_try),
            retry_error_callback=_last_result,
        )
        result: ProbeResult = await retrying(self.probe, target)
        return result

    async def _with_retries(self, target: Target, start: float | None) -> ProbeResult:
        from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_fixed

        attempts = 0

        async def attempt() -> ProbeResult:
            nonlocal attempts
            attempts += 1
            return await self._attempt(target, attempts, start if attempts == 1 else None)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(target.policy.retries + 1),
            wait=wait_fixed(target.policy.retry_delay),
            retry=retry_if_result(_worth_another_try),
            retry_error_callback=_last_result,
        )
        result: ProbeResult = await retrying(attempt)
        return result

    async def _attempt(self, target: Target, number: int, start: float | None = None
                       ) -> ProbeResult:
        kind = target.kind
        policy = target.policy
        loop = asyncio.get_running_loop()
        started = loop.time()  # the latency counts from here
        begun = started if start is None else min(start, started)
        deadline = Deadline(begun + policy.timeout, policy.timeout)
        try:
            async with asyncio.timeout_at(deadline.at + _BACKSTOP):
                finding = await kind.probe(target.probe, deadline, self._context(kind))
        except TimeoutError:
            finding = Finding(f"no answer within {format_duration(policy.timeout)}",
                              FailureClass.TIMEOUT)
        except Exception as exc:  # a bug in a kind must not take the whole run down
            log.debug("target=%s: the %s probe raised", target.name, kind.name, exc_info=exc)
            finding = Finding(reason(f"{type(exc).__name__}: {exc}"), FailureClass.ERROR)
        latency = loop.time() - started
        if finding.failure is None and policy.max_latency is not None and \
                latency > policy.max_latency:
            finding = Finding(f"slower than max_latency {format_duration(policy.max_latency)}",
                              FailureClass.SLOW, finding.status_code, finding.certificate,
                              finding.seen)
        return ProbeResult(
            name=target.name,
            ok=finding.failure is None,
            reason=finding.reason,
            failure=finding.failure,
            status_code=finding.status_code,
            latency=latency,
            attempts=number,
            certificate=finding.certificate,
            seen=finding.seen,
        )

    async def aclose(self) -> None:
        contexts, self._contexts, self._prepared = list(self._contexts.values()), {}, None
        for context in contexts:
            await context.aclose()

    async def __aenter__(self) -> Probing:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


# Open files one probe may hold at once: a socket, or a command's pipes; and the process's own.
_FILES_PER_PROBE, _FILES_RESERVED = 3, 64


def _enough_descriptors(probes: int) -> None:
    """Raise the soft limit on open files, up to the hard one, so that `probes` probes at once
    cannot run out: a probe that could not open its socket would fail, and its target count as
    down, for a limit of prober's own. Runs of a few hundred targets never need it."""
    needed = probes * _FILES_PER_PROBE + _FILES_RESERVED
    if needed <= USUAL_SOFT_LIMIT:
        return
    try:
        raised = raise_open_files(needed)
    except (OSError, ValueError) as exc:
        log.debug("cannot raise the open-files limit to %d: %s", needed, os_reason(exc))
        return
    if raised is not None:
        log.debug("open-files limit raised from %d to %d for %d probes", *raised, probes)


def _worth_another_try(result: ProbeResult) -> bool:
    """A failed probe is tried again, unless prober's own fault failed it: that lasts."""
    return not result.ok and not result.prober_fault


def _last_result(state: Any) -> ProbeResult:
    result: ProbeResult = state.outcome.result()
    return result


async def probe_all(targets: Sequence[Target]) -> list[ProbeResult]:
    """Probe every target once, with contexts of their own."""
    async with Probing() as probing:
        return await probing.probe_all(targets)


async def probe_one(target: Target) -> ProbeResult:
    """Probe one target once (with its retries), with contexts of its own."""
    async with Probing() as probing:
        await probing.prepare([target])
        return await probing.probe(target)


def probe_sync(targets: Sequence[Target]) -> list[ProbeResult]:
    """`probe_all` for synchronous callers."""
    return asyncio.run(probe_all(targets))
