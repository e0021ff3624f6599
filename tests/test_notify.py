"""Notifications reach a real local webhook receiver and a real command, with secrets kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from prober.core.config import Notify, NotifyEvent, parse_config
from prober.core.errors import ConfigError
from prober.core.tracker import Change, Event, Transition
from prober.outputs.notify import deliver, event_payload, payloads
from tests.support.servers import Server, answer, flaky, serve, serving


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1:0 recording (headers, JSON body) of each POST."""

    def __init__(self, status: int = 204) -> None:
        self.received: list[tuple[dict[str, str], Any]] = []
        self.times: list[float] = []  # time.monotonic() of each POST's arrival
        self.status = status
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        self.server.times.append(time.monotonic())
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        self.server.received.append((dict(self.headers.items()), body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiving(status: int = 204) -> Iterator[Receiver]:
    with serving(Receiver(status)) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as server:
        yield server


def _check(tmp_path: Path, config: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "prober.toml"
    path.write_text(config)
    environ = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus",
               **(env or {})}
    return subprocess.run([sys.executable, "-m", "prober", "check", "--config", str(path),
                           "--state", str(tmp_path / "state.json")],
                          capture_output=True, text=True, env=environ, timeout=60, check=False)


def _flip(server: Server, status: int) -> None:
    server.handler = answer(status, b"OK" if status == 200 else b"broken")


def test_down_and_recovered_events_reach_webhook_and_command(tmp_path: Path,
                                                             receiver: Receiver) -> None:
    """A monitor-only target that goes down then passes sends `down`, then `recovered`, to
    both destinations."""
    out = tmp_path / "events.jsonl"
    script = tmp_path / "record.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hook-token").write_text("t0ken\n")
    with serve(answer(500, b"broken")) as server:
        config = (
            "[notify]\n"
            f'command = ["{sys.executable}", "{script}", "{out}"]\n'
            f'webhook = "{receiver.url}"\n'
            'token_file = "hook-token"\n'
            'headers = { "X-Team" = "ops" }\n'
            "[[target]]\n"
            f'name = "web"\nurl = "{server.url("/health")}"\nfailure_threshold = 1\n'
        )
        env = {"CREDENTIALS_DIRECTORY": str(creds)}
        first = _check(tmp_path, config, env)
        _flip(server, 200)
        second = _check(tmp_path, config, env)
    assert (first.returncode, second.returncode) == (2, 0), first.stderr + second.stderr
    assert [body["event"] for _, body in receiver.received] == ["down", "recovered"]
    headers, body = receiver.received[-1]
    assert body["target"] == "web" and body["unit"] is None
    assert headers["Authorization"] == "Bearer t0ken" and headers["X-Team"] == "ops"
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event"] for e in events] == ["down", "recovered"]
    assert "t0ken" not in first.stderr + second.stderr + first.stdout + second.stdout


@pytest.mark.parametrize(
    ("event", "cause"),
    [(Event.DOWN, None), (Event.RESTART, "no connection within 2s"),
     (Event.RESTART_FAILED, "no connection within 2s"),
     (Event.GIVEN_UP, "no connection within 2s"), (Event.RECOVERED, None)],
)
def test_an_action_carries_the_probe_reason_beside_its_own(event: Event, cause: str | None
                                                            ) -> None:
    """A restart, a failed one or giving up carries the probe's reason as `cause` beside its
    own `reason`; a down's reason is already the probe's, a recovery has none to carry."""
    config = parse_config({"target": [{"name": "caddy", "url": "http://127.0.0.1:1/",
                                       "unit": "caddy.service"}]})
    change = Change("caddy", Transition(1.0, event, "what prober did"))
    (payload,) = payloads([change], config, {"caddy": "no connection within 2s"})
    assert (payload["event"], payload["cause"], payload["reason"]) == \
        (event.value, cause, "what prober did")


@pytest.mark.parametrize("problem", ["missing", "world-writable"])
def test_unusable_token_file_sends_no_webhook(tmp_path: Path, receiver: Receiver,
                                              problem: str) -> None:
    """A token_file that is missing or writable by others is a prober fault: the webhook is not
    called without its token, one error line says why, the command still gets the event and
    the run's result is unchanged."""
    token = tmp_path / "hook-token"
    if problem == "world-writable":
        token.write_text("t0ken\n")
        token.chmod(0o666)
    out = tmp_path / "events.jsonl"
    script = tmp_path / "record.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n")
    with serve(answer(500, b"broken")) as server:
        run = _check(tmp_path, (
            f'[notify]\ncommand = ["{sys.executable}", "{script}", "{out}"]\n'
            f'webhook = "{receiver.url}"\ntoken_file = "{token}"\n'
            f'[[target]]\nname = "web"\nurl = "{server.url("/")}"\nfailure_threshold = 1\n'))
    assert run.returncode == 2, run.stderr
    assert receiver.received == []
    assert [json.loads(line)["event"] for line in out.read_text().splitlines()] == ["down"]
    reason = "no such file or directory" if problem == "missing" else \
        "writable by group or others (mode 666)"
    assert f"notify: webhook not sent, a prober fault: token_file {token}: {reason}" in \
        run.stderr


def test_failing_webhook_is_logged_and_does_not_fail_the_run(tmp_path: Path) -> None:
    """A webhook that cannot be reached is logged; the run's result is unchanged."""
    with serve(answer(500, b"broken")) as server, serve(answer(500)) as hook:
        config = (
            f'[notify]\nwebhook = "{hook.url("/hook")}"\ntimeout = "1s"\n'
            f'[[target]]\nname = "web"\nurl = "{server.url("/")}"\nfailure_threshold = 1\n'
        )
        _check(tmp_path, config)
        _flip(server, 200)
        run = _check(tmp_path, config)
    assert run.returncode == 0
    assert "notify: webhook failed: the webhook answered 500" in run.stderr


def test_down_is_sent_once_per_outage(tmp_path: Path, receiver: Receiver) -> None:
    """A target that stays down over several runs sends one `down`, not one per run."""
    with serve(answer(500, b"broken")) as server:
        config = (f'[notify]\nwebhook = "{receiver.url}"\n'
                  f'[[target]]\nname = "web"\nurl = "{server.url("/")}"\n'
                  'failure_threshold = 2\n')
        for _ in range(4):
            _check(tmp_path, config)
    assert [body["event"] for _, body in receiver.received] == ["down"]


def test_webhook_is_retried_with_backoff_until_it_takes_the_event(tmp_path: Path) -> None:
    """A webhook that fails twice is tried again until it takes the event, and the run says
    nothing of it."""
    with serve(answer(500, b"broken")) as server, serve(flaky(2)) as hook:
        config = (
            f'[notify]\nwebhook = "{hook.url("/hook")}"\ntimeout = "3s"\n'
            f'[[target]]\nname = "web"\nurl = "{server.url("/")}"\nfailure_threshold = 1\n'
        )
        run = _check(tmp_path, config)
    assert run.returncode == 2 and "notify" not in run.stderr, run.stderr
    assert len(hook.requests) == 3


# Scheduling slack for a loaded machine, on top of the configured timeout.
_SLACK = 0.5


def test_webhook_attempts_all_stay_within_the_timeout(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    """A webhook that always fails is tried with backoff, every attempt within [notify]
    timeout, and given up on by the retry policy itself, with the webhook's last answer: not
    cut off by deliver's backstop ("timed out")."""
    timeout = 2.0
    with receiving(503) as dead:
        notify = Notify(webhook=dead.url, timeout=timeout)
        payload = event_payload(NotifyEvent.DOWN, "web", None, "refused", time.time())
        started = time.monotonic()
        asyncio.run(deliver(notify, [payload]))
        returned = time.monotonic() - started
    offsets = [at - started for at in dead.times]
    assert len(offsets) >= 3, offsets  # retried, with backoff
    assert all(offset < timeout for offset in offsets), offsets
    assert returned < timeout + _SLACK, (returned, offsets)
    assert "notify: webhook failed: the webhook answered 503" in caplog.text


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('command = "alert"', 'command: expected a list like'),
        ('command = ["alert"]', 'command: "alert" must be an absolute path'),
        ('timeout = "1s"', 'set "command", "webhook" or "mail_to" (or several)'),
        ('webhook = "ftp://x/"', 'webhook: "ftp://x/" must start with http://'),
        ('command = ["/bin/true"]\nevents = ["exploded"]', 'events: "exploded" is not one of'),
        ('command = ["/bin/true"]\ntoken_file = "x"', 'token_file: only applies with "webhook"'),
        ('command = ["/bin/true"]\nwebhok = "http://x/"', 'did you mean "webhook"?'),
        ('mail_to = ["root"]', 'mail_to: "root" is not a mail address'),
        ('mail_to = "ops@example.org"', "mail_to: expected a list of mail addresses"),
        ("mail_to = []", "mail_to: expected at least one mail address"),
        ('mail_to = ["a@b.org\\nBcc: c@d.org"]', "mail_to: \"a@b.org\\nBcc: c@d.org\" is not"),
        ('mail_to = ["a@b.org"]\nsmtp_host = "mail.example.org"',
         'smtp_host: "mail.example.org" is not host:port'),
        ('mail_to = ["a@b.org"]\nsmtp_user = "ops"',
         'smtp_user: needs "smtp_password_file" too'),
        ('mail_to = ["a@b.org"]\nsmtp_password_file = "/etc/prober/smtp"',
         'smtp_password_file: needs "smtp_user" too'),
        ('command = ["/bin/true"]\nmail_from = "p@b.org"',
         'mail_from: only applies with "mail_to"'),
        ('mail_to = ["a@b.org"]\nmail_from = "prober"',
         'mail_from: "prober" is not a mail address'),
    ],
)
def test_bad_notify_tables(table: str, message: str) -> None:
    """Bad [notify] tables are rejected with one line naming the key."""
    import tomllib

    data = tomllib.loads(f'[notify]\n{table}\n[[target]]\nname = "a"\nurl = "http://x/"\n')
    with pytest.raises(ConfigError, match="notify") as caught:
        parse_config(data, "p.toml")
    assert message in str(caught.value)
