"""The plug-in contract: an actuator is one module plus a line in the registry.

`toy` below is such a module, kept in this test: a target that sets `toy = "NAME"` is restarted
through it, by handing the restart to a loopback server's handler (the thing it "restarts").
It is registered only by adding it to `prober.actuators.ACTUATORS`, and then loads from TOML,
shows in `validate`, is asked for its facts and restarts through `prober check`, and is held to
the policy's "never start what an admin stopped", with no other prober module changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import pytest

import prober.actuators
from prober.actuators import polkit
from prober.core.actuator import ActuatorKind, Facts, RestartResult, Running
from prober.core.config import Config, Target
from prober.core.errors import ConfigError
from prober.core.keys import Key, Shape, absolute_path, typed
from prober.io.configfiles import load_config
from prober.shell.cli import run
from tests.support.servers import Server, answer, serve

# --- the toy actuator: what a prober/actuators/toy.py would hold ------------------------------


@dataclass
class Toys:
    """What the toy manager runs: each name's state and the server it serves from."""

    running: dict[str, Running] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    restarted: list[str] = field(default_factory=list)
    failing: dict[str, str] = field(default_factory=dict)  # its own health check's reason


TOYS = Toys()


class ToyActuator:
    async def facts(self, target: Target) -> Facts:
        name = target.unit or ""
        running = TOYS.running.get(name, Running.RUNNING)
        return Facts(name, running, f"toy {name} is {running}", since=0.0,
                     failing=TOYS.failing.get(name, ""))

    async def restart(self, target: Target) -> RestartResult:
        name = target.unit or ""
        TOYS.restarted.append(name)
        TOYS.servers[name].handler = answer(200)
        TOYS.failing.pop(name, None)
        return RestartResult(True, "toy restarted")

    async def close(self) -> None:
        return None


def toy_name(value: object) -> str:
    return typed(value, str, "a toy's name")


def grants(config: Config, user: str) -> str:
    return ""


TOY = ActuatorKind(
    name="toy",
    keys=(Key("toy", Shape.NAME, toy_name, "toy to restart"),),
    make=ToyActuator, grants=grants,
    top_keys=(Key("toy_socket", Shape.PATH, absolute_path, "where the toy manager listens",
                  default="/run/toy.sock"),),
)

# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The one line in the registry."""
    systemd = replace(prober.actuators.ACTUATORS[0], make=_no_systemd)
    monkeypatch.setattr(prober.actuators, "ACTUATORS", (systemd, TOY))
    monkeypatch.setattr("tests.test_actuators.TOYS", Toys())
    logger = logging.getLogger("prober")  # run() points it at capsys's stderr: put it back
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def _no_systemd() -> ToyActuator:
    raise AssertionError("systemd is asked nothing here: no target of its is down")


@pytest.fixture
def broken() -> Iterator[Server]:
    """The toy's service: answers 500 until the toy restarts it."""
    with serve(answer(500, b"broken")) as server:
        TOYS.servers["toy-web"] = server
        yield server


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prober.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def config_of(server: Server, extra: str = "") -> str:
    return ('[defaults]\nfailure_threshold = 1\nstartup_grace = "0s"\nconfirm_interval = "0s"\n'
            'verify_timeout = "2s"\n\n'
            f'[[target]]\nname = "web"\nurl = "{server.url("/")}"\ntoy = "toy-web"\n{extra}\n'
            f'[[target]]\nname = "caddy"\nurl = "{server.url("/")}"\nunit = "caddy"\n'
            'failure_threshold = 3\n')


def check(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
          ) -> tuple[int, dict[str, dict[str, object]]]:
    code = run(["check", "--json", "--config", str(path), "--state",
                str(tmp_path / "state.json")])
    report = json.loads(capsys.readouterr().out)
    return code, {t["name"]: t for t in report["targets"]}


def test_loads_from_toml(tmp_path: Path, broken: Server) -> None:
    """Its selector names what it restarts; systemd's targets are unchanged beside it, and
    systemd's keys in [defaults] reach only them."""
    text = config_of(broken).replace("[defaults]\n", '[defaults]\nbus = "user"\n')
    web, caddy = load_config(str(write_config(tmp_path, text))).targets
    assert (web.unit, web.actuator, web.actuation) == ("toy-web", "toy", ())
    assert (caddy.unit, caddy.actuator) == ("caddy.service", "systemd")
    assert caddy.actuation == (("bus", "user"),)


def test_its_top_level_key_reaches_its_targets(tmp_path: Path, broken: Server) -> None:
    """A top-level key of its own (where its manager listens) is read once and reaches its
    targets alone, with their other keys."""
    text = 'toy_socket = "/run/toys.sock"\n' + config_of(broken)
    web, caddy = load_config(str(write_config(tmp_path, text))).targets
    assert web.actuation == (("toy_socket", "/run/toys.sock"),)
    assert caddy.actuation == ()


def test_validate_shows_it(tmp_path: Path, broken: Server,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` names what it restarts and through which actuator."""
    assert run(["validate", "--config", str(write_config(tmp_path, config_of(broken)))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  web: http {broken.url('/')} (restarts toy-web through toy)" in lines
    assert f"  caddy: http {broken.url('/')} (restarts caddy.service)" in lines


@pytest.mark.parametrize(("extra", "message"), [
    ('unit = "web"', 'set either "unit" or "toy", not both'),
    ('toyy = "x"', 'toyy: unknown key (hint: did you mean "toy"?)'),
    ('bus = "user"', 'bus: only applies to targets with "unit"'),
    ('toy_socket = "/run/x.sock"', 'toy_socket: unknown key'),
], ids=["two-actuators", "did-you-mean", "another-actuators-key", "top-level-key"])
def test_its_keys_are_checked(tmp_path: Path, broken: Server, extra: str,
                              message: str) -> None:
    """A target has one actuator; a misspelt key of its gets "did you mean"; systemd's `bus`
    is systemd's alone; its top-level key is set at the top only."""
    path = write_config(tmp_path, config_of(broken, extra))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert message in str(caught.value)


def _toy_needs_no_signal(target: Target) -> str | None:
    if target.policy.signal_before_restart:
        return "signal_before_restart: a toy has no process to signal\n(it is a toy)"
    return None


@pytest.mark.parametrize("command", ["validate", "check"])
def test_its_check_refuses_a_target_at_load(
        tmp_path: Path, broken: Server, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], command: str) -> None:
    """Its own check of a target's keys together runs when the config loads: what it says is
    one line naming the file and the target, and exit 3; its other targets and systemd's are
    not asked."""
    systemd = prober.actuators.ACTUATORS[0]
    monkeypatch.setattr(prober.actuators, "ACTUATORS",
                        (systemd, replace(TOY, check=_toy_needs_no_signal)))
    fine = write_config(tmp_path, config_of(broken).replace(
        'unit = "caddy"', 'unit = "caddy"\nsignal_before_restart = "SIGQUIT"'))
    assert run(["validate", "--config", str(fine)]) == 0
    capsys.readouterr()
    path = write_config(tmp_path, config_of(broken, 'signal_before_restart = "SIGQUIT"'))
    assert run([command, "--config", str(path), "--state", str(tmp_path / "state.json")]
               if command == "check" else [command, "--config", str(path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'prober: error: {path}: target "web": signal_before_restart: a toy has '
                   "no process to signal\\n(it is a toy)"], err
    assert TOYS.restarted == []


def test_check_restarts_through_it_at_the_threshold(
        tmp_path: Path, broken: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """Down at the threshold, the target is restarted through its own actuator, and only it;
    systemd is never asked (its target is below its threshold)."""
    code, targets = check(write_config(tmp_path, config_of(broken)), tmp_path, capsys)
    web = targets["web"]
    # Named under its own selector: `unit` stays systemd's.
    assert (web["action"], web["toy"], web["unit"], web["health"]) == \
        ("restart", "toy-web", None, "healthy"), web
    assert web["outcome"] == "restarted (toy restarted); answering again"
    assert targets["caddy"]["action"] == "none"
    assert TOYS.restarted == ["toy-web"]
    assert code == 2


def test_never_starts_what_an_admin_stopped(
        tmp_path: Path, broken: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """Its facts say stopped: the policy starts nothing, and the run is critical."""
    TOYS.running["toy-web"] = Running.STOPPED
    code, targets = check(write_config(tmp_path, config_of(broken)), tmp_path, capsys)
    web = targets["web"]
    assert web["action"] == "unit-not-active", web
    assert str(web["action_reason"]).startswith("toy toy-web is stopped: not starting it")
    assert TOYS.restarted == []
    assert code == 2


def test_the_polkit_rule_is_systemds_alone(tmp_path: Path, broken: Server) -> None:
    """systemd's grant lists its own units, not the toy's."""
    config = load_config(str(write_config(tmp_path, config_of(broken))))
    assert polkit.restartable_units(config) == ["caddy.service"]
    assert "toy-web" not in prober.actuators.ACTUATORS[0].grants(config, "prober")


def test_polkit_rule_prints_what_each_actuator_grants(
        tmp_path: Path, broken: Server, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`prober polkit-rule` prints the registered actuators' grants, systemd's and the toy's,
    and tells on stderr what access an actuator needs that no rule gives."""
    toy = replace(TOY, grants=lambda config, user: f"// {user} may restart toys\n",
                  access=lambda config, user: f"{user} needs the toy socket")
    monkeypatch.setattr(prober.actuators, "ACTUATORS", (prober.actuators.ACTUATORS[0], toy))
    path = write_config(tmp_path, config_of(broken))
    assert run(["polkit-rule", "--config", str(path), "--user-name", "watcher"]) == 0
    out, err = capsys.readouterr()
    assert '"caddy.service"' in out and "toy-web" not in out
    assert out.endswith("});\n\n// watcher may restart toys\n")
    assert err == "prober: watcher needs the toy socket\n"


class _SystemdStandIn(ToyActuator):
    """systemd, as far as a run can tell: its restarts recorded apart from the toy's."""

    restarted: ClassVar[list[str]] = []

    async def restart(self, target: Target) -> RestartResult:
        _SystemdStandIn.restarted.append(target.unit or "")
        TOYS.servers["systemd"].handler = answer(200)
        return RestartResult(True, "systemd restarted")


def test_a_unit_and_a_toy_of_one_name_are_restarted_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Restarts are keyed by actuator and name: a unit and a toy both called caddy.service,
    both down, are two restarts, each through its own actuator."""
    systemd = replace(prober.actuators.ACTUATORS[0], make=_SystemdStandIn)
    monkeypatch.setattr(prober.actuators, "ACTUATORS", (systemd, TOY))
    monkeypatch.setattr(_SystemdStandIn, "restarted", [])
    with serve(answer(500)) as toy, serve(answer(500)) as unit:
        TOYS.servers["caddy.service"], TOYS.servers["systemd"] = toy, unit
        # pressure_threshold 0: on a host whose PSI happens to be high, one of two restarts
        # would wait a run (one_restart_under_pressure); these two are told apart.
        text = ('[defaults]\nfailure_threshold = 1\nstartup_grace = "0s"\n'
                'confirm_interval = "0s"\nverify_timeout = "2s"\npressure_threshold = 0\n\n'
                f'[[target]]\nname = "toy"\nurl = "{toy.url("/")}"\ntoy = "caddy.service"\n\n'
                f'[[target]]\nname = "unit"\nurl = "{unit.url("/")}"\nunit = "caddy"\n')
        _, targets = check(write_config(tmp_path, text), tmp_path, capsys)
    assert TOYS.restarted == ["caddy.service"]
    assert _SystemdStandIn.restarted == ["caddy.service"]
    assert targets["toy"]["outcome"] == "restarted (toy restarted); answering again"
    assert targets["unit"]["outcome"] == "restarted (systemd restarted); answering again"


def test_its_own_health_check_fails_a_passing_target_when_it_judges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An actuator that `judges` its targets: its manager's failing health check fails a
    target whose probe passes, and the policy restarts it as any other failure."""
    systemd = replace(prober.actuators.ACTUATORS[0], make=_no_systemd)
    judging = replace(TOY, judges=lambda target: True)
    monkeypatch.setattr(prober.actuators, "ACTUATORS", (systemd, judging))
    with serve(answer(200)) as server:
        TOYS.servers["toy-web"] = server
        TOYS.failing["toy-web"] = "toy-web's own check fails: exit 1"
        _, targets = check(write_config(tmp_path, config_of(server)), tmp_path, capsys)
    web = targets["web"]
    assert web["reason"] == "toy-web's own check fails: exit 1", web
    assert (web["action"], web["health"]) == ("restart", "healthy")
    assert TOYS.restarted == ["toy-web"]
