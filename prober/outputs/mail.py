"""Mail: a run's events in one message, to the local MTA or a smarthost.

`compose` is pure: the run's event payloads (prober/notify.py) in, one message out, its
subject naming the worst event so that a phone's one line says what matters. `send` is the
shell: stdlib smtplib in a daemon thread, every socket operation bounded by what is left of
the delivery's deadline, and awaited no longer than that; a mail server that never answers
leaves only a daemon thread behind, which a one-shot process does not wait for at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from prober.core.config import NotifyEvent
from prober.core.text import clip, one_line, os_reason, reason, utc

SUBJECT_REASON_MAX = 80
LOCAL_MTA = "localhost"
LINES_MAX = 50

# Worst first: the subject names the worst event of the run, the earliest among equals.
_SEVERITY = (NotifyEvent.GIVEN_UP, NotifyEvent.RESTART_FAILED, NotifyEvent.DOWN,
             NotifyEvent.RESTART, NotifyEvent.RECOVERED)
_WORDS = {
    NotifyEvent.DOWN: "down",
    NotifyEvent.RESTART: "restarted",
    NotifyEvent.RESTART_FAILED: "restart failed",
    NotifyEvent.GIVEN_UP: "given up",
    NotifyEvent.RECOVERED: "recovered",
}


@dataclass(frozen=True)
class Envelope:
    """Who a mail is from and to, and the host it speaks for."""

    sender: str
    recipients: tuple[str, ...]
    host: str


def subject(payloads: Sequence[Mapping[str, Any]], host: str) -> str:
    """`[prober] caddy down on HOST: connection refused (+1 more)`."""
    worst = min(payloads, key=lambda p: _SEVERITY.index(NotifyEvent(p["event"])))
    word = _WORDS[NotifyEvent(worst["event"])]
    text = f"[prober] {worst['target']} {word} on {host}"
    why = _why(worst)
    if why:
        text += f": {clip(why, SUBJECT_REASON_MAX)}"
    if len(payloads) > 1:
        text += f" (+{len(payloads) - 1} more)"
    return one_line(text)


def body(payloads: Sequence[Mapping[str, Any]], host: str) -> str:
    """One line per event, oldest first, and the memory users when the run named them."""
    lines = [f"prober on {host}: {_count(len(payloads))} in this run.", ""]
    lines += [_line(p) for p in payloads[:LINES_MAX]]
    if len(payloads) > LINES_MAX:
        lines.append(f"... and {len(payloads) - LINES_MAX} more: see `prober status`.")
    journals = list(dict.fromkeys(p["journal"] for p in payloads[:LINES_MAX] if p.get("journal")))
    if journals:
        lines += ["", "Their journals:", *(f"  {line}" for line in journals)]
    top = payloads[0].get("top_memory") or []
    if top:
        users = ", ".join(f"{u['name']} ({u['bytes'] // (1 << 20)} MiB)" for u in top)
        lines += ["", f"Memory pressure; the largest memory users: {users}."]
    lines += ["", "`prober status` on the host shows each target's history."]
    return "\n".join(one_line(line) for line in lines) + "\n"


def _count(events: int) -> str:
    return "1 event" if events == 1 else f"{events} events"


def _line(payload: Mapping[str, Any]) -> str:
    at = utc(payload["at"])
    restarts = payload["unit"] or payload.get("container")
    unit = f" ({restarts})" if restarts else ""
    word = _WORDS[NotifyEvent(payload["event"])]
    said = _why(payload)
    why = f": {clip(said, 300)}" if said else ""
    return f"{at}  {payload['target']}{unit} {word}{why}"


def _why(payload: Mapping[str, Any]) -> str:
    """The probe's reason first, then what prober did or could not do."""
    return "; ".join(filter(None, (payload.get("cause"), payload["reason"])))


def compose(payloads: Sequence[Mapping[str, Any]], envelope: Envelope,
            now: float) -> EmailMessage:
    """One message for all of a run's events (at least one)."""
    message = EmailMessage()
    message["Subject"] = subject(payloads, envelope.host)
    message["From"] = envelope.sender
    message["To"] = ", ".join(envelope.recipients)
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = make_msgid("prober", domain=envelope.host)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to it
    message.set_content(body(payloads, envelope.host))
    return message


@dataclass(frozen=True)
class Server:
    """Where and how to hand a message over."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None


class MailRefused(Exception):
    """prober would not hand the mail over: the password, without TLS."""


async def send(server: Server, message: EmailMessage, envelope: Envelope,
               deadline: float) -> None:
    """Hand `message` to `server` within `deadline` (time.monotonic()), or raise: TimeoutError,
    OSError, smtplib.SMTPException, MailRefused."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def exchange() -> None:
        try:
            _exchange(server, message, envelope, deadline)
        except BaseException as exc:  # handed to the awaiting run, whatever it is
            error: BaseException | None = exc
        else:
            error = None
        with contextlib.suppress(RuntimeError):  # the run's loop is closed: nobody to tell
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=exchange, name="prober-mail", daemon=True).start()
    await asyncio.wait_for(done, max(0.01, deadline - time.monotonic()))


def _exchange(server: Server, message: EmailMessage, envelope: Envelope,
              deadline: float) -> None:
    """The SMTP conversation, each socket operation given what is left of the deadline."""
    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    # local_hostname given: smtplib would otherwise ask DNS for our fully qualified name.
    with smtplib.SMTP(server.host, server.port, local_hostname=envelope.host,
                      timeout=left()) as smtp:
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            _bound(smtp, left())
            smtp.starttls(context=_tls(server.host))
            smtp.ehlo()
            encrypted = True
        else:
            encrypted = False
        if server.password is not None:
            if not encrypted:
                raise MailRefused("the mail server offers no STARTTLS; the password is "
                                  "never sent in clear")
            _bound(smtp, left())
            smtp.login(server.user or "", server.password)
        _bound(smtp, left())
        smtp.send_message(message, envelope.sender, list(envelope.recipients))


def _tls(host: str) -> ssl.SSLContext:
    """The system's CAs and the host's name checked, except for the local MTA at `localhost`
    (the default): Debian's postfix offers STARTTLS with its self-signed snakeoil certificate,
    and a mail to it never leaves the host."""
    context = ssl.create_default_context()
    if host == LOCAL_MTA:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _bound(smtp: smtplib.SMTP, seconds: float) -> None:
    if smtp.sock is not None:
        smtp.sock.settimeout(seconds)


def failure(exc: BaseException) -> str:
    """Why a mail was not sent, as it reads after "notify: mail failed: "."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, MailRefused):
        return str(exc)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "the mail server refused every recipient"
    if isinstance(exc, smtplib.SMTPResponseException):
        said = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
            else str(exc.smtp_error)
        return f"the mail server answered {exc.smtp_code} {reason(said)}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "the mail server hung up"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"STARTTLS failed: {reason(str(exc))}"
    if isinstance(exc, OSError):
        return os_reason(exc)
    return f"{type(exc).__name__}: {reason(str(exc))}"
