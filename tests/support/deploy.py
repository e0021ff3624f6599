"""Install prober in a sandbox as an operator would: the shipped units, a `prober` user, the
polkit rule from `prober polkit-rule`. Used by the deployment tests and by `make demo`.

The shipped unit files are copied verbatim into the sandbox's /etc/systemd/system. A drop-in
adapts them to the sandbox, and says why for each line; nothing else differs:
- DefaultDependencies=no: the sandbox masks sysinit.target (it would empty the host's /tmp);
- the config and state live in the test's work directory: the host's /etc and /var/lib are
  shared with the sandbox and must not be written (so ConditionPathExists= names that config);
- ProtectHome=read-only: this machine's Python lives under /root;
- PrivateTmp=no, only when this checkout lives under /tmp (as CI's clone may): PrivateTmp=
  would hide the venv from the service;
- output goes to a file: no journald runs in the sandbox;
- the timer's period and the watcher's WatchdogSec= may be shortened for tests.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.sandbox import REPO, Sandbox

UNITS = REPO / "units"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Installed:
    config: Path
    state: Path
    log: Path


def _under_tmp(path: Path) -> bool:
    return any(path.resolve().is_relative_to(hidden) for hidden in ("/tmp", "/var/tmp"))  # noqa: S108


def polkit_rule(config: Path) -> str:
    """What `prober polkit-rule` prints for `config`."""
    done = subprocess.run([sys.executable, "-m", "prober", "polkit-rule", "--config", str(config)],
                          capture_output=True, text=True, check=True, timeout=30)
    return done.stdout


def install(sandbox: Sandbox, config_text: str, *, period: str | None = None,
            rule_config: str | None = None, watchdog: str | None = None) -> Installed:
    """Install prober.service, prober.timer and prober-watch.service (none started).

    `rule_config`: the config the polkit rule is generated from (default: the same config).
    """
    work = sandbox.workdir
    config = work / "prober.toml"
    config.write_text(config_text)
    config.chmod(0o644)
    state_dir = work / "prober-state"
    state_dir.mkdir(exist_ok=True)
    log = work / "prober.log"
    log.touch()
    uid = sandbox.run(["id", "-u", "prober"], check=True).stdout.strip()
    sandbox.run(["chown", f"{uid}:{uid}", str(state_dir), str(log)], check=True)
    # /usr/local/bin/prober, where the shipped ExecStart= looks, only inside the sandbox
    sandbox.run(["sh", "-c", "mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin && "
                 f"ln -s {VENV_BIN / 'prober'} /usr/local/bin/prober"], check=True)
    etc = sandbox.path("/etc/systemd/system")
    for name in ("prober.service", "prober.timer", "prober-watch.service", "prober.slice"):
        (etc / name).write_text((UNITS / name).read_text())
    for service in ("prober.service", "prober-watch.service"):
        extra = f"WatchdogSec={watchdog}\n" if watchdog and service == "prober-watch.service" \
            else ""
        if _under_tmp(REPO) or _under_tmp(work):
            extra += "PrivateTmp=no\n"
        sandbox.write_unit(f"{service}.d/sandbox.conf", f"""\
[Unit]
DefaultDependencies=no
ConditionPathExists=
ConditionPathExists={config}

[Service]
Environment=PROBER_CONFIG={config}
StateDirectory=
Environment=PROBER_STATE={state_dir}/state.json
ReadWritePaths={state_dir}
ProtectHome=read-only
StandardOutput=append:{log}
StandardError=append:{log}
{extra}""", reload=False)
    timer = f"[Unit]\nDefaultDependencies=no\nConditionPathExists=\nConditionPathExists={config}\n"
    if period is not None:
        # An empty assignment resets all of the timer's triggers, not just that one.
        timer += f"\n[Timer]\nOnBootSec=\nOnBootSec=1s\nOnUnitInactiveSec={period}\n"
    sandbox.write_unit("prober.timer.d/sandbox.conf", timer, reload=False)
    sandbox.systemctl("daemon-reload")
    rule_source = config
    if rule_config is not None:
        rule_source = work / "rule-source.toml"
        rule_source.write_text(rule_config)
    sandbox.write_polkit_rule("50-prober.rules", polkit_rule(rule_source))
    return Installed(config=config, state=state_dir / "state.json", log=log)
