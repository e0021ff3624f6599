"""Notifications: restart, restart failed, given up and recovered, to a command and/or a webhook.

Delivery happens after the run's restarts, is bounded by [notify] timeout, and never fails the
run: a failed delivery is logged and forgotten. No shell is ever used, and secrets (the token,
header values) are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from prober.config import Notify, NotifyEvent

log = logging.getLogger("prober")


def event_payload(event: NotifyEvent, target: str, unit: str | None, reason: str,
                  at: float) -> dict[str, Any]:
    return {"event": event.value, "target": target, "unit": unit, "reason": reason, "at": at,
            "host": socket.gethostname()}


def _token(notify: Notify, environ: Mapping[str, str]) -> str | None:
    if notify.token_file is None:
        return None
    path = notify.token_file
    if not os.path.isabs(path):  # a systemd credential (LoadCredential=NAME:...)
        path = os.path.join(environ.get("CREDENTIALS_DIRECTORY", ""), path)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        log.error("notify: cannot read the token file %s: %s", path,
                  (exc.strerror or str(exc)).lower())
        return None


async def _run_command(notify: Notify, payload: dict[str, Any]) -> None:
    process = await asyncio.create_subprocess_exec(
        *notify.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(process.communicate(json.dumps(payload).encode() + b"\n"),
                               notify.timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"exited with status {process.returncode}")


async def _post(notify: Notify, payloads: Sequence[dict[str, Any]],
                environ: Mapping[str, str]) -> None:
    import httpx

    assert notify.webhook is not None
    headers = dict(notify.headers)
    token = _token(notify, environ)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=notify.timeout, trust_env=False) as client:
        for payload in payloads:
            response = await client.post(notify.webhook, json=payload, headers=headers)
            if response.status_code >= 300:
                raise RuntimeError(f"the webhook answered {response.status_code}")


async def deliver(notify: Notify, payloads: Sequence[dict[str, Any]],
                  environ: Mapping[str, str] = os.environ) -> None:
    """Send each event; log failures; return within about `notify.timeout`."""
    wanted = [p for p in payloads if NotifyEvent(p["event"]) in notify.events]
    if not wanted:
        return
    jobs: list[tuple[str, Any]] = []
    if notify.command:
        jobs += [("command", _run_command(notify, p)) for p in wanted]
    if notify.webhook:
        jobs.append(("webhook", _post(notify, wanted, environ)))
    results = await asyncio.gather(
        *(asyncio.wait_for(job, notify.timeout + 1) for _, job in jobs), return_exceptions=True
    )
    for (kind, _), result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException):
            reason = "timed out" if isinstance(result, TimeoutError) else \
                f"{type(result).__name__}: {result}"
            log.error("notify: %s failed: %s", kind, reason)
