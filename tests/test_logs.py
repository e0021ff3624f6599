"""Log lines: sd-daemon priority prefixes on the journal's stream, plain lines elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.servers import refused_port


def _check(tmp_path: Path, journal: bool, *flags: str) -> list[str]:
    port = refused_port()
    config = tmp_path / "prober.toml"
    config.write_text(f'[[target]]\nname = "web"\nurl = "http://127.0.0.1:{port}/"\n'
                      'unit = "web"\nfailure_threshold = 1\n')
    log = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={tmp_path}/no-bus"
    with log.open("w") as stream:
        if journal:
            st = os.fstat(stream.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-m", "prober", *flags, "check", "--config", str(config),
                        "--state", str(tmp_path / "state.json")],
                       stdout=subprocess.DEVNULL, stderr=stream, env=env, timeout=60,
                       check=False)
    return log.read_text().splitlines()


def test_journal_stream_gets_priority_prefixes(tmp_path: Path) -> None:
    """With stderr being $JOURNAL_STREAM, each line starts with its syslog priority."""
    lines = _check(tmp_path, True)
    assert lines, "no log lines"
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<4>target=web: probe failed (refused)") for line in lines)
    assert any(line.startswith("<3>target=web unit=web.service: unit-unknown") for line in lines)


def test_terminal_gets_plain_lines(tmp_path: Path) -> None:
    """Elsewhere the lines are plain, prefixed with the program name and level."""
    lines = _check(tmp_path, False)
    assert any(line.startswith("prober: warning: target=web: probe failed") for line in lines)
    assert not any(line.startswith("<") for line in lines)


def test_quiet_shows_only_errors(tmp_path: Path) -> None:
    """-qq drops warnings and keeps errors."""
    lines = _check(tmp_path, False, "-qq")
    assert lines and all(line.startswith("prober: error: ") for line in lines), lines
