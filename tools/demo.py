"""`make demo`: the 2018-08-11 outage replayed in a sealed systemd, and prober fixing it.

caddy (Debian's) proxies to a Mastodon stand-in, both systemd units. prober is installed as an
operator would: the shipped prober.service and prober.timer, running as the `prober` user,
allowed by the polkit rule that `prober polkit-rule` prints. Then caddy stops listening, as it
did under memory pressure: the process stays, systemd says `active (running)`, connections are
refused.
The timer-driven prober notices, restarts caddy, and the site answers again. A timeline is
printed; everything is cleaned up afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.deploy import install
from tests.support.e2e import new_workdir
from tests.support.sandbox import Sandbox, Stack, missing_requirements, start_stack

PERIOD = 5  # seconds between runs; the shipped timer says 30
THRESHOLD = 3


def config(stack: Stack) -> str:
    return f"""\
# examples/mastodon.toml, pointed at the sandbox's ports
[defaults]
timeout = "2s"
failure_threshold = {THRESHOLD}
startup_grace = "5s"
cooldown = "1m"
max_restarts = 3
restart_window = "1h"

[[target]]
name = "caddy"
url = "{stack.caddy_url}/health"
expect_body = "OK"
unit = "{stack.caddy_unit}"
depends_on = ["web", "streaming"]

[[target]]
name = "web"
url = "{stack.backend_url}/health"
expect_body = "OK"
unit = "{stack.backend_unit}"

[[target]]
name = "streaming"
url = "{stack.backend_url}/api/v1/streaming/health"
expect_body = "OK"
"""


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, text: str) -> None:
        sys.stdout.write(f"{time.monotonic() - self.start:7.1f}s  {text}\n")
        sys.stdout.flush()


def site_answers(stack: Stack) -> bool:
    try:
        response = httpx.get(f"{stack.caddy_url}/health", timeout=1.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text == "OK"


def replay(box: Sandbox, timeline: Timeline, budget: float) -> bool:
    stack = start_stack(box)
    installed = install(box, config(stack), period=f"{PERIOD}s")
    rule = box.path("/etc/polkit-1/rules.d/50-prober.rules").read_text()
    units = rule[rule.index("var restart"):].splitlines()[0].strip()
    timeline.say(f"caddy {_caddy_version()} -> Mastodon stand-in, as units of a sealed systemd")
    timeline.say("prober installed as shipped: units/prober.service + units/prober.timer, "
                 f"User=prober, polkit rule: {units}")
    timeline.say(f"timer period {PERIOD}s for the demo (shipped: 30s), failure_threshold "
                 f"{THRESHOLD}")
    box.systemctl("start", "prober.timer")
    _wait(installed.state.exists, 20)
    timeline.say(f"site answers through caddy: {'yes' if site_answers(stack) else 'NO'}; "
                 "first prober run: all targets healthy")

    caddy_pid = box.main_pid(stack.caddy_unit)
    # As in 2018: caddy stops listening and does not crash (its servers unloaded over its
    # admin API). A refused connection means broken, so prober never holds this restart,
    # whatever the host's memory pressure.
    httpx.post(f"{stack.admin_url}/load", json=stack.empty_config, timeout=5, trust_env=False)
    down_at = time.monotonic()
    state = box.systemctl("show", "-P", "ActiveState", stack.caddy_unit).stdout.strip()
    sub = box.systemctl("show", "-P", "SubState", stack.caddy_unit).stdout.strip()
    timeline.say(f"caddy stopped listening (pid {caddy_pid} still up), as in 2018; "
                 f"systemd says: {state} ({sub}); site answers: "
                 f"{'yes' if site_answers(stack) else 'no'}")

    seen_runs: set[float] = set()
    log_seen = 0
    deadline = time.monotonic() + budget
    fixed_at = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        log_seen = _report_log(installed.log, log_seen, timeline)
        _report_run(installed.state, seen_runs, timeline)
        if box.main_pid(stack.caddy_unit) not in (0, caddy_pid) and site_answers(stack):
            fixed_at = time.monotonic()
            break
    if fixed_at is None:
        timeline.say("caddy was NOT restarted in time: see the prober log below")
        sys.stdout.write(installed.log.read_text())
        return False
    time.sleep(0.5)
    _report_log(installed.log, log_seen, timeline)
    timeline.say(f"site answers again through caddy (new pid {box.main_pid(stack.caddy_unit)})")
    box.systemctl("stop", "prober.timer")
    result = box.systemctl("show", "-P", "Result", "prober.service").stdout.strip()
    outage = fixed_at - down_at
    sys.stdout.write(
        f"\noutage: {outage:.1f}s, ended by prober without a human (2018: 2h37m, until someone "
        "woke up)\n"
        f"prober.service result: {result} (exit 2 = 'a restart happened' is a report, not a "
        "failure)\n\n`prober status` afterwards:\n")
    status = box.run([sys.executable, "-m", "prober", "status", "--config",
                      str(installed.config), "--state", str(installed.state)])  # exits as check
    sys.stdout.write(status.stdout + "\n")
    return True


def _caddy_version() -> str:
    done = subprocess.run(["caddy", "version"], capture_output=True, text=True, check=False,
                          timeout=10)
    return done.stdout.split()[0] if done.stdout else "?"


def _wait(predicate: object, within: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.2)


def _report_run(state_file: Path, seen: set[float], timeline: Timeline) -> None:
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return
    updated = state.get("updated_at")
    if updated is None or updated in seen:
        return
    seen.add(updated)
    caddy = state["targets"].get("caddy", {})
    if caddy.get("last_ok") is False:
        timeline.say(f"prober run (timer): caddy {caddy['health']} "
                     f"{caddy['consecutive_failures']}/{THRESHOLD}: {caddy['last_reason']}")


def _report_log(log: Path, seen: int, timeline: Timeline) -> int:
    lines = log.read_text().splitlines()
    for line in lines[seen:]:
        if line.startswith("prober: ") and "probe failed" not in line:
            timeline.say(f"prober log: {line.removeprefix('prober: ')}")
    return len(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0,
                        help="seconds allowed for prober to fix the outage")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    missing = missing_requirements()
    if missing:
        sys.stderr.write("demo: this machine lacks: " + "; ".join(missing) + "\n")
        return 1
    sys.stdout.write("prober demo: the 2018-08-11 chitter.xyz outage (caddy up but not "
                     "answering), replayed\n\n")
    workdir = new_workdir("demo")
    timeline = Timeline()
    try:
        with Sandbox(workdir, users=["prober"]) as box:
            timeline.say(f"sealed systemd booted in {box.boot_seconds:.2f}s "
                         "(PID 1 of its own namespaces, own system bus and polkit)")
            ok = replay(box, timeline, args.budget)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write("demo: " + ("prober fixed the outage." if ok else "FAILED.") +
                     " Sandbox stopped and removed.\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
