"""The plug-in contract: a probe kind is one module plus a line in the registry.

`heartbeat` below is such a module, kept in this test: a target is healthy while a file's
mtime is recent (a worker touching it as it loops). It is registered only by adding it to
`prober.probes.KINDS`, and then loads from TOML, shows in `validate`, gets unknown-key errors
with "did you mean", and runs through `prober check` and `prober probe`, with no other prober
module changed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import prober.probes
from prober.core.config import checked_registry, key_tables
from prober.core.errors import ConfigError
from prober.core.keys import (
    Key,
    Option,
    Shape,
    absolute_path,
    duration,
    format_duration,
    integer,
    string,
)
from prober.core.kinds import Argument, KeyClash, NoContext, ProbeKind
from prober.core.results import Deadline, FailureClass, Finding
from prober.core.text import os_reason
from prober.io.configfiles import load_config
from prober.shell.cli import run

# --- the toy kind: what a prober/probes/heartbeat.py would hold ------------------------------


@dataclass(frozen=True)
class HeartbeatProbe:
    heartbeat: str
    max_age: float = 60.0

    @property
    def endpoint(self) -> str:
        return f"heartbeat:{self.heartbeat}"


KEYS = (
    Key("heartbeat", Shape.PATH, absolute_path, "file a worker touches as it loops"),
    Key("max_age", Shape.DURATION, duration(0.0, above=True),
        "an older mtime fails as `timeout`", default="1m", in_defaults=True,
        option=Option("--max-age", "DURATION")),
)


def build(values: Mapping[str, Any]) -> HeartbeatProbe:
    return HeartbeatProbe(**values)


def argument(args: Sequence[str]) -> Mapping[str, Any] | None:
    if len(args) == 1 and args[0].startswith("heartbeat:"):
        return {"heartbeat": args[0].removeprefix("heartbeat:")}
    return None


async def probe(spec: HeartbeatProbe, deadline: Deadline, context: NoContext) -> Finding:
    try:
        age = time.time() - os.stat(spec.heartbeat).st_mtime
    except OSError as exc:
        return Finding(f"cannot read {spec.heartbeat}: {os_reason(exc)}", FailureClass.ERROR)
    if age > spec.max_age:
        return Finding(f"last beat {format_duration(round(age))} ago, over max_age "
                       f"{format_duration(spec.max_age)}", FailureClass.TIMEOUT)
    return Finding("beating")


HEARTBEAT: ProbeKind[HeartbeatProbe, NoContext] = ProbeKind(
    name="heartbeat", spec=HeartbeatProbe, keys=KEYS, selectors=("heartbeat",), build=build,
    probe=probe, context=NoContext,
    argument=Argument("heartbeat:PATH", "heartbeat:PATH", argument),
)

# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The one line in the registry."""
    monkeypatch.setattr(prober.probes, "KINDS", (*prober.probes.KINDS, HEARTBEAT))
    logger = logging.getLogger("prober")  # run() points it at capsys's stderr: put it back
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def beats(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh heartbeat file and one last touched an hour ago."""
    fresh, stale = tmp_path / "fresh.beat", tmp_path / "stale.beat"
    fresh.touch()
    stale.touch()
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    return fresh, stale


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prober.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def config_of(fresh: Path, stale: Path, extra: str = "") -> str:
    return (f'[defaults]\nmax_age = "2m"\n\n'
            f'[[target]]\nname = "worker"\nheartbeat = "{fresh}"\n{extra}\n'
            f'[[target]]\nname = "stuck"\nheartbeat = "{stale}"\nmax_age = "10m"\n'
            "failure_threshold = 1\n\n"
            '[[target]]\nname = "web"\nurl = "http://127.0.0.1:1/"\n')


def test_loads_from_toml_with_its_defaults(tmp_path: Path, beats: tuple[Path, Path]) -> None:
    """Its keys are read, [defaults] included, into its own spec; other kinds are unchanged."""
    fresh, stale = beats
    config = load_config(str(write_config(tmp_path, config_of(fresh, stale))))
    worker, stuck, web = config.targets
    assert worker.kind is HEARTBEAT and worker.probe == HeartbeatProbe(str(fresh), 120.0)
    assert stuck.probe == HeartbeatProbe(str(stale), 600.0)
    assert web.kind.name == "http"


def test_validate_shows_it(tmp_path: Path, beats: tuple[Path, Path],
                           capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` names its kind and endpoint, and the keys set away from their defaults."""
    path = write_config(tmp_path, config_of(*beats))
    assert run(["validate", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  worker: heartbeat heartbeat:{beats[0]} (no unit: monitor only)" in lines
    assert "    max_age 2m" in lines
    assert "    failure_threshold 1, max_age 10m" in lines


@pytest.mark.parametrize(("extra", "message"), [
    ('max_agee = "1m"', 'target "worker": max_agee: unknown key (hint: did you mean '
                        '"max_age"?)'),
    ('heartbeet = "/x"', 'target "worker": heartbeet: unknown key (hint: did you mean '
                         '"heartbeat"?)'),
    ('expect_status = [200]', 'target "worker": expect_status: only applies to "http" '
                              'targets, not "heartbeat" ones'),
    ('max_age = "0s"', 'target "worker": max_age: must be more than 0s'),
], ids=["own-key", "selector", "other-kind", "bad-value"])
def test_its_keys_are_checked_like_any_kind(tmp_path: Path, beats: tuple[Path, Path],
                                            extra: str, message: str) -> None:
    """Unknown keys near its own get "did you mean"; other kinds' keys and bad values are
    refused by name."""
    path = write_config(tmp_path, config_of(*beats, extra))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: {message}"


def test_a_key_of_its_on_another_kind_is_refused(tmp_path: Path) -> None:
    """Its keys belong to it: max_age on an http target names the kind it applies to."""
    path = write_config(tmp_path, '[[target]]\nname = "web"\nurl = "http://127.0.0.1:1/"\n'
                                  'max_age = "1m"\n')
    with pytest.raises(ConfigError, match='max_age: only applies to "heartbeat" targets, '
                                          'not "http" ones'):
        load_config(str(path))


def test_check_probes_it(tmp_path: Path, beats: tuple[Path, Path],
                         capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`prober check` runs its probe through the shared machinery: a fresh beat passes, a stale
    one fails with the kind's class and reason, and the run is critical for it."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    path = write_config(tmp_path, config_of(*beats).split('[[target]]\nname = "web"')[0])
    code = run(["check", "--json", "--config", str(path), "--state",
                str(tmp_path / "state.json")])
    report = json.loads(capsys.readouterr().out)
    by_name = {t["name"]: t for t in report["targets"]}
    assert code == 2, report
    worker = by_name["worker"]
    assert (worker["ok"], worker["reason"], worker["kind"], worker["endpoint"]) == (
        True, "beating", "heartbeat", f"heartbeat:{beats[0]}")
    stuck = by_name["stuck"]
    assert (stuck["ok"], stuck["failure"], stuck["health"]) == (False, "timeout", "down")
    assert stuck["reason"].startswith("last beat 1h") and stuck["reason"].endswith(
        "ago, over max_age 10m")


def test_probe_takes_its_argument(beats: tuple[Path, Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`prober probe` hands its argument to the kind that claims it, and lists the kind's
    spelling when none does."""
    assert run(["probe", f"heartbeat:{beats[0]}"]) == 0
    assert capsys.readouterr().out.startswith(f"OK: heartbeat:{beats[0]}: beating")
    assert run(["probe", "beat:/x"]) == 3
    assert capsys.readouterr().err.rstrip().endswith(
        "a command (its absolute path and arguments, after `--`), unit:UNIT (a systemd service to "
        "watch) or heartbeat:PATH")


def with_keys(name: str, *keys: Key) -> ProbeKind[HeartbeatProbe, NoContext]:
    """A toy kind like heartbeat, named `name`, declaring `keys` besides its own."""
    return replace(HEARTBEAT, name=name, keys=(*KEYS, *keys))


MAX_AGE_AGAIN = Key("max_age", Shape.INTEGER, integer(0), "a different key of the same name")
OWN_TIMEOUT = Key("timeout", Shape.DURATION, duration(), "shadows the policy's timeout")
OWN_DEPENDS_ON = Key("depends_on", Shape.STRING, string, "shadows every target's depends_on")
OWN_UNIT = Key("unit", Shape.STRING, string, "shadows the systemd actuator's unit")


@pytest.mark.parametrize(("kinds", "message"), [
    ((HEARTBEAT, with_keys("pulse", MAX_AGE_AGAIN)),
     'the key "max_age" is declared by the "heartbeat" kind and by the "pulse" kind'),
    ((with_keys("pulse", OWN_TIMEOUT),),
     'the key "timeout" is declared by the policy and by the "pulse" kind'),
    ((with_keys("pulse", OWN_DEPENDS_ON),),
     'the key "depends_on" is declared by every target and by the "pulse" kind'),
    ((with_keys("pulse", OWN_UNIT),),
     'the key "unit" is declared by the "systemd" actuator and by the "pulse" kind'),
], ids=["two-kinds", "a-policy-key", "a-target-key", "an-actuator-key"])
def test_a_key_declared_twice_is_refused_when_the_registry_is_built(
        kinds: tuple[ProbeKind[Any, Any], ...], message: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A key another owner declares too would silently override it: the registry is refused,
    the error naming both owners, whether built at import or looked up after a change."""
    with pytest.raises(KeyClash) as refused:
        checked_registry(kinds)
    assert str(refused.value) == message
    monkeypatch.setattr(prober.probes, "KINDS", (*prober.probes.KINDS, *kinds))
    with pytest.raises(KeyClash, match=message):
        key_tables()


def test_one_key_may_serve_several_kinds() -> None:
    """The same `Key` declared by two kinds is one key (max_body serves http and exec)."""
    kinds = (HEARTBEAT, with_keys("pulse"))
    assert checked_registry(kinds) == kinds
