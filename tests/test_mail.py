"""Mail reaches a real SMTP server on loopback (aiosmtpd): one message per run with changes,
STARTTLS and AUTH with a password file, and a mail server that is down or silent never holds a
run."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prober.core.config import Notify, NotifyEvent
from prober.outputs.mail import Envelope, body, compose, subject
from prober.outputs.notify import deliver, event_payload
from tests.support.servers import Certs, answer, refused_port, serve
from tests.support.smtp_server import silent_server, smtp_server

HOST = socket.gethostname()
AT = 1_765_000_000.0


def _event(event: NotifyEvent, target: str = "caddy", reason: str = "connection refused",
           unit: str | None = "caddy.service", at: float = AT, cause: str | None = None
           ) -> dict[str, Any]:
    return event_payload(event, target, unit, reason, at, cause)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([_event(NotifyEvent.DOWN)],
                     f"[prober] caddy down on {HOST}: connection refused", id="down"),
        pytest.param([_event(NotifyEvent.DOWN),
                      _event(NotifyEvent.RESTART, reason="restarted after 3 failures")],
                     f"[prober] caddy down on {HOST}: connection refused (+1 more)",
                     id="down-then-restart-names-the-down"),
        pytest.param([_event(NotifyEvent.RECOVERED, target="db", reason="passed"),
                      _event(NotifyEvent.GIVEN_UP, reason="3 restarts did not help")],
                     f"[prober] caddy given up on {HOST}: 3 restarts did not help (+1 more)",
                     id="given-up-is-worst"),
        pytest.param([_event(NotifyEvent.RESTART_FAILED, cause="no connection within 2s",
                             reason="systemd refused")],
                     f"[prober] caddy restart failed on {HOST}: no connection within 2s; "
                     "systemd refused", id="the-cause-before-the-action"),
        pytest.param([_event(NotifyEvent.RECOVERED, reason="")],
                     f"[prober] caddy recovered on {HOST}", id="no-reason"),
        pytest.param([_event(NotifyEvent.DOWN, reason="bad\r\nBcc: x@example.org")],
                     f"[prober] caddy down on {HOST}: bad\\r\\nBcc: x@example.org",
                     id="a-target's-line-break-escaped"),
        pytest.param([_event(NotifyEvent.DOWN, reason="x" * 500)],
                     f"[prober] caddy down on {HOST}: {'x' * 77}...", id="long-reason-clipped"),
    ],
)
def test_subject_names_the_worst_event(events: list[dict[str, Any]], expected: str) -> None:
    """The subject is the line a phone shows: the worst event of the run, its target, the host
    and why, on one line."""
    assert subject(events, HOST) == expected


def test_body_lists_every_event_and_the_memory_users() -> None:
    """The body has one line per event, oldest first, and the memory users the run named."""
    events = [_event(NotifyEvent.DOWN), _event(NotifyEvent.RESTART, reason="restarted", at=AT + 2,
                                               cause="connection refused")]
    events[0]["top_memory"] = [{"name": "sidekiq.service", "bytes": 3 << 30}]
    text = body(events, HOST)
    assert text.splitlines()[:4] == [
        f"prober on {HOST}: 2 events in this run.", "",
        "2025-12-06 05:46:40 UTC  caddy (caddy.service) down: connection refused",
        "2025-12-06 05:46:42 UTC  caddy (caddy.service) restarted: connection refused; restarted",
    ]
    assert "the largest memory users: sidekiq.service (3072 MiB)" in text


def test_compose_headers() -> None:
    """The message is from and to the configured addresses, marked auto-generated."""
    envelope = Envelope("prober@web1.example.org", ("a@example.org", "b@example.org"), "web1")
    message = compose([_event(NotifyEvent.DOWN)], envelope, AT)
    assert message["From"] == "prober@web1.example.org"
    assert message["To"] == "a@example.org, b@example.org"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@web1>")


def test_one_mail_for_a_down_and_a_restart_in_one_run() -> None:
    """A run's `down` and `restart` reach the mail server as ONE message, to every recipient,
    its subject naming the down."""
    with smtp_server() as smtp:
        notify = Notify(mail_to=("ops@example.org", "me@example.org"),
                        mail_from="prober@example.org", smtp_host=("127.0.0.1", smtp.port))
        asyncio.run(deliver(notify, [
            _event(NotifyEvent.DOWN),
            _event(NotifyEvent.RESTART, reason="restarted after 3 failures", at=AT + 1)]))
    assert len(smtp.messages) == 1
    message = smtp.messages[0]
    assert message["Subject"] == f"[prober] caddy down on {HOST}: connection refused (+1 more)"
    assert smtp.recorder.envelopes == [("prober@example.org",
                                        ["ops@example.org", "me@example.org"])]
    text = message.get_content()
    assert "caddy (caddy.service) down: connection refused" in text
    assert "caddy (caddy.service) restarted: restarted after 3 failures" in text


def _check(tmp_path: Path, config: str, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "prober.toml"
    path.write_text(config)
    environ = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus",
               **(env or {})}
    return subprocess.run([sys.executable, "-m", "prober", "check", "--config", str(path),
                           "--state", str(tmp_path / "state.json"), *args],
                          capture_output=True, text=True, env=environ, timeout=60, check=False)


def _config(notify: str, url: str) -> str:
    return (f'[notify]\nmail_to = ["ops@example.org"]\n{notify}'
            f'[[target]]\nname = "web"\nurl = "{url}"\nfailure_threshold = 1\n')


def test_a_target_that_stays_down_is_mailed_once_then_on_recovery(tmp_path: Path) -> None:
    """The real CLI mails `down` once, nothing while the target stays down, then `recovered`."""
    with smtp_server() as smtp, serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{smtp.port}"\n', target.url("/health"))
        runs = [_check(tmp_path, config) for _ in range(3)]
        subjects_while_down = [m["Subject"] for m in smtp.messages]
        target.handler = answer(200, b"OK")
        runs.append(_check(tmp_path, config))
    assert [r.returncode for r in runs] == [2, 2, 2, 0], [r.stderr for r in runs]
    assert subjects_while_down == [f"[prober] web down on {HOST}: status 500, expected 2xx"]
    assert smtp.messages[-1]["Subject"].startswith(f"[prober] web recovered on {HOST}")
    assert len(smtp.messages) == 2
    assert all("notify" not in r.stderr for r in runs), [r.stderr for r in runs]


def test_a_dry_run_sends_no_mail(tmp_path: Path) -> None:
    """`check --dry-run` of a target that is down mails no one."""
    with smtp_server() as smtp, serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{smtp.port}"\n', target.url("/"))
        run = _check(tmp_path, config, "--dry-run")
    assert run.returncode == 2, run.stderr
    assert smtp.messages == []


def test_starttls_and_a_password_file(tmp_path: Path) -> None:
    """A smarthost offering STARTTLS gets the mail over TLS (its certificate checked), after a
    login with the password read from smtp_password_file, never printed."""
    certs = Certs(tmp_path)
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    with smtp_server(tls=certs.server_context(), logins={"ops": "s3cret"}) as smtp, \
            serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{smtp.port}"\nsmtp_user = "ops"\n'
                         f'smtp_password_file = "{password}"\n', target.url("/"))
        run = _check(tmp_path, config, env={"SSL_CERT_FILE": certs.ca_file})
    assert run.returncode == 2, run.stderr
    assert smtp.logins == ["ops"]
    assert [m["Subject"] for m in smtp.messages] == [
        f"[prober] web down on {HOST}: status 500, expected 2xx"]
    assert "notify" not in run.stderr and "s3cret" not in run.stderr + run.stdout


def test_a_certificate_prober_cannot_verify_gets_no_mail(tmp_path: Path) -> None:
    """A smarthost whose STARTTLS certificate is not from a trusted CA gets no mail (nor the
    password): one error line saying why."""
    certs = Certs(tmp_path)
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    with smtp_server(tls=certs.self_signed_context(), logins={"ops": "s3cret"}) as smtp, \
            serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{smtp.port}"\nsmtp_user = "ops"\n'
                         f'smtp_password_file = "{password}"\n', target.url("/"))
        run = _check(tmp_path, config, env={"SSL_CERT_FILE": certs.ca_file})
    assert run.returncode == 2, run.stderr
    assert smtp.messages == [] and smtp.logins == []
    assert "notify: mail failed: STARTTLS failed: " in run.stderr
    assert "certificate verify failed" in run.stderr


def test_the_local_mta_with_a_self_signed_certificate_gets_the_mail(tmp_path: Path) -> None:
    """At `localhost` (the default smtp_host: the host's own MTA, e.g. postfix with its
    snakeoil certificate) STARTTLS is used without checking the certificate: the mail arrives."""
    certs = Certs(tmp_path)
    with smtp_server(tls=certs.self_signed_context("localhost")) as smtp, \
            serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "localhost:{smtp.port}"\n', target.url("/"))
        run = _check(tmp_path, config)
    assert run.returncode == 2, run.stderr
    assert [m["Subject"] for m in smtp.messages] == [
        f"[prober] web down on {HOST}: status 500, expected 2xx"]
    assert "notify" not in run.stderr, run.stderr


def test_a_password_is_never_sent_without_tls(tmp_path: Path) -> None:
    """A mail server that offers no STARTTLS is not given the password: no mail, one line."""
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    with smtp_server() as smtp, serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{smtp.port}"\nsmtp_user = "ops"\n'
                         f'smtp_password_file = "{password}"\n', target.url("/"))
        run = _check(tmp_path, config)
    assert run.returncode == 2, run.stderr
    assert smtp.messages == []
    assert ("notify: mail failed: the mail server offers no STARTTLS; the password is never "
            "sent in clear") in run.stderr


def test_an_unusable_password_file_is_a_prober_fault(tmp_path: Path) -> None:
    """A password file others can write is not used: no mail, one error line naming it."""
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    password.chmod(0o666)
    with smtp_server() as smtp, serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{smtp.port}"\nsmtp_user = "ops"\n'
                         f'smtp_password_file = "{password}"\n', target.url("/"))
        run = _check(tmp_path, config)
    assert run.returncode == 2, run.stderr
    assert smtp.messages == []
    assert (f"notify: mail not sent, a prober fault: smtp_password_file {password}: writable "
            "by group or others (mode 666)") in run.stderr


def test_a_mail_server_that_never_answers_does_not_hold_the_run(tmp_path: Path) -> None:
    """A mail server that accepts the connection and never says a word: the one-shot check
    still returns (within [notify] timeout, not waiting at exit for the stuck exchange), and
    the log says why."""
    with silent_server() as port, serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{port}"\ntimeout = "1s"\n', target.url("/"))
        run = _check(tmp_path, config)
    assert run.returncode == 2, run.stderr
    assert "notify: mail failed: timed out" in run.stderr


def test_a_refused_mail_port_is_one_log_line(tmp_path: Path) -> None:
    """Nothing listening on the mail port: one error line, the run's result unchanged."""
    with serve(answer(500, b"broken")) as target:
        config = _config(f'smtp_host = "127.0.0.1:{refused_port()}"\n', target.url("/"))
        run = _check(tmp_path, config)
    assert run.returncode == 2, run.stderr
    mail_lines = [line for line in run.stderr.splitlines() if "mail" in line]
    assert len(mail_lines) == 1 and mail_lines[0].endswith(
        "notify: mail failed: connection refused"), run.stderr

