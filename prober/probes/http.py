"""The HTTP probe kind: one request (over TCP, TLS or a Unix socket), and its redirects if it
follows them, judged on status and body.

The spec and its keys are in http_spec.py, the transport work (clients, redirects, capped
decoding) in http_transport.py, the failure classes of what a request raised in failures.py
(shared with tcp). httpx is imported when the first transport is made, not with this module:
the config, `validate` and `status` read the spec and keys without paying for it. Reasons never
hold header values or URLs (either may carry secrets).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from urllib.parse import urlsplit

from prober.core.kinds import Argument, ProbeKind
from prober.core.results import Deadline, FailureClass, Finding
from prober.core.text import clip, quote, reason, redact_url, size
from prober.probes.failures import failure_of
from prober.probes.http_spec import KEYS, HttpProbe, Method, argument, build, certificate_notice
from prober.probes.http_transport import (
    ClientPool,
    Failed,
    Phase,
    Progress,
    follow,
    read_body,
    timeout_reason,
)
from prober.probes.shared import search

log = logging.getLogger("prober")


# --- the probe ------------------------------------------------------------------------------


async def probe(spec: HttpProbe, deadline: Deadline, clients: ClientPool) -> Finding:
    """One request (and its redirects), bounded as a whole (connect, TLS, headers, body, the
    match of `expect_body_regex`) by `deadline`.

    httpx's own read timeout restarts with every chunk, so a server trickling a byte a second
    would never trip it; the deadline bounds the sum.
    """
    progress = Progress(spec)
    timeout = asyncio.timeout_at(deadline.at)
    try:
        async with timeout:
            return await _request(spec, clients, progress, deadline)
    except Failed as exc:
        return exc.finding
    except Exception as exc:
        if timeout.expired():
            await progress.close_orphan()
            return progress.finding(timeout_reason(progress.phase, deadline),
                                    FailureClass.TIMEOUT)
        return _classify(exc, spec, progress)


async def _request(spec: HttpProbe, clients: ClientPool, progress: Progress,
                   deadline: Deadline) -> Finding:
    response = await follow(spec, clients, progress)
    try:
        progress.phase = Phase.BODY
        status = progress.status_code = response.status_code
        if not any(r.matches(status) for r in spec.expect_status):
            return progress.finding(_status_reason(spec, status), FailureClass.STATUS)
        if spec.method is Method.HEAD:
            return progress.finding(f"status {status}")
        wants_body = bool(spec.expect_body or spec.expect_body_regex)
        try:
            body, over = await read_body(response, spec.max_body, keep=wants_body)
        except zlib.error as exc:
            return progress.finding(reason(f"body not decodable: {exc}"), FailureClass.PROTOCOL)
    finally:
        await response.aclose()
    if wants_body:
        text = _decode(body, response.charset_encoding)
        failure = await _judge_body(spec, text, over, progress, deadline)
        if failure is not None:
            return progress.finding(failure[1], failure[0])
    return progress.finding(f"status {status}")


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


async def _judge_body(spec: HttpProbe, text: str, over: bool, progress: Progress,
                      deadline: Deadline) -> tuple[FailureClass, str] | None:
    """The failure of a body expectation, if any.

    A body over max_body is judged on its first max_body bytes: it passes if the expectation
    is met there, and is TOO_LARGE if not. Without a body expectation it is not judged at all
    (reading just stops at max_body), so only the status counts.
    """
    missing = []
    if spec.expect_body and spec.expect_body not in text:
        missing.append(f"does not contain {quote(spec.expect_body)}")
    if spec.expect_body_regex:
        progress.phase = Phase.MATCH
        found = await search(spec.expect_body_regex, text, deadline)
        if found is None:
            return FailureClass.TIMEOUT, timeout_reason(Phase.MATCH, deadline)
        if not found:
            missing.append(f"does not match /{clip(spec.expect_body_regex)}/")
    if not missing:
        return None
    if over:
        limit = size(spec.max_body)
        return FailureClass.TOO_LARGE, f"body over {limit} and its first {limit} " + missing[0]
    return FailureClass.BODY, "body " + missing[0]


def _status_reason(spec: HttpProbe, status: int) -> str:
    expected = ", ".join(str(r) for r in spec.expect_status)
    text = f"status {status}, expected {expected}"
    if 300 <= status < 400 and not spec.follow_redirects:
        text += " (a redirect; follow_redirects is off)"
    return text


# --- exceptions -> failure classes --------------------------------------------------------


def _classify(exc: Exception, spec: HttpProbe, progress: Progress) -> Finding:
    """The failure class and one-line reason for what a request raised."""
    failure, text = failure_of(exc, host=_host(spec.url), unix_socket=spec.unix_socket,
                               connecting=progress.phase in (Phase.CONNECT, Phase.TLS))
    if failure is FailureClass.ERROR:
        log.debug("url=%s: unexpected %s", redact_url(spec.url), type(exc).__name__,
                  exc_info=exc)
    return progress.finding(reason(text), failure)


def _host(target_url: str) -> str:
    try:
        return urlsplit(target_url).hostname or "?"
    except ValueError:
        return "?"


KIND: ProbeKind[HttpProbe, ClientPool] = ProbeKind(
    name="http",
    spec=HttpProbe,
    keys=KEYS,
    selectors=("url", "unix_socket"),
    build=build,
    probe=probe,
    context=ClientPool,
    argument=Argument("URL", "an http:// or https:// URL", argument),
    notice=certificate_notice,
)
