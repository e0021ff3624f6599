"""The unit_health kind at the CLI: systemd that cannot be asked is prober's own fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_systemd_unreachable_is_a_prober_fault(tmp_path: Path) -> None:
    """No system bus and no `systemctl` to fall back on: the target is not judged (a prober
    fault, exit 1), never counted as down, and nothing is restarted."""
    config = tmp_path / "prober.toml"
    config.write_text('[[target]]\nname = "netdata"\nunit_health = "netdata"\n')
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty),
           "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}
    done = subprocess.run(
        [sys.executable, "-m", "prober", "check", "--config", str(config), "--state",
         str(tmp_path / "state.json"), "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    [target] = json.loads(done.stdout)["targets"]
    assert (target["failure"], target["action"], target["health"]) == \
        ("prober-fault", "prober-fault", "unknown"), target
    assert target["reason"].startswith("cannot read netdata.service from systemd: "), target
