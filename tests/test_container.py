"""The docker actuator against a real engine: podman's Docker-compatible API service
(tests/support/podman.py), busybox httpd containers on loopback, the real CLI.

Each test names its own containers and removes them; the engine is one per module.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from tests.support.needs import need_program
from tests.support.podman import Engine, podman_engine, wait_listening
from tests.support.processes import stop_process
from tests.support.sandbox import free_ports
from tests.support.servers import answer, hang, serve

pytestmark = pytest.mark.timeout(300)

PROBER = [sys.executable, "-m", "prober"]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with podman_engine() as running:
        yield running


@dataclass
class Stack:
    """Containers of one test, the config that watches them and the state it keeps."""

    engine: Engine
    folder: Path
    names: list[str]

    def config(self, targets: str, *, threshold: int = 2, defaults: str = "",
               docker_host: str = "") -> None:
        path = self.folder / "prober.toml"
        recorder = self.folder / "record.py"
        recorder.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n")
        path.write_text(
            f'docker_host = "{docker_host or self.engine.docker_host}"\n'
            f'textfile = "{self.folder / "metrics.prom"}"\n\n'
            f'[notify]\ncommand = ["{sys.executable}", "{recorder}", '
            f'"{self.folder / "events.jsonl"}"]\n\n'
            f'[defaults]\nfailure_threshold = {threshold}\nstartup_grace = "0s"\n'
            'confirm_interval = "0s"\ntimeout = "1s"\nretries = 0\nstop_timeout = "1s"\n'
            'restart_timeout = "30s"\n'
            f'verify_timeout = "10s"\n{defaults}\n{targets}')
        path.chmod(0o600)

    def check(self) -> tuple[int, dict[str, dict[str, Any]]]:
        done = subprocess.run(
            [*PROBER, "check", "--json", "--config", str(self.folder / "prober.toml"),
             "--state", str(self.folder / "state.json")],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode != 3, done.stderr
        report = json.loads(done.stdout)
        return done.returncode, {t["name"]: t for t in report["targets"]}

    def httpd(self, name: str, *options: str, start: bool = True) -> int:
        (port,) = free_ports(1)
        self.names.append(name)
        self.engine.httpd(name, port, *options, start=start)
        return port

    def started_at(self, name: str) -> str:
        return str(self.engine.inspect(name)["State"]["StartedAt"])

    def status(self, name: str) -> str:
        return str(self.engine.inspect(name)["State"]["Status"])


@pytest.fixture
def stack(engine: Engine, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    prefix = request.node.name.removeprefix("test_")[:40].replace("_", "-")
    made = Stack(engine, tmp_path, [])
    made.names.append(prefix)  # nothing of that name: a marker for what follows
    yield made
    engine.remove(*made.names)


def target(name: str, port: int, container: str, extra: str = "") -> str:
    return (f'[[target]]\nname = "{name}"\nurl = "http://127.0.0.1:{port}/"\n'
            f'container = "{container}"\n{extra}\n')


def test_a_frozen_container_is_restarted_at_the_threshold_and_only_it(stack: Stack) -> None:
    """A container whose process is stopped (SIGSTOP from the host) is up and silent: at
    failure_threshold runs it is restarted over the API, answering again, and the healthy
    container beside it is left alone."""
    proxy, app = stack.httpd("frozen-proxy"), stack.httpd("frozen-app")
    stack.config(target("proxy", proxy, "frozen-proxy") + target("app", app, "frozen-app"))
    proxy_started, app_started = stack.started_at("frozen-proxy"), stack.started_at("frozen-app")
    stack.engine.freeze("frozen-app")
    code, first = stack.check()
    assert (first["app"]["action"], first["app"]["health"]) == ("none", "failing"), first["app"]
    assert stack.started_at("frozen-app") == app_started
    code, second = stack.check()
    app_row = second["app"]
    assert app_row["action"] == "restart", app_row
    assert app_row["outcome"].startswith("restarted (container restarted in "), app_row
    assert app_row["outcome"].endswith("answering again"), app_row
    assert app_row["health"] == "healthy"
    assert second["proxy"]["action"] == "none"
    assert stack.started_at("frozen-app") != app_started
    assert stack.started_at("frozen-proxy") == proxy_started
    assert code == 2
    # Named as a container wherever a unit would be, `unit` keeping its meaning (the
    # textfile sorts the labels).
    assert (app_row["container"], app_row["unit"]) == ("frozen-app", None)
    metrics = (stack.folder / "metrics.prom").read_text()
    assert 'prober_restarts_total{container="frozen-app",target="app",unit=""} 1.0' in metrics
    events = [json.loads(line) for line in
              (stack.folder / "events.jsonl").read_text().splitlines()]
    restart = next(e for e in events if e["event"] == "restart")
    assert (restart["target"], restart["container"], restart["unit"]) == \
        ("app", "frozen-app", None)


def test_a_container_an_admin_stopped_stays_stopped(stack: Stack) -> None:
    """`podman stop` (as `docker stop` or `compose stop`): down, never started by prober."""
    app = stack.httpd("stopped-app")
    stack.config(target("app", app, "stopped-app"))
    stack.engine.podman("stop", "--time", "0", "stopped-app")
    for _ in range(3):
        code, targets = stack.check()
    row = targets["app"]
    assert row["action"] == "unit-not-active", row
    assert row["action_reason"].startswith("container stopped-app is exited: not starting it")
    assert stack.status("stopped-app") == "exited"
    assert code == 2


@pytest.mark.parametrize("judged", [True, False], ids=["container-health", "probe-only"])
def test_an_unhealthy_container_is_restarted_only_with_container_health(
        stack: Stack, judged: bool) -> None:
    """Its HEALTHCHECK fails (podman drives health checks by systemd timers, absent here, so
    the test runs the check itself with `podman healthcheck run`) while its HTTP answers: with
    `container_health = true` it is a failure, restarted at the threshold; without, nothing."""
    name = f"unhealthy-{'judged' if judged else 'probed'}"
    app = stack.httpd(name, "--health-cmd", "test -e /tmp/healthy", "--health-retries", "1",
                      "--health-interval", "0")
    stack.config(target("app", app, name, f"container_health = {str(judged).lower()}"),
                 threshold=1)
    stack.engine.podman("healthcheck", "run", name, check=False)
    assert stack.engine.inspect(name)["State"]["Health"]["Status"] == "unhealthy"
    started = stack.started_at(name)
    _, targets = stack.check()
    row = targets["app"]
    if judged:
        assert row["action"] == "restart", row
        assert row["reason"].startswith(f"container {name} is unhealthy: its HEALTHCHECK failed")
        assert stack.started_at(name) != started
    else:
        assert (row["action"], row["health"]) == ("none", "healthy"), row
        assert stack.started_at(name) == started


def test_a_failing_backend_container_takes_the_blame(stack: Stack) -> None:
    """The proxy fails because its backend does: the backend is restarted, the proxy's
    failure is blamed on it, and the proxy's container is left alone."""
    backend = stack.httpd("blame-backend")
    front = stack.httpd("blame-front")
    # The front's probe goes through to the backend, as a proxy's would.
    stack.config(target("backend", backend, "blame-backend")
                 + target("front", backend, "blame-front", 'depends_on = ["backend"]')
                 + target("front-own", front, "blame-front"),
                 threshold=1)
    front_started = stack.started_at("blame-front")
    stack.engine.freeze("blame-backend")
    _, targets = stack.check()
    assert targets["backend"]["action"] == "restart", targets["backend"]
    assert targets["front"]["action"] == "dependency", targets["front"]
    assert targets["front"]["action_reason"] == "its dependency backend is failing"
    assert stack.started_at("blame-front") == front_started


def test_a_recreated_container_keeps_its_history_and_budget(stack: Stack) -> None:
    """compose recreating a container (removed, created again under its name: a new id, a new
    StartedAt) keeps what prober remembers of it: its restart counts against the same
    budget, so the next freeze finds the budget spent."""
    app = stack.httpd("recreated-app")
    stack.config(target("app", app, "recreated-app", "max_restarts = 1"),
                 threshold=1, defaults='restart_window = "1h"')
    first_id = stack.engine.inspect("recreated-app")["Id"]
    stack.engine.freeze("recreated-app")
    _, targets = stack.check()
    assert targets["app"]["action"] == "restart", targets["app"]
    stack.engine.remove("recreated-app")
    stack.engine.httpd("recreated-app", app)
    assert stack.engine.inspect("recreated-app")["Id"] != first_id
    stack.engine.freeze("recreated-app")
    _, targets = stack.check()
    row = targets["app"]
    assert row["action"] == "given-up", row
    assert "1 restarts within 1h" in row["action_reason"]
    state = json.loads((stack.folder / "state.json").read_text())
    assert state["targets"]["app"]["restarts_total"] == 1


def test_the_engine_gone_mid_run_is_a_prober_fault(stack: Stack, engine: Engine) -> None:
    """The engine's socket gone while a target is down (the engine stopped, or its socket
    moved): the run ends with a clear reason, `prober-fault`, never exit 3, restarting and
    counting nothing; back again, the next run restarts as usual."""
    app = stack.httpd("gone-app")
    stack.config(target("app", app, "gone-app"), threshold=1)
    stack.engine.freeze("gone-app")
    moved = engine.socket.with_name("moved.sock")
    os.rename(engine.socket, moved)
    try:
        code, targets = stack.check()
    finally:
        os.rename(moved, engine.socket)
    row = targets["app"]
    assert row["action"] == "prober-fault", row
    assert f"no container engine answers at {engine.socket}" in row["action_reason"]
    assert code == 2  # the target is down all the same
    _, targets = stack.check()
    assert targets["app"]["action"] == "restart", targets["app"]
    wait_listening(app)


def test_an_engine_that_hangs_ends_the_run_in_time_with_a_clear_reason(tmp_path: Path) -> None:
    """An engine that takes the connection and never answers (hung, or a proxy in front of a
    dead one): the run still ends, its target `prober-fault` with the reason, never exit 3.
    (The subprocess's timeout is the guard: no time is asserted.)"""
    folder = Path(tempfile.mkdtemp(prefix="hung-"))  # a socket's path must be short
    try:
        with serve(answer(500, b"broken")) as web, \
                serve(hang(), unix_path=folder / "docker.sock"):
            stack = Stack(cast(Engine, None), tmp_path, [])
            stack.config(f'[[target]]\nname = "app"\nurl = "{web.url("/")}"\n'
                         'container = "app"\n', threshold=1,
                         docker_host=f"unix://{folder / 'docker.sock'}")
            code, targets = stack.check()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    row = targets["app"]
    assert row["action"] == "prober-fault", row
    assert f"the container engine at {folder / 'docker.sock'} did not answer GET /_ping " \
        "within 5s" in row["action_reason"]
    assert code == 2


def _proxy_block() -> str:
    """docs/operating.md's socket proxy for the engine: its ```nginx block that listens on a
    Unix socket."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "operating.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.DOTALL)
    (block,) = [b for b in blocks if "listen unix:" in b]
    return textwrap.dedent(block)


def _proxy_drop_in() -> str:
    """docs/operating.md's drop-in of nginx's that hands the proxy's socket to prober's group."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "operating.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", text, re.DOTALL)
    (block,) = [b for b in blocks if "/nginx.service.d/" in b]
    return textwrap.dedent(block)


def test_the_docs_proxy_drop_in_is_valid_systemd_and_hands_the_socket_over(
        tmp_path: Path) -> None:
    """The drop-in, on a unit of nginx's name, passes `systemd-analyze verify` without a word;
    its ExecStartPost's command, run on a stand-in for the socket, leaves it the group's to read
    and write."""
    systemd_analyze = need_program("/usr/bin/systemd-analyze", "systemd")
    drop_in = _proxy_drop_in()
    (tmp_path / "nginx.service").write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "nginx.service.d").mkdir()
    (tmp_path / "nginx.service.d" / "prober-docker.conf").write_text(drop_in)
    done = subprocess.run([systemd_analyze, "verify", str(tmp_path / "nginx.service")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")

    (command,) = [line.removeprefix("ExecStartPost=") for line in drop_in.splitlines()
                  if line.startswith("ExecStartPost=")]
    argv = shlex.split(command)
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    socket = tmp_path / "docker.sock"
    socket.touch(mode=0o600)
    group = grp.getgrnam("daemon") if os.geteuid() == 0 else grp.getgrgid(os.getegid())
    script = argv[2].replace("/run/prober-docker/docker.sock", str(socket)) \
        .replace("chgrp prober ", f"chgrp {group.gr_name} ")
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=10)
    assert (socket.stat().st_mode & 0o777, socket.stat().st_gid) == (0o660, group.gr_gid)


def test_the_docs_socket_proxy_lets_prober_restart_and_nothing_more(
        stack: Stack, engine: Engine) -> None:
    """The nginx socket proxy of docs/operating.md, in front of the real engine: prober
    restarts a frozen container through it; what prober never asks (creating a container,
    listing them, exec, images) is refused."""
    nginx = need_program("/usr/sbin/nginx", "nginx")
    app = stack.httpd("proxied-app")
    folder = Path(tempfile.mkdtemp(prefix="proxy-"))
    proxy_socket = folder / "docker.sock"
    server = (_proxy_block().replace("/run/prober-docker/docker.sock", str(proxy_socket))
              .replace("/var/run/docker.sock", str(engine.socket)))
    conf = folder / "nginx.conf"
    conf.write_text(
        f"daemon off;\nmaster_process off;\nuser root;\npid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n"
        + "".join(f"  {kind}_temp_path {folder}/{kind};\n"
                  for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + server + "}\n")
    proc = subprocess.Popen([nginx, "-p", str(folder), "-c", str(conf)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not proxy_socket.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy_socket.exists(), (folder / "error.log").read_text(errors="replace")
        stack.config(target("app", app, "proxied-app"), threshold=1,
                     docker_host=f"unix://{proxy_socket}")
        stack.engine.freeze("proxied-app")
        _, targets = stack.check()
        assert targets["app"]["action"] == "restart", targets["app"]
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(proxy_socket)),
                          base_url="http://docker/v1.40", timeout=10) as client:
            assert client.get("/_ping").status_code == 200
            assert client.get("/containers/proxied-app/json").status_code == 200
            refused = [client.post("/containers/create", json={"Image": "x"}),
                       client.get("/containers/json"),
                       client.post("/containers/proxied-app/exec", json={"Cmd": ["sh"]}),
                       client.get("/images/json"),
                       client.delete("/containers/proxied-app"),
                       client.post("/containers/proxied-app/json"),
                       client.get("/containers/proxied-app/restart")]
        assert [r.status_code for r in refused] == [403] * len(refused)
    finally:
        stop_process(proc)
        shutil.rmtree(folder, ignore_errors=True)
