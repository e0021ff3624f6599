"""Notifications: down, restart, restart failed, given up and recovered, to a command, a
webhook and/or mail (prober/mail.py: one message per run).

Delivery happens after the run's restarts and never fails the run: a failed delivery is logged
and forgotten. A webhook that fails is tried again with backoff (tenacity), every attempt
within [notify] timeout in all: tenacity stops before a backoff would end past it. `deliver`
bounds the whole too, for an attempt that hangs (httpx's timeout is per phase, not per
request). No shell is ever used, and secrets (the token, header values) are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from prober.core.actuator import restarted_as
from prober.core.config import Config, Notify, NotifyEvent
from prober.core.keys import one_line_secret
from prober.core.record import outage_began
from prober.core.tracker import Change, TargetState
from prober.core.view import journal_command, systemd_unit
from prober.io.configfiles import FileFault, NamedFile

log = logging.getLogger("prober")

_FIRST_BACKOFF = 0.2
_MAX_BACKOFF = 2.0


def event_payload(event: NotifyEvent, target: str, unit: str | None, reason: str,
                  at: float, cause: str | None = None, *, container: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    """`cause` is the probe's reason behind an action (a restart, a failed one, giving up),
    whose `reason` says what prober did or could not do. `unit` is a systemd unit's name,
    `container` a container's: what restarts the target, or None."""
    return {"event": event.value, "target": target, "unit": unit, "container": container,
            "cause": cause, "reason": reason, "at": at, "host": socket.gethostname(), **extra}


_NOTIFIED = {event.value: event for event in NotifyEvent}
_ACTIONS = (NotifyEvent.RESTART, NotifyEvent.RESTART_FAILED, NotifyEvent.GIVEN_UP)


def payloads(changes: Sequence[Change], config: Config, causes: Mapping[str, str] | None = None,
             states: Mapping[str, TargetState] | None = None,
             **extra: Any) -> list[dict[str, Any]]:
    """The JSON payloads of the changes that are notification events; `causes` are this run's
    probe reasons by target, set beside the actions taken on them; with the targets' `states`,
    a failing target's `journal`: the command that shows its unit's journal (the unit that
    restarts it, or the one it watches) since the outage began."""
    names = {t.name: restarted_as(t) for t in config.targets}
    journals = {t.name: systemd_unit(t) for t in config.targets}
    out = []
    for change in changes:
        event = _NOTIFIED.get(change.event.value)
        if event is not None:
            entry = change.transition
            cause = (causes or {}).get(change.target) if event in _ACTIONS else None
            restarts = names.get(change.target, {})
            journaled = journals.get(change.target)
            journal = None
            if journaled and event is not NotifyEvent.RECOVERED and states is not None:
                history = states[change.target].history if change.target in states else ()
                journal = journal_command(journaled, outage_began(history, entry.at) or entry.at)
            out.append(event_payload(event, change.target, restarts.get("unit"), entry.reason,
                                     entry.at, cause or None, container=restarts.get("container"),
                                     journal=journal, **extra))
    return out


def _token(notify: Notify, environ: Mapping[str, str]) -> str | None:
    """The webhook's bearer token, or None without a token_file; FileFault if it is unusable."""
    if notify.token_file is None:
        return None
    return NamedFile("token_file", notify.token_file).parsed(environ, os.geteuid(), _one_token)


def _one_token(text: str) -> str:
    token = text.strip()
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("expected one line, the token")
    return token


async def _run_command(notify: Notify, payload: dict[str, Any], timeout: float) -> None:
    process = await asyncio.create_subprocess_exec(
        *notify.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(process.communicate(json.dumps(payload).encode() + b"\n"),
                               timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise _CommandFailed(f"exited with status {process.returncode}")


async def _run_commands(notify: Notify, payloads_: Sequence[dict[str, Any]],
                        deadline: float) -> None:
    """The command once per event, in order, so that `down` never arrives after `restart`."""
    for payload in payloads_:
        await _run_command(notify, payload, max(0.01, deadline - time.monotonic()))


class _Rejected(Exception):
    """The webhook answered, but not with success."""


class _CommandFailed(Exception):
    """The notify command ran and failed."""


async def _post(notify: Notify, payloads_: Sequence[dict[str, Any]], token: str | None,
                deadline: float) -> None:
    import httpx
    from tenacity import (
        AsyncRetrying,
        retry_if_exception_type,
        stop_before_delay,
        wait_exponential,
    )

    assert notify.webhook is not None
    headers = dict(notify.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(trust_env=False) as client:
        for payload in payloads_:
            async def attempt(payload: dict[str, Any] = payload) -> None:
                left = deadline - time.monotonic()
                response = await client.post(notify.webhook or "", json=payload,
                                             headers=headers, timeout=max(0.01, left))
                if response.status_code >= 300:
                    raise _Rejected(f"the webhook answered {response.status_code}")

            retrying = AsyncRetrying(
                retry=retry_if_exception_type((httpx.HTTPError, _Rejected)),
                wait=wait_exponential(multiplier=_FIRST_BACKOFF, max=_MAX_BACKOFF),
                # Not stop_after_delay: it would still start a backoff that ends past the
                # deadline. This one also stops once the deadline has passed.
                stop=stop_before_delay(max(0.0, deadline - time.monotonic())),
                reraise=True,
            )
            await retrying(attempt)


async def deliver(notify: Notify, payloads_: Sequence[dict[str, Any]],
                  environ: Mapping[str, str] = os.environ) -> None:
    """Send each event; log failures; return within `notify.timeout`."""
    wanted = [p for p in payloads_ if NotifyEvent(p["event"]) in notify.events]
    if not wanted:
        return
    deadline = time.monotonic() + notify.timeout
    jobs: list[tuple[str, Coroutine[Any, Any, None]]] = []
    if notify.command:
        jobs.append(("command", _run_commands(notify, wanted, deadline)))
    if notify.webhook:
        try:
            token = _token(notify, environ)
        except FileFault as exc:  # never sent without its token: prober's problem, not the run's
            log.error("notify: webhook not sent, a prober fault: %s", exc)
        else:
            jobs.append(("webhook", _post(notify, wanted, token, deadline)))
    if notify.mail_to:
        try:
            password = _smtp_password(notify, environ)
        except FileFault as exc:  # never sent without its password: prober's problem
            log.error("notify: mail not sent, a prober fault: %s", exc)
        else:
            jobs.append(("mail", _mail(notify, wanted, password, deadline)))
    results = await asyncio.gather(
        *(asyncio.wait_for(job, notify.timeout) for _, job in jobs), return_exceptions=True
    )
    for (kind, _), result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException):
            log.error("notify: %s failed: %s", kind, _failure(kind, result))


def _smtp_password(notify: Notify, environ: Mapping[str, str]) -> str | None:
    if notify.smtp_password_file is None:
        return None
    return NamedFile("smtp_password_file", notify.smtp_password_file).parsed(
        environ, os.geteuid(), one_line_secret)


async def _mail(notify: Notify, payloads_: Sequence[dict[str, Any]], password: str | None,
                deadline: float) -> None:
    """All of the run's events in one mail."""
    from prober.outputs import mail

    host = str(payloads_[0]["host"])
    envelope = mail.Envelope(sender=notify.mail_from or f"prober@{host}",
                             recipients=notify.mail_to, host=host)
    server = mail.Server(*notify.smtp_host, user=notify.smtp_user, password=password)
    await mail.send(server, mail.compose(payloads_, envelope, time.time()), envelope, deadline)


def _failure(kind: str, exc: BaseException) -> str:
    if kind == "mail":
        from prober.outputs.mail import failure

        return failure(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, _Rejected | _CommandFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
