"""A real SMTP server for tests (aiosmtpd), on 127.0.0.1:0, recording each message it takes.

    with smtp_server() as smtp:                          # plain, no AUTH
        ... f'smtp_host = "127.0.0.1:{smtp.port}"' ...
        smtp.messages                                    # email.message.Message, in order
    with smtp_server(tls=certs.server_context(), logins={"ops": "s3cret"}) as smtp: ...

With `tls`, STARTTLS is offered and required before anything else; with `logins`, AUTH is
required (over TLS only) and `smtp.logins` records who logged in. Its own event loop runs in a
thread for the block, then the server is closed and the thread joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class Recorder:
    """The aiosmtpd handler: keeps every message and its envelope."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


class SmtpServer:
    """A running server: its port and what it received."""

    def __init__(self, port: int, recorder: Recorder) -> None:
        self.port = port
        self.recorder = recorder

    @property
    def messages(self) -> list[EmailMessage]:
        return self.recorder.messages

    @property
    def logins(self) -> list[str]:
        return self.recorder.logins


@contextlib.contextmanager
def smtp_server(tls: ssl.SSLContext | None = None,
                logins: Mapping[str, str] | None = None) -> Iterator[SmtpServer]:
    recorder = Recorder()

    def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and logins is not None:
            user, password = data.login.decode(), data.password.decode()
            if logins.get(user) == password:
                recorder.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    options: dict[str, Any] = {"hostname": "mail.test"}
    if tls is not None:
        options.update(tls_context=tls, require_starttls=True)
    if logins is not None:
        options.update(authenticator=authenticate, auth_require_tls=True)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(recorder, **options), "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="smtp-server")
    thread.start()
    try:
        yield SmtpServer(port, recorder)
    finally:
        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port whose connections are accepted by the kernel and never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port: int = listener.getsockname()[1]
        yield port
