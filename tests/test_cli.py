"""The real `prober` command, run as a process against real loopback servers."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prober.shell.state import STATE_VERSION
from tests.support.e2e import wait_for
from tests.support.processes import stop_process
from tests.support.servers import Certs, Server, answer, hang, health, refused_port, serve
from tests.test_config import BAD, SPECIAL_FILES, special_config


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Prober:
    """Runs `python -m prober` with a config and a state file of the test's own."""

    tmp: Path

    @property
    def config(self) -> Path:
        return self.tmp / "prober.toml"

    @property
    def state(self) -> Path:
        return self.tmp / "state" / "state.json"

    def write(self, text: str) -> None:
        self.config.write_text(text)

    def environ(self, env: dict[str, str] | None = None) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PROBER_")}
        environ.update({"PROBER_CONFIG": str(self.config), "PROBER_STATE": str(self.state),
                        # no system bus here: unit lookups fail fast instead of hanging
                        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.tmp}/no-bus"})
        environ.update(env or {})
        return environ

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Run:
        done = subprocess.run([sys.executable, "-m", "prober", *args], capture_output=True,
                              text=True, env=self.environ(env), timeout=60, check=False)
        return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def prober(tmp_path: Path) -> Prober:
    return Prober(tmp_path)


@pytest.fixture
def web() -> Iterator[Server]:
    with serve(health()) as server:
        yield server


def _config(*targets: str, defaults: str = "") -> str:
    return f"[defaults]\ntimeout = \"1s\"\n{defaults}\n" + "\n".join(
        f"[[target]]\n{t}" for t in targets)


def test_all_passing_exits_0(prober: Prober, web: Server) -> None:
    """Every target passing gives exit 0 and status ok, with the JSON contract's fields."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"\nexpect_body = "OK"'))
    run = prober("check", "--json")
    assert run.code == 0, run.err
    data = run.json()
    assert data["status"] == "ok"
    (target,) = data["targets"]
    assert {"name", "ok", "reason", "status_code", "latency_ms", "consecutive_failures", "unit",
            "action"} <= set(target)
    assert (target["name"], target["ok"], target["status_code"], target["action"]) == \
        ("web", True, 200, "none")


@pytest.mark.parametrize(
    ("valid_days", "window", "code"),
    [(5, None, 1), (30, None, 0), (5, '"0s"', 0), (5, '"7d"', 1), (5, '"4d"', 0)],
    ids=["expiring", "far", "disabled", "7d-window", "4d-window"],
)
def test_certificate_about_to_expire_is_a_warning(prober: Prober, tmp_path: Path,
                                                   valid_days: int, window: str | None,
                                                   code: int) -> None:
    """An HTTPS certificate expiring within tls_expiry_warning (default 14d) makes the target
    warning (exit 1), named with its subject, date and days left, in text, JSON, Nagios and
    metrics; its probe still passes and nothing is restarted."""
    certs = Certs(tmp_path)
    context = certs.server_context(valid_for=datetime.timedelta(days=valid_days, hours=1))
    with serve(health(), tls=context) as server:
        setting = f"tls_expiry_warning = {window}\n" if window else ""
        prober.write(_config(
            f'name = "site"\nurl = "https://example.test:{server.port}/health"\n'
            f'resolve = "127.0.0.1"\nca_file = "{certs.ca_file}"\nunit = "caddy"\n{setting}'))
        run = prober("check", "--json", "--textfile", str(tmp_path / "m.prom"))
        nagios = prober("check", "--format", "nagios")
    assert run.code == code, run.err
    (target,) = run.json()["targets"]
    assert target["ok"] is True and target["action"] == "none"
    assert abs(target["cert_not_after"] - (datetime.datetime.now(datetime.UTC).timestamp()
                                           + (valid_days * 24 + 1) * 3600)) < 300
    metrics = (tmp_path / "m.prom").read_text()
    assert ('prober_tls_not_after_timestamp_seconds'
            '{container="",target="site",unit="caddy.service"}') in metrics
    if code == 0:
        assert target["notice"] is None and nagios.out.startswith("PROBER OK")
        return
    assert target["status"] == "warning"
    assert f"in {valid_days} days" in target["notice"] and "example.test" in target["notice"]
    assert nagios.code == 1 and "expires on" in nagios.out
    assert nagios.out.startswith("PROBER WARNING - site certificate of")


@pytest.mark.parametrize(("valid_days", "window", "code"), [
    (5, "14d", 1), (30, "14d", 0), (5, "0s", 0),
], ids=["expiring", "far", "disabled"])
def test_probe_warns_of_a_certificate_about_to_expire(prober: Prober, tmp_path: Path,
                                                      valid_days: int, window: str,
                                                      code: int) -> None:
    """`prober probe --tls-expiry-warning` exits 1, as its help says, for a certificate
    expiring within the window, and names it in text and JSON; outside the window, or with
    the warning off, a passing probe is exit 0."""
    certs = Certs(tmp_path)
    context = certs.server_context(valid_for=datetime.timedelta(days=valid_days, hours=1))
    with serve(health(), tls=context) as server:
        args = ("probe", f"https://example.test:{server.port}/health", "--resolve",
                "127.0.0.1", "--ca-file", str(certs.ca_file), "--tls-expiry-warning", window)
        text = prober(*args)
        as_json = prober(*args, "--json")
    assert (text.code, as_json.code) == (code, code), text
    notice = as_json.json()["notice"]
    if code == 0:
        assert notice is None and text.out.startswith("OK: ")
        return
    assert f"in {valid_days} days" in notice and "example.test" in notice
    assert text.out.startswith("WARNING: ") and notice in text.out


def test_threshold_walk_with_dry_run(prober: Prober) -> None:
    """Failing runs give 1 below the threshold, then 2 with would-restart, restarting nothing."""
    with serve(answer(500, b"broken")) as server:
        prober.write(_config(
            f'name = "web"\nurl = "{server.url("/health")}"\nunit = "web.service"',
            defaults="failure_threshold = 2"))
        first = prober("check", "--dry-run", "--json")
        second = prober("check", "--dry-run", "--json")
    assert first.code == 1 and first.json()["status"] == "warning"
    assert first.json()["targets"][0]["consecutive_failures"] == 1
    assert first.json()["targets"][0]["reason"] == "status 500, expected 2xx"
    assert second.code == 2 and second.json()["status"] == "critical"
    target = second.json()["targets"][0]
    assert (target["action"], target["consecutive_failures"]) == ("would-restart", 2)
    assert "would restart web.service" in target["action_reason"]


def test_down_without_systemd_is_critical_and_says_why(prober: Prober) -> None:
    """At the threshold with no way to reach systemd, the run is critical and says so."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"\nunit = "web"',
                         defaults="failure_threshold = 1"))
    run = prober("check", "--json")
    assert run.code == 2
    target = run.json()["targets"][0]
    assert target["failure"] == "refused"
    assert target["action"] == "unit-unknown"
    assert "cannot ask systemd about web.service" in target["action_reason"]


def test_the_text_table_keeps_the_cause_beside_the_action(prober: Prober) -> None:
    """At the threshold with no way to reach systemd, the text table's row says the probe's
    reason first, then what prober could not do."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"\nunit = "web"',
                         defaults="failure_threshold = 1"))
    run = prober("check")
    assert run.code == 2
    row = next(line for line in run.out.splitlines() if line.startswith("web "))
    assert "connection refused; unit-unknown: cannot ask systemd about web.service" in row


def test_the_nagios_line_stays_short_with_many_long_failures(prober: Prober, web: Server
                                                             ) -> None:
    """Many failing targets with long reasons: one clipped reason per target as room allows,
    then `+N more`, all within about 200 characters before the perfdata."""
    port = refused_port()
    failing = [f'name = "backend-{n:02d}-{"x" * 50}"\nurl = "http://127.0.0.1:{port}/"'
               for n in range(12)]
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"', *failing,
                         defaults='confirm_interval = "0s"'))
    run = prober("check", "--format", "nagios")
    assert run.code == 1
    (line,) = run.out.strip().splitlines()
    status, perfdata = line.split(" | ")
    assert len(status) <= 200, status
    assert status.startswith("PROBER WARNING - backend-00-x")
    shown = status.removeprefix("PROBER WARNING - ").split("; ")
    assert shown[-2:] == ["+10 more", "ok: web"]
    assert [p[:14] for p in shown[:-2]] == ["backend-00-xxx", "backend-01-xxx"]
    assert all(len(p) <= 80 and p.endswith("...") for p in shown[:-2])
    assert len(perfdata.split(" ")) == 13


def test_the_nagios_line_gives_each_failing_target_its_reason(prober: Prober) -> None:
    """Two failing targets: each with the probe's own reason."""
    port = refused_port()
    with serve(answer(500, b"oops")) as broken:
        prober.write(_config(f'name = "api"\nurl = "http://127.0.0.1:{port}/"',
                             f'name = "site"\nurl = "{broken.url("/")}"',
                             defaults='confirm_interval = "0s"'))
        run = prober("check", "--format", "nagios")
    status = run.out.split(" | ")[0]
    assert status == ("PROBER WARNING - api failing 1/3: connection refused; "
                      "site failing 1/3: status 500, expected 2xx")


def test_monitor_only_target_is_critical_at_threshold(prober: Prober) -> None:
    """A target without a unit reaching its threshold is critical with action no-unit."""
    port = refused_port()
    prober.write(_config(f'name = "api"\nurl = "http://127.0.0.1:{port}/"',
                         defaults="failure_threshold = 1"))
    run = prober("check")
    assert run.code == 2
    assert "no-unit" in run.out and "CRITICAL" in run.out


def test_dependency_is_blamed(prober: Prober) -> None:
    """A failing proxy in front of a failing backend is blamed on the backend."""
    with serve(answer(502, b"bad gateway")) as proxy, serve(hang()) as backend:
        prober.write(_config(
            f'name = "caddy"\nurl = "{proxy.url("/")}"\ndepends_on = ["web"]',
            f'name = "web"\nurl = "{backend.url("/health")}"',
            defaults="failure_threshold = 1"))
        run = prober("check", "--dry-run", "--json")
    actions = {t["name"]: t["action"] for t in run.json()["targets"]}
    assert actions == {"caddy": "dependency", "web": "no-unit"}
    failures = {t["name"]: t["failure"] for t in run.json()["targets"]}
    assert failures == {"caddy": "status", "web": "timeout"}


def test_target_filter(prober: Prober, web: Server) -> None:
    """--target checks only the named targets; an unknown name is a usage error."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"',
                         f'name = "down"\nurl = "http://127.0.0.1:{port}/"'))
    run = prober("check", "--json", "--target", "web")
    assert run.code == 0 and [t["name"] for t in run.json()["targets"]] == ["web"]
    bad = prober("check", "--target", "wbe")
    assert bad.code == 3
    assert bad.err.strip().splitlines() == [
        f'prober: error: no target named "wbe" in {prober.config} (hint: did you mean "web"?)']


@contextlib.contextmanager
def _lock_held_elsewhere(state: Path) -> Iterator[None]:
    """The state lock of `state`, held by another process for as long as the block runs."""
    state.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from prober.shell.state import StateStore\n"
         "with StateStore(sys.argv[1]).locked():\n"
         "    print('held', flush=True); sys.stdin.readline()", str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()


def test_lock_held_exits_0_at_once(prober: Prober, web: Server) -> None:
    """A run finding another run's lock exits 0 at once and says so, writing nothing."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    with _lock_held_elsewhere(prober.state):
        run = prober("check")
    assert run.code == 0
    assert "another prober run holds" in run.out
    assert not prober.state.exists()  # the skipped run did not write


@pytest.mark.parametrize("command", [["reset"], ["pause", "web"], ["resume"]],
                         ids=["reset", "pause", "resume"])
def test_state_commands_give_up_after_their_wait(prober: Prober, web: Server,
                                                 command: list[str]) -> None:
    """reset, pause and resume wait --wait for a lock another process holds, then give up:
    one line, exit 3, nothing written."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    with _lock_held_elsewhere(prober.state):
        run = prober(*command, "--wait", "500ms")
    assert run.code == 3
    assert run.err.strip().splitlines() == [
        f"prober: error: another prober run has held {prober.state}.lock for 500ms (hint: is "
        "a run stuck? see `prober status` and the journal)"]
    assert not prober.state.exists()


def test_if_stale(prober: Prober, web: Server) -> None:
    """--if-stale skips while the state is fresh, and runs once it is older."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    assert prober("check").code == 0
    fresh = prober("check", "--if-stale", "2m")
    assert fresh.code == 0 and "the timer is running" in fresh.out
    stale = prober("check", "--if-stale", "1ms", "--json")
    assert stale.code == 0 and stale.json()["targets"][0]["name"] == "web"
    assert len(web.requests) == 2


def test_the_heartbeat_says_a_run_happened(prober: Prober, web: Server) -> None:
    """A run that changed nothing (the watcher's) leaves state.json old and touches
    state.json.last-run: `check --if-stale` skips while that heartbeat is fresh, and `status`
    gives its time as the last run's; once both are old, `check --if-stale` runs."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    assert prober("check").code == 0
    old = time.time() - 600
    state = json.loads(prober.state.read_text())
    state["updated_at"] = old
    prober.state.write_text(json.dumps(state))
    os.utime(prober.state, (old, old))
    beat = prober.state.with_name("state.json.last-run")
    os.utime(beat)  # a run just now that wrote nothing
    skipped = prober("check", "--if-stale", "2m")
    assert skipped.code == 0 and "the timer is running" in skipped.out
    assert len(web.requests) == 1
    assert prober("status", "--json").json()["updated_at"] > old + 300  # the heartbeat's

    os.utime(beat, (old, old))
    ran = prober("check", "--if-stale", "2m", "--json")
    assert ran.code == 0 and ran.json()["targets"][0]["name"] == "web"
    assert len(web.requests) == 2


def test_corrupt_state_is_survived(prober: Prober, web: Server) -> None:
    """A corrupt state file is moved aside with a warning and the run goes on."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    prober.state.parent.mkdir(parents=True)
    prober.state.write_text("{garbage")
    run = prober("check")
    assert run.code == 0
    assert "corrupt" in run.err and "starting from fresh state" in run.err
    assert json.loads(prober.state.read_text())["version"] == STATE_VERSION


def test_unusable_state_path_exits_3(prober: Prober, web: Server) -> None:
    """A state path that cannot be created is one line and exit 3."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    blocker = prober.tmp / "blocker"
    blocker.write_text("")
    run = prober("check", "--state", str(blocker / "state.json"))
    assert run.code == 3
    assert len(run.err.strip().splitlines()) == 1
    assert "cannot create the state directory" in run.err
    assert "the probes ran, nothing was restarted" in run.err
    assert "UNKNOWN" in run.out and "web" in run.out  # the probes still ran


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("mount -t tmpfs -o size=4k tmpfs {d} && "
         "head -c 8192 /dev/zero > {d}/filler 2>/dev/null || true",
         "no space left on device"),
        ("mount -t tmpfs tmpfs {d} && mount -o remount,ro {d}", "read-only file system"),
    ],
    ids=["disk-full", "read-only"],
)
@pytest.mark.parametrize("failing", [False, True], ids=["healthy", "with-a-failure-to-record"])
def test_full_or_read_only_state_directory(prober: Prober, web: Server, setup: str,
                                           message: str, failing: bool) -> None:
    """A full or read-only state directory (real mounts, in a private mount namespace) is a
    clear error with exit 3, and the probes still run. A run with events for the outage record
    (a target failing; memory pressure on the host) fails to write it too: still one line."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("needs root to mount")
    gone = ['name = "gone"\nurl = "http://127.0.0.1:1/"\nconfirm_interval = "0s"'] * failing
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"', *gone))
    directory = prober.tmp / "state-dir"
    directory.mkdir()
    script = (setup.format(d=directory) + " && exec " + " ".join(
        [sys.executable, "-m", "prober", "check", "--state", f"{directory}/state.json"]))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PROBER_CONFIG": str(prober.config)})
    assert done.returncode == 3, done.stderr
    assert message in done.stderr.lower()
    errors = [line for line in done.stderr.splitlines() if line.startswith("prober: error:")]
    assert len(errors) == 1, done.stderr  # a failing target's warnings beside it are its own
    assert "web" in done.stdout and len(web.requests) == 1
    if failing and "space" in message:  # read-only: no lock, so nothing is written at all
        assert "results and events are not remembered" in done.stderr


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["check"], None, "no such config file"),
        (["check"], "[[target]]\nname = 1", 'name: expected a string, got an integer'),
        (["check"], "[[target", "not valid TOML"),
        (["check", "--bogus"], "", "No such option '--bogus'"),
        (["frobnicate"], "", "No such command 'frobnicate'"),
        (["check", "--if-stale", "soon"], "", '--if-stale: "soon" is not a duration'),
        (["probe", "ftp://x/"], "", '"ftp://x/": expected an http:// or https:// URL, '
         "tcp://HOST:PORT, a command (its absolute path"),
        (["probe", "http://x/", "--header", "nocolon"], "", 'expected "Name: value"'),
        (["probe", "http://x/", "--timeout", "forever"], "",
         'prober: error: --timeout: "forever" is not a duration (e.g. "30"'),
        (["probe", "http://x/", "--timeout", "0"], "", "error: --timeout: must be more than 0s"),
        (["reset", "nope"], '[[target]]\nname = "web"\nurl = "http://127.0.0.1:1/"',
         'no target named "nope"'),
        (["watch", "--listen", "9813"], "", '--listen: "9813" is not host:port'),
        (["watch", "--listen", "127.0.0.1:0"], "", "has a port outside 1-65535"),
    ],
    ids=["missing", "wrong-type", "toml", "flag", "command", "if-stale", "scheme", "header",
         "timeout", "timeout-zero", "reset-name", "listen", "listen-port"],
)
def test_bad_input_is_one_line_and_exit_3(prober: Prober, args: list[str], config: str | None,
                                          message: str) -> None:
    """Bad config, flags or arguments: exit 3 and one line on stderr, never a traceback."""
    if config is not None:
        prober.write(config)
    run = prober(*args)
    assert run.code == 3
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("prober: error: ") and message in lines[0]
    assert "Traceback" not in run.err


BAD_CONFIG_FILES = [*SPECIAL_FILES, ("not-utf8", None), ("nul-byte", None)]


@pytest.mark.parametrize("command", ["validate", "check"])
@pytest.mark.parametrize(("kind", "message"), BAD_CONFIG_FILES,
                         ids=[kind for kind, _ in BAD_CONFIG_FILES])
def test_config_file_too_deep_large_special_or_not_text_is_one_line(
        prober: Prober, command: str, kind: str, message: str | None) -> None:
    """validate and check refuse a config file nested 100,000 deep, over the cap, a FIFO, a
    device, not UTF-8 or with a NUL byte: exit 3 and one exact line, never a hang or a trace."""
    if message is None:  # a file of the bad-config corpus, its message on its first line
        source = BAD / f"{kind}.toml"
        message = source.read_bytes().splitlines()[0].decode().removeprefix("# expect: ")
        prober.config.write_bytes(source.read_bytes())
    else:
        special_config(prober.tmp, kind)
    run = prober(command)
    assert (run.code, run.out, run.err) == (3, "", f"prober: error: {prober.config}: {message}\n")


def test_status_and_reset(prober: Prober) -> None:
    """status shows the remembered failures and history; reset forgets them."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"',
                         defaults='failure_threshold = 2\nconfirm_interval = "0s"'))
    prober("check")
    prober("check")
    status = prober("status", "--json")
    assert status.code == 2
    web = status.json()["targets"][0]
    assert (web["health"], web["consecutive_failures"]) == ("down", 2)
    assert [h["event"] for h in web["history"]] == ["failing", "down"]
    text = prober("status").out
    assert "down" in text and "connection refused" in text
    assert prober("reset", "web").code == 0
    status = prober("status", "--json")
    assert status.code == 3  # not judged since the reset
    web = status.json()["targets"][0]
    assert (web["health"], web["consecutive_failures"]) == ("unknown", 0)
    assert web["history"][-1]["event"] == "reset"


def test_probe_command(web: Server, prober: Prober) -> None:
    """`prober probe` checks one URL with matchers, no state; exit 0 on pass, 2 on fail."""
    ok = prober("probe", web.url("/health"), "--expect-body", "OK", "--json")
    assert ok.code == 0 and ok.json()["ok"] is True and ok.json()["status_code"] == 200
    bad = prober("probe", web.url("/health"), "--expect-body", "nope")
    assert bad.code == 2 and bad.out.startswith("FAIL (body)")
    tcp = prober("probe", f"tcp://127.0.0.1:{web.port}")
    assert tcp.code == 0
    assert not prober.state.exists()


def test_probe_help_shows_values_as_typed_on_the_command_line(prober: Prober) -> None:
    """`prober probe --help` gives defaults and examples as a user types them after the flag,
    not as TOML: no `{}` for an empty table, no quoted list."""
    done = prober("probe", "--help")
    assert done.code == 0
    text = " ".join(done.out.split())
    assert "[default: 2xx]" in text and "(200, 3xx)" in text
    assert "{}" not in text and '["' not in text and "[default: [" not in text


@pytest.mark.parametrize(("args", "code", "out"), [
    (["--expect-output", "PONG", "--", "/bin/echo", "PONG"], 0, "OK: /bin/echo PONG: exit 0"),
    (["--expect-output", "PONG", "--", "/bin/echo", "PANG"], 2,
     'FAIL (output): /bin/echo PANG: output does not contain "PONG": PANG'),
    (["--expect-output-regex", "^P.NG$", "--", "/bin/echo", "PANG"], 0, "OK: "),
    (["--", "/bin/sh", "-c", "exit 3"], 2,
     "FAIL (exit): /bin/sh -c 'exit 3': exit 3, expected 0"),
    (["--expect-exit", "3", "--", "/bin/sh", "-c", "exit 3"], 0,
     "OK: /bin/sh -c 'exit 3': exit 3"),
    (["--env", "TOKEN=s3cret", "--expect-output", "token s3cret", "--", "/bin/sh", "-c",
      'echo "token $TOKEN"'], 0, "OK: /bin/sh -c 'echo \"token $TOKEN\"': exit 0"),
    (["--env", "TOKEN=s3cret", "--expect-output", "nope", "--", "/bin/sh", "-c",
      'test "${#TOKEN}" = 6 && echo set'], 2,
     """FAIL (output): /bin/sh -c 'test "${#TOKEN}" = 6 && echo set': output does not """
     'contain "nope": set'),
    (["--", "/nonexistent/check"], 2,
     "FAIL (exec): /nonexistent/check: cannot run /nonexistent/check: no such file or "
     "directory"),
], ids=["output", "output-missing", "regex", "exit", "expect-exit", "env", "env-on-failure",
        "not-found"])
def test_probe_runs_a_command(prober: Prober, args: list[str], code: int, out: str) -> None:
    """`prober probe ... -- /PATH ARG...` runs the command itself, no shell in between, and
    judges its exit code and output: exit 0 on pass, 2 on fail. --env reaches the command,
    and prober prints its value nowhere (what the command itself prints is its own affair)."""
    run = prober("probe", *args)
    assert (run.code, run.err) == (code, ""), run
    assert run.out.startswith(out), run.out
    if "--env" in args:
        assert "s3cret" not in run.out


def test_probe_runs_a_command_json(prober: Prober) -> None:
    """--json reports a command's probe like any other, the command as its endpoint."""
    run = prober("probe", "--json", "--expect-exit", "3", "--", "/bin/sh", "-c", "exit 3")
    assert run.code == 0, run
    assert run.json() | {"latency_ms": None} == {
        "endpoint": "/bin/sh -c 'exit 3'", "ok": True, "reason": "exit 3", "failure": None,
        "status_code": None, "latency_ms": None, "attempts": 1, "notice": None}


@pytest.mark.parametrize(("args", "message"), [
    (["--env", "NOSIGN", "--", "/bin/true"], '--env "NOSIGN": expected NAME=VALUE'),
    (["--env", "BAD NAME=x", "--", "/bin/true"],
     'env: "BAD NAME" is not an environment variable name'),
    (["--expect-exit", "300", "--", "/bin/true"], "--expect-exit: must be at most 255, got 300"),
    (["--", "bin/true"], '"bin/true": expected an http:// or https:// URL'),
], ids=["env-no-equals", "env-bad-name", "exit-range", "relative"])
def test_probe_of_a_command_refuses_bad_input(prober: Prober, args: list[str],
                                              message: str) -> None:
    """Bad --env, --expect-exit or a relative command: exit 3 and one line, nothing run."""
    run = prober("probe", *args)
    assert run.code == 3 and run.out == "", run
    assert run.err.startswith("prober: error: ") and message in run.err, run.err
    assert run.err.count("\n") == 1


def test_validate_and_version(prober: Prober, web: Server) -> None:
    """validate summarizes each target, its non-default keys and when its unit would be
    restarted, the memory-pressure hold included; --version prints the version."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"\nunit = "web"',
                         f'name = "api"\nurl = "{web.url("/api")}"\nunit = "api"\n'
                         "pressure_threshold = 0"))
    run = prober("validate")
    assert run.code == 0 and "web.service" in run.out
    assert "timeout 1s" in run.out  # a key away from its default
    assert "held up to pressure_hold 5m" in run.out and "pressure_threshold 10%" in run.out
    assert "never held under memory pressure" in run.out
    assert "(refused: probed again every 2s within the run, each repeat one run)" in run.out
    version = prober("--version")
    assert version.code == 0 and version.out.startswith("prober, version ")


def test_passwords_and_header_values_are_not_printed(prober: Prober, web: Server) -> None:
    """Passwords in URLs and header values never reach the output."""
    url = web.url("/health").replace("http://", "http://admin:hunter2@")
    prober.write(_config(f'name = "web"\nurl = "{url}"\nheaders = {{ Cookie = '
                         '"session=s3cret" }'))
    outputs = [prober("check", "--json"), prober("check"), prober("validate"),
               prober("status", "--json")]
    for run in outputs:
        assert "hunter2" not in run.out + run.err and "s3cret" not in run.out + run.err
    assert web.requests[0].header("cookie") == "session=s3cret"


def test_nagios_format(prober: Prober, web: Server) -> None:
    """--format nagios prints one status line with perfdata and keeps the exit codes."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"',
                         f"name = \"api\"\nurl = \"http://127.0.0.1:{port}/\"",
                         defaults='confirm_interval = "0s"'))
    run = prober("check", "--format", "nagios")
    assert run.code == 1
    (line,) = run.out.strip().splitlines()
    status, perfdata = line.split(" | ")
    assert status.startswith("PROBER WARNING - api failing 1/3: connection refused")
    assert status.endswith("ok: web")
    labels = [p.split("=")[0] for p in perfdata.split(" ")]
    assert labels == ["'web'", "'api'"]
    assert all(p.endswith(";;1;0") for p in perfdata.split(" "))


def test_prometheus_textfile_parses(prober: Prober, web: Server) -> None:
    """--textfile writes metrics that the official Prometheus parser reads back."""
    from prometheus_client.parser import text_string_to_metric_families

    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"\nunit = "web"',
                         f'name = "down"\nurl = "http://127.0.0.1:{port}/"',
                         defaults='confirm_interval = "0s"'))
    metrics = prober.tmp / "prober.prom"
    assert prober("check", "--textfile", str(metrics)).code == 1
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    success = {s.labels["target"]: s.value for s in families["prober_probe_success"].samples}
    assert success == {"web": 1.0, "down": 0.0}
    units = {s.labels["target"]: s.labels["unit"]
             for s in families["prober_consecutive_failures"].samples}
    assert units == {"web": "web.service", "down": ""}
    assert families["prober_run_status"].samples[0].value == 1.0
    assert "prober_restarts" in families and "prober_given_up" in families
    assert [p.name for p in prober.tmp.iterdir() if p.name.startswith(".")] == []


def test_pip_install_gives_a_working_prober(tmp_path: Path) -> None:
    """`pip install .` installs the package and a `prober` console script that runs."""
    root = Path(__file__).parent.parent
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(root)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    script = target / "bin" / "prober"
    assert script.exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    version = subprocess.run([sys.executable, str(script), "--version"], capture_output=True,
                             text=True, env=env, timeout=60, check=False, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("prober, version ")
    located = subprocess.run([sys.executable, "-c", "import prober; print(prober.__file__)"],
                             capture_output=True, text=True, env=env, timeout=60, check=False,
                             cwd=tmp_path)
    assert located.stdout.startswith(str(target))


def test_watch_runs_repeatedly_and_writes_the_textfile(prober: Prober, web: Server) -> None:
    """`prober watch` runs a check every interval, logs a summary, and updates `textfile`."""
    import time

    metrics = prober.tmp / "prober.prom"
    prober.write(f'textfile = "{metrics}"\n' +
                 _config(f'name = "web"\nurl = "{web.url("/health")}"'))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update({"PROBER_CONFIG": str(prober.config), "PROBER_STATE": str(prober.state)})
    watcher = subprocess.Popen([sys.executable, "-m", "prober", "watch", "--interval", "1s"],
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while len(web.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watcher.terminate()
        _, err = watcher.communicate(timeout=10)
    assert len(web.requests) >= 3
    assert "prober: OK: 1 ok of 1 targets" in err
    assert "prober_probe_success" in metrics.read_text()


def test_pause_and_resume(prober: Prober) -> None:
    """pause keeps a failing target from counting or being restarted, says who, until when and
    why in check, Nagios and status; resume ends it; the history records both."""
    port = refused_port()
    prober.write(_config(f'name = "web"\nurl = "http://127.0.0.1:{port}/"\nunit = "web"',
                         f'name = "db"\ntcp = "127.0.0.1:{port}"',
                         defaults="failure_threshold = 1"))
    paused = prober("pause", "web", "--for", "30m", "--reason", "upgrading Mastodon")
    assert paused.code == 0 and paused.out.startswith("paused until ") and "web" in paused.out
    run = prober("check", "--json")
    web = {t["name"]: t for t in run.json()["targets"]}["web"]
    assert (web["action"], web["status"], web["consecutive_failures"]) == \
        ("paused", "warning", 0)
    assert web["paused_reason"] == "upgrading Mastodon" and web["paused_until"] > time.time()
    nagios = prober("check", "--format", "nagios")
    assert "web down (paused" not in nagios.out and "paused until" in nagios.out
    status = prober("status", "--json").json()["targets"][0]
    assert status["paused_reason"] == "upgrading Mastodon"
    assert "paused until" in prober("status").out
    resumed = prober("resume")
    assert resumed.code == 0 and resumed.out.strip() == "resumed: web"
    assert prober("resume").out.strip() == "nothing was paused"
    history = [h["event"] for h in prober("status", "--json").json()["targets"][0]["history"]]
    assert history[-2:] == ["paused", "resumed"]
    assert prober("check", "--json").json()["targets"][0]["action"] == "unit-unknown"


def test_pause_lasts_an_hour_unless_told(prober: Prober, web: Server) -> None:
    """`pause NAME` without --for pauses for one hour from when it ran."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    before = time.time()
    assert prober("pause", "web").code == 0
    after = time.time()
    until = prober("status", "--json").json()["targets"][0]["paused_until"]
    assert before + 3600 <= until <= after + 3600


def test_resume_by_name_resumes_only_those(prober: Prober, web: Server) -> None:
    """`resume NAME` ends the pause of that target only; the others stay paused."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"',
                         f'name = "api"\nurl = "{web.url("/health")}"',
                         f'name = "db"\ntcp = "127.0.0.1:{web.port}"'))
    assert prober("pause", "--all", "--reason", "upgrading").code == 0
    resumed = prober("resume", "web", "db")
    assert resumed.code == 0 and resumed.out.strip() == "resumed: web, db"
    targets = {t["name"]: t for t in prober("status", "--json").json()["targets"]}
    assert {name: t["paused_until"] is not None for name, t in targets.items()} == \
        {"web": False, "api": True, "db": False}
    assert targets["api"]["paused_reason"] == "upgrading"


def test_pause_needs_names_or_all(prober: Prober, web: Server) -> None:
    """pause without a name or --all (or with both) is a one-line error; --all pauses all."""
    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    for args in (["pause"], ["pause", "web", "--all"], ["pause", "web", "--for", "0s"]):
        run = prober(*args)
        assert run.code == 3 and len(run.err.strip().splitlines()) == 1, run.err
    assert prober("pause", "--all").code == 0
    assert prober("check", "--json").json()["targets"][0]["action"] == "paused"


def test_pause_waits_for_a_run_holding_the_lock(prober: Prober, web: Server) -> None:
    """pause waits for the state lock a run holds, where a concurrent check skips."""
    from prober.shell.state import StateStore

    prober.write(_config(f'name = "web"\nurl = "{web.url("/health")}"'))
    assert prober("check").code == 0
    store = StateStore(str(prober.state))
    pausing = None
    try:
        with store.locked():
            skipped = prober("check")
            pausing = subprocess.Popen([sys.executable, "-m", "prober", "pause", "web"],
                                       env=prober.environ(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            wait_for(lambda: _has_open(pausing.pid, store.lock_path), 30,
                     "pause opened the lock file")
            assert pausing.poll() is None, "pause did not wait for the lock"
        _, err = pausing.communicate(timeout=60)
    finally:
        if pausing is not None:
            stop_process(pausing)
    assert skipped.code == 0 and "another prober run holds" in skipped.out
    assert pausing.returncode == 0, err
    assert prober("status", "--json").json()["targets"][0]["paused_until"] is not None


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has the file at `path` open."""
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return any(os.path.realpath(fd) == os.path.realpath(path) for fd in fds.iterdir())
    return False


def test_watch_stops_on_sigterm_mid_run_and_exits_0(prober: Prober, web: Server) -> None:
    """SIGTERM while a run waits on a hung target stops the watcher within 2 s, exit 0, and
    leaves the state file whole: valid, with every target an earlier run wrote."""
    import signal

    from prober.shell.state import from_json

    with serve(health()) as turns_hung:
        prober.write(f'[defaults]\ntimeout = "30s"\n[[target]]\nname = "web"\n'
                     f'url = "{turns_hung.url("/health")}"\n[[target]]\nname = "api"\n'
                     f'url = "{web.url("/health")}"\n')
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",
                                                                "WATCHDOG_USEC")}
        env.update({"PROBER_CONFIG": str(prober.config), "PROBER_STATE": str(prober.state)})
        watcher = subprocess.Popen([sys.executable, "-m", "prober", "watch", "--interval", "1s"],
                                   stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 20
            while not prober.state.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert prober.state.exists(), "the watcher never wrote its first run"
            turns_hung.handler = hang()
            answered = len(turns_hung.requests)  # requests after this one hang
            while len(turns_hung.requests) == answered and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(turns_hung.requests) > answered, "the watcher never probed again"
            started = time.monotonic()
            watcher.send_signal(signal.SIGTERM)
            code = watcher.wait(timeout=10)
            stopped_in = time.monotonic() - started
        finally:
            if watcher.poll() is None:
                watcher.kill()
            _, err = watcher.communicate(timeout=10)
    assert code == 0, err
    assert stopped_in < 2.0
    assert "Traceback" not in err
    state = from_json(json.loads(prober.state.read_text())).state
    assert {n: t.health.value for n, t in state.targets.items()} == \
        {"web": "healthy", "api": "healthy"}
    left = {p.name for p in prober.state.parent.iterdir()}
    left.discard("state.json.record")  # written when the host's memory is under pressure
    assert sorted(left) == ["state.json", "state.json.last-run", "state.json.lock"]  # no temp


def _free_port(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"], ids=["ipv4", "ipv6"])
def test_watch_listen_overrides_the_config(prober: Prober, web: Server, host: str) -> None:
    """`watch --listen HOST:PORT` (an IPv4 address, or an IPv6 one in brackets) serves
    /metrics there instead of where the config's `listen` says, which stays closed."""
    import httpx

    configured, given = _free_port("127.0.0.1"), _free_port(host.strip("[]"))
    prober.write(f'listen = "127.0.0.1:{configured}"\n' +
                 _config(f'name = "web"\nurl = "{web.url("/health")}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROBER_", "NOTIFY_",
                                                                    "WATCHDOG_"))}
    env.update({"PROBER_CONFIG": str(prober.config), "PROBER_STATE": str(prober.state)})
    watcher = subprocess.Popen(
        [sys.executable, "-m", "prober", "watch", "--listen", f"{host}:{given}"],
        stderr=subprocess.PIPE, text=True, env=env)
    metrics = ""
    try:
        deadline = time.monotonic() + 20
        while "prober_probe_success{" not in metrics and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                metrics = httpx.get(f"http://{host}:{given}/metrics", timeout=2,
                                    trust_env=False).text
            except httpx.ConnectError:
                continue
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{configured}/metrics", timeout=2, trust_env=False)
    finally:
        watcher.terminate()
        _, err = watcher.communicate(timeout=10)
    assert 'prober_probe_success{container="",target="web",unit=""} 1.0' in metrics, err
    assert f"on http://{host}:{given}/" in err


def _me() -> str:
    """The running user as `prober validate` names it."""
    import pwd

    return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"


def _redis(env_file: str) -> str:
    return _config('name = "redis"\ncommand = ["/bin/true"]\nunit = "redis-server"\n'
                   f'env_file = "{env_file}"\n', defaults="failure_threshold = 1")


def test_a_missing_env_file_is_a_prober_fault_in_every_output(prober: Prober,
                                                             tmp_path: Path) -> None:
    """An env_file that does not exist (a typo): `validate` says the file cannot be read now;
    every `check` is a warning (exit 1) whose target shows `prober-fault` in the text, JSON,
    Nagios, `status` and the metrics, never down, however many runs."""
    missing = tmp_path / "redis.env"
    prober.write(_redis(str(missing)))
    validate = prober("validate")
    assert validate.code == 0, validate.err
    assert (f'  target "redis": env_file {missing}: no such file or directory: NOT usable by '
            f"{_me()} now") in validate.out
    textfile = tmp_path / "m.prom"
    for _ in range(3):
        run = prober("check", "--json", "--textfile", str(textfile))
        assert run.code == 1, run.err
        (target,) = run.json()["targets"]
        assert (target["failure"], target["action"], target["status"], target["health"],
                target["consecutive_failures"]) == ("prober-fault", "prober-fault", "warning",
                                                    "unknown", 0)
        assert target["reason"] == f"env_file {missing}: no such file or directory"
    text = prober("check")
    assert text.code == 1 and "prober-fault" in text.out and "WARNING: 1 warning" in text.out
    nagios = prober("check", "--format", "nagios")
    assert nagios.code == 1
    assert nagios.out.startswith("PROBER WARNING - redis unknown (prober-fault): env_file ")
    assert f"target=redis: not judged, a prober fault: env_file {missing}: no such file" in \
        text.err
    status = prober("status")
    assert "unknown (prober fault)" in status.out
    (entry,) = prober("status", "--json").json()["targets"]
    assert entry["prober_fault"] is True and entry["history"] == []
    assert ('prober_target_prober_fault'
            '{container="",target="redis",unit="redis-server.service"} 1.0'
            in textfile.read_text())
    assert 'prober_target_down{container="",target="redis",unit="redis-server.service"} 0.0' in \
        textfile.read_text()


@pytest.mark.parametrize(("content", "mode", "problem"), [
    ("REDISCLI_AUTH=x\n", 0o666, "writable by group or others (mode 666)"),
    ("LD_PRELOAD=/tmp/evil.so\n", 0o600,
     "line 1: LD_PRELOAD chooses code that programs load; refused"),
], ids=["world-writable", "ld-preload"])
def test_an_unsafe_env_file_is_refused_by_validate_and_check(
        prober: Prober, tmp_path: Path, content: str, mode: int, problem: str) -> None:
    """A world-writable env_file, or one that sets LD_PRELOAD, is never used: `validate` says
    why, and `check` reports a prober fault without running the command."""
    env_file = tmp_path / "redis.env"
    env_file.write_text(content)
    env_file.chmod(mode)
    prober.write(_redis(str(env_file)))
    validate = prober("validate")
    assert f"env_file {env_file}: {problem}: NOT usable by" in validate.out
    run = prober("check", "--json")
    assert run.code == 1
    assert run.json()["targets"][0]["reason"] == f"env_file {env_file}: {problem}"


def test_a_readable_env_file_is_said_so_by_validate(prober: Prober, tmp_path: Path) -> None:
    """`validate` says, per file the config names, that the running user can read it now."""
    env_file = tmp_path / "redis.env"
    env_file.write_text("REDISCLI_AUTH=x\n")
    prober.write(_redis(str(env_file)))
    validate = prober("validate")
    assert validate.code == 0
    assert f'target "redis": env_file {env_file}: readable by {_me()} now' in validate.out


def test_a_credential_name_needs_the_credentials_directory(prober: Prober,
                                                           tmp_path: Path) -> None:
    """A credential name with no $CREDENTIALS_DIRECTORY is one error line and exit 3, for
    `validate` and `check`, never a file read from the current directory."""
    (tmp_path / "redis.env").write_text("REDISCLI_AUTH=x\n")
    prober.write(_redis("redis.env"))
    environ = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    environ["PROBER_STATE"] = str(prober.state)
    for command in ("validate", "check"):
        done = subprocess.run(
            [sys.executable, "-m", "prober", command, "--config", str(prober.config)],
            capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=60, check=False)
        assert done.returncode == 3 and done.stdout == ""
        assert done.stderr == (
            f'prober: error: {prober.config}: target "redis": env_file: "redis.env" is a '
            "credential name, but $CREDENTIALS_DIRECTORY is not set (hint: give an absolute "
            "path, or run prober under systemd with LoadCredential=)\n")


def test_validate_says_whether_the_token_file_is_readable(prober: Prober, web: Server,
                                                          tmp_path: Path) -> None:
    """`validate` names [notify] token_file too, and whether the running user can read it."""
    token = tmp_path / "hook-token"
    prober.write(f'[notify]\nwebhook = "{web.url("/hook")}"\ntoken_file = "{token}"\n'
                 + _config(f'name = "web"\nurl = "{web.url("/health")}"'))
    user = _me()
    assert (f"  [notify]: token_file {token}: no such file or directory: NOT usable by {user} "
            "now") in prober("validate").out
    token.write_text("t0ken\n")
    validate = prober("validate")
    assert f"  [notify]: token_file {token}: readable by {user} now" in validate.out
    assert "t0ken" not in validate.out
