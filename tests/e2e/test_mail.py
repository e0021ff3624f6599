"""Mail where a user meets it: caddy stops listening in the sealed systemd, `prober check` takes
it down and restarts it in one run, and the mail server on loopback gets ONE mail saying so."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_restart import Prober
from tests.support.e2e import refuses
from tests.support.sandbox import Sandbox, Stack
from tests.support.smtp_server import smtp_server

pytestmark = pytest.mark.e2e


def test_a_down_and_its_restart_are_one_mail(sandbox: Sandbox, stack: Stack) -> None:
    """The run that finds caddy down, restarts it and sees it recover sends one mail naming
    all three, its subject the down; the run before it (failing, not yet down) sends none."""
    prober = Prober(sandbox, stack)
    with smtp_server() as smtp:
        prober.configure(extra=f'\n[notify]\nmail_to = ["ops@example.org"]\n'
                               f'smtp_host = "127.0.0.1:{smtp.port}"\n')
        httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=5,
                   trust_env=False)
        assert refuses(f"{stack.caddy_url}/health")
        first = prober.check()
        assert first.code == 1, first.err
        assert smtp.messages == []
        second = prober.check()
        assert second.code == 2, second.err
        assert second.action("caddy") == "restart"
    assert len(smtp.messages) == 1, [m["Subject"] for m in smtp.messages]
    message = smtp.messages[0]
    assert message["Subject"].startswith("[prober] caddy down on ")
    assert message["Subject"].endswith("(+2 more)")  # the restart, and the recovery it verified
    text = message.get_content()
    assert "caddy (caddy.service) down: " in text
    assert "caddy (caddy.service) restarted" in text
    assert "caddy (caddy.service) recovered" in text, text
    assert "notify" not in second.err, second.err
