"""The config file: TOML in, a validated, frozen `Config` out.

`parse_config` is pure (a dict in, a Config or a ConfigError out); `load_config` reads the file.
Every error names the file, the target and the key, in one line. The keys themselves are
declared once, below and in each probe kind's module (see prober/core/keys.py).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from prober.core.errors import ConfigError
from prober.core.keys import (
    Key,
    Option,
    Shape,
    absolute_path,
    argv,
    by_name,
    choices,
    credential,
    describe,
    duration,
    format_duration,
    headers,
    host_port,
    integer,
    login_name,
    mail_address,
    mail_addresses,
    one_line_secret,
    percent,
    signal_name,
    table,
    target_name,
    target_names,
    url,
)
from prober.core.kinds import Invalid, KeyClash, ProbeKind, ProbeSpec, registered
from prober.core.text import did_you_mean, one_line

DEFAULT_CONFIG_PATH = "/etc/prober/prober.toml"
DEFAULT_INTERVAL = 30.0
DEFAULT_HISTORY = 500
DEFAULT_RECORD_MAX_AGE = 30 * 86400.0
DEFAULT_RECORD_MAX_MIB = 16
DEFAULT_PRESSURE_THRESHOLD = 10.0  # percent of PSI memory `some avg10`
MAX_RETRIES = 10  # a probe's retries stretch the run's deadline; more would hide an outage


@dataclass(frozen=True)
class RestartRules:
    """When a target counts as down, and what may be done about it. Durations in seconds."""

    timeout: float = 5.0
    retries: int = 0
    retry_delay: float = 0.5
    confirm_interval: float = 2.0
    max_latency: float | None = None
    failure_threshold: int = 3
    success_threshold: int = 1
    startup_grace: float = 60.0
    cooldown: float = 60.0
    max_cooldown: float = 900.0
    max_restarts: int = 3
    restart_window: float = 3600.0
    restart_timeout: float = 60.0
    verify_timeout: float = 30.0
    signal_before_restart: str | None = None
    pressure_threshold: float = DEFAULT_PRESSURE_THRESHOLD
    pressure_hold: float = 300.0

    @property
    def probe_budget(self) -> float:
        """The longest one probe may take, retries included."""
        attempts = self.retries + 1
        return attempts * self.timeout + self.retries * self.retry_delay

    @property
    def confirm_budget(self) -> float:
        """The longest a run may spend confirming that nothing listens: the probes after the
        first one that would make the target down, each after confirm_interval."""
        if self.confirm_interval <= 0:
            return 0.0
        return (self.failure_threshold - 1) * (self.confirm_interval + self.probe_budget)


POLICY_KEYS = (
    Key("timeout", Shape.DURATION, duration(0.0, above=True),
        "hard deadline for one probe attempt, all phases together (connect, TLS, headers, "
        "body; or a command's whole run)", default="5s", minimum=0.0,
        option=Option("--timeout", "DURATION")),
    Key("retries", Shape.INTEGER, integer(0, MAX_RETRIES),
        f"quick retries within one run before the probe counts as failed (at most "
        f"{MAX_RETRIES}: each one lengthens the run's deadline)", default="0",
        minimum=0, option=Option("--retries", "N")),
    Key("retry_delay", Shape.DURATION, duration(), "pause between those retries",
        default="500ms"),
    Key("confirm_interval", Shape.DURATION, duration(),
        "a probe that finds nothing listening (`refused`) is repeated this often within the "
        "same run, each repeat counting as one more failed run, until it passes or the target "
        'is *down*; `watch` runs its next cycle this soon instead; `"0s"` disables',
        default="2s"),
    Key("max_latency", Shape.DURATION, duration(),
        "slower answers fail as `slow` (must be below `timeout`); every kind of probe",
        option=Option("--max-latency", "DURATION")),
    Key("failure_threshold", Shape.INTEGER, integer(1),
        "failed runs in a row before the target is *down* and its unit may be restarted",
        default="3", minimum=1),
    Key("success_threshold", Shape.INTEGER, integer(1),
        "passed runs in a row before a failing target counts as recovered", default="1",
        minimum=1),
    Key("startup_grace", Shape.DURATION, duration(),
        "failures within this long of the unit's start (`ActiveEnterTimestamp`) do not count",
        default="60s"),
    Key("cooldown", Shape.DURATION, duration(),
        "minimum time between two restarts of the unit; doubles after each restart that did "
        "not help", default="60s"),
    Key("max_cooldown", Shape.DURATION, duration(), "the doubling stops here", default="15m"),
    Key("max_restarts", Shape.INTEGER, integer(0),
        "restarts allowed within `restart_window`; then the target is *given up* (`0`: never "
        "restart)", default="3", minimum=0),
    Key("restart_window", Shape.DURATION, duration(), "", default="1h"),
    Key("restart_timeout", Shape.DURATION, duration(0.0, above=True),
        "how long to wait for systemd's restart job", default="60s", minimum=0.0),
    Key("verify_timeout", Shape.DURATION, duration(),
        "after a restart, how long to keep re-probing for the target to answer", default="30s"),
    Key("signal_before_restart", Shape.SIGNAL, signal_name,
        'e.g. `"SIGABRT"` (a core dump via systemd-coredump) or `"SIGQUIT"` (a thread dump), '
        "sent to the main process 1 s before the restart"),
    Key("pressure_threshold", Shape.PERCENT, percent,
        "percent of PSI memory `some avg10` (the unit's own where it can be read, else the "
        "host's) at or above which it counts as starving for memory; `0` disables the hold",
        default="10", minimum=0),
    Key("pressure_hold", Shape.DURATION, duration(),
        "the longest a restart may wait while it starves, for a target whose failures are all "
        '`timeout` or `slow`; counted from when it went down; `"0s"` disables', default="5m"),
)
_POLICY_BY_NAME = by_name(POLICY_KEYS)

# The keys every target takes, whatever its kind (policy keys aside; what restarts it is
# named by an actuator's own keys, `unit` for systemd).
TARGET_KEYS = (
    Key("name", Shape.NAME, target_name, "unique; letters, digits, `-`, `_`, `.`",
        default="required"),
    Key("depends_on", Shape.NAMES, target_names,
        "targets this one relies on (a proxy depends on its backends)", default="[]"),
)


@dataclass(frozen=True)
class Target:
    """One thing to probe, how, and, optionally, the unit (or container...) that serves it."""

    name: str
    probe: ProbeSpec
    unit: str | None = None  # what restarts it, by its actuator's name for it (None: monitored)
    actuator: str = ""  # the registered actuator that restarts `unit` ("": the first one)
    # Its actuator's other keys, as set in [defaults] or the target (systemd's `bus`).
    actuation: tuple[tuple[str, Any], ...] = ()
    depends_on: tuple[str, ...] = ()
    policy: RestartRules = field(default_factory=RestartRules)

    @property
    def kind(self) -> ProbeKind[Any, Any]:
        return kind_of(self.probe)

    @property
    def endpoint(self) -> str:
        """Where the probe goes, for humans (passwords shown as ***)."""
        return self.probe.endpoint

    @property
    def run_budget(self) -> float:
        """The longest one probe of this target may take, retries included."""
        return self.policy.probe_budget


def kind_of(spec: object) -> ProbeKind[Any, Any]:
    """The registered kind whose spec `spec` is."""
    for kind in registered():
        if isinstance(spec, kind.spec):
            return kind
    raise TypeError(f"{type(spec).__name__} is not a registered probe kind")


class NotifyEvent(StrEnum):
    """Events that reach [notify]; the values are the JSON `event` field."""

    DOWN = "down"
    RESTART = "restart"
    RESTART_FAILED = "restart-failed"
    GIVEN_UP = "given-up"
    RECOVERED = "recovered"


@dataclass(frozen=True)
class Notify:
    """Where events go: a command (event JSON on stdin), a webhook (POSTed JSON), mail."""

    command: tuple[str, ...] = ()
    webhook: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    token_file: str | None = None  # an absolute path, or a name in $CREDENTIALS_DIRECTORY
    timeout: float = 5.0
    events: frozenset[NotifyEvent] = frozenset(NotifyEvent)
    mail_to: tuple[str, ...] = ()
    mail_from: str | None = None  # prober@ the host's name when unset
    smtp_host: tuple[str, int] = ("localhost", 25)
    smtp_user: str | None = None
    smtp_password_file: str | None = None  # an absolute path, or a name in $CREDENTIALS_DIRECTORY


NOTIFY_KEYS = (
    Key("command", Shape.ARGV, argv, "absolute argv of a command; the event JSON on stdin"),
    Key("webhook", Shape.URL, url, "URL the event is POSTed to as JSON"),
    Key("headers", Shape.HEADERS, headers, "extra headers for the webhook; never printed",
        default="{}"),
    Key("token_file", Shape.CREDENTIAL, credential,
        'sent as "Authorization: Bearer ..."; an absolute path, or a name in '
        "`$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`)"),
    Key("timeout", Shape.DURATION, duration(),
        "all of a delivery's attempts end within this long", default="5s"),
    Key("events", Shape.CHOICES, choices(NotifyEvent), "which events to send",
        default="all", choices=tuple(NotifyEvent)),
    Key("mail_to", Shape.ADDRESSES, mail_addresses,
        "mail the run's events, in one message per run, to these addresses"),
    Key("mail_from", Shape.ADDRESS, mail_address, "the mail's sender",
        default="prober@HOST"),
    Key("smtp_host", Shape.HOST_PORT, host_port,
        'the mail server, as "host:port"; STARTTLS when it offers it', default="localhost:25"),
    Key("smtp_user", Shape.STRING, login_name, "log in to the mail server as this user, with "
        "`smtp_password_file`"),
    Key("smtp_password_file", Shape.CREDENTIAL, credential,
        "the mail server's password, sent only over TLS; an absolute path, or a name in "
        "`$CREDENTIALS_DIRECTORY`", file_parse=one_line_secret),
)
_MAIL_ONLY = ("mail_from", "smtp_host", "smtp_user", "smtp_password_file")


@dataclass(frozen=True)
class Config:
    path: str
    targets: tuple[Target, ...]
    interval: float = DEFAULT_INTERVAL  # between runs of `prober watch`
    textfile: str | None = None  # Prometheus textfile-collector output, written every run
    notify: Notify | None = None
    history: int = DEFAULT_HISTORY  # transitions kept per target in the state
    record_max_age: float = DEFAULT_RECORD_MAX_AGE  # the outage record's entries, at most so old
    record_max_mib: int = DEFAULT_RECORD_MAX_MIB  # and the record file at most so large
    default_policy: RestartRules = field(default_factory=RestartRules)  # [defaults]
    listen: tuple[str, int] | None = None  # where `prober watch` serves /metrics and its page

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    @property
    def run_deadline(self) -> float:
        """The longest one run may take: its slowest probe and the confirmations that may follow
        it, one restart, its verification."""
        return max((t.policy.probe_budget + t.policy.confirm_budget + t.policy.restart_timeout
                    + t.policy.verify_timeout for t in self.targets), default=0.0)


TOP_KEYS = (
    Key("interval", Shape.DURATION, duration(1.0),
        "time between the starts of two runs of `prober watch` (a run that overran is "
        "followed at once)", default="30s", minimum=1.0),
    Key("textfile", Shape.PATH, absolute_path,
        "write Prometheus textfile-collector metrics here after every run (also "
        "`check --textfile PATH`)"),
    Key("history", Shape.INTEGER, integer(10, 10_000),
        "state transitions kept per target (failing, down, held, restart, restart-failed, "
        "given-up, recovered, reset, paused, resumed)", default="500", minimum=10),
    Key("record_max_age", Shape.DURATION, duration(3600.0),
        "how long the outage record (`status --since`, `report`, the page's views) keeps an "
        "event; older ones go when the record is next compacted", default="30d", minimum=3600.0),
    Key("record_max_mib", Shape.INTEGER, integer(1, 1024),
        "the outage record file's size bound, in MiB: past it, its oldest events go",
        default="16", minimum=1),
    Key("listen", Shape.HOST_PORT, host_port,
        "`prober watch` serves `/metrics`, `/status.json` and a status page here, e.g. "
        '`"127.0.0.1:9813"` (also `watch --listen`); off by default; a non-loopback address '
        "is an explicit choice"),
    Key("defaults", Shape.TABLE, table, "policy and probe keys for every target"),
    Key("target", Shape.TABLES, table, "one table per thing to probe", default="required"),
    Key("notify", Shape.TABLE, table, "where events are sent"),
)


ACTUATORS = "prober.actuators"  # the package whose ACTUATORS are the registered actuators


def _fits(target: Target) -> str | None:
    return None


@dataclass(frozen=True)
class Restarter:
    """What the config needs of a registered actuator: its name, its keys, the first of them
    its selector, and its check of a target's keys together (see prober/core/actuator.py)."""

    name: str
    keys: tuple[Key, ...]
    top_keys: tuple[Key, ...] = ()
    check: Callable[[Target], str | None] = _fits

    @property
    def selector(self) -> str:
        return self.keys[0].name


def registered_actuators() -> tuple[Restarter, ...]:
    """The registered actuators' keys, looked up by the registry's name."""
    actuators: tuple[Any, ...] = importlib.import_module(ACTUATORS).ACTUATORS
    return tuple(Restarter(actuator.name, actuator.keys, actuator.top_keys, actuator.check)
                 for actuator in actuators)


@dataclass(frozen=True)
class KeyTables:
    """The keys of the tables whose keys depend on the registered probe kinds and actuators."""

    kinds: Mapping[str, Key]  # every probe kind's keys by name (a shared key declared once)
    defaults: Mapping[str, Key]  # what [defaults] takes: policy keys, others marked for it
    target: Mapping[str, Key]  # what a [[target]] table takes, whatever its kind
    actuators: Mapping[str, Key]  # every actuator's keys by name


def key_tables() -> KeyTables:
    """The key tables of the kinds and actuators registered now (prober/probes/__init__.py,
    prober/actuators/__init__.py)."""
    return _key_tables(registered(), registered_actuators())


def checked_registry(kinds: tuple[ProbeKind[Any, Any], ...]) -> tuple[ProbeKind[Any, Any], ...]:
    """`kinds`, once no key of theirs clashes with another owner's (KeyClash otherwise)."""
    _key_tables(kinds, registered_actuators())
    return kinds


def _owned_keys(kinds: tuple[ProbeKind[Any, Any], ...], actuators: tuple[Restarter, ...],
                ) -> tuple[dict[str, Key], dict[str, Key]]:
    """Every kind's keys and every actuator's keys, by name. One `Key` may serve several kinds;
    a second key of a name that a kind, an actuator, the policy or every target already declares
    would silently override it, and is refused (KeyClash)."""
    owners = {key.name: ("every target", key) for key in TARGET_KEYS}
    owners.update({key.name: ("the policy", key) for key in POLICY_KEYS})

    def claim(owner: str, key: Key, into: dict[str, Key]) -> None:
        first, declared = owners.setdefault(key.name, (owner, key))
        if declared is not key:
            raise KeyClash(f'the key "{key.name}" is declared by {first} and by {owner}')
        into[key.name] = key

    of_actuators: dict[str, Key] = {}
    for actuator in actuators:
        for key in actuator.keys:
            claim(f'the "{actuator.name}" actuator', key, of_actuators)
    of_kinds: dict[str, Key] = {}
    for kind in kinds:
        for key in kind.keys:
            claim(f'the "{kind.name}" kind', key, of_kinds)
    return of_kinds, of_actuators


@functools.cache
def _key_tables(kinds: tuple[ProbeKind[Any, Any], ...],
                actuators: tuple[Restarter, ...] = ()) -> KeyTables:
    of_kinds, of_actuators = _owned_keys(kinds, actuators)
    defaults = {**_POLICY_BY_NAME,
                **{name: key for name, key in {**of_kinds, **of_actuators}.items()
                   if key.in_defaults}}
    return KeyTables(of_kinds, defaults, {**by_name(TARGET_KEYS), **of_actuators,
                                          **_POLICY_BY_NAME, **of_kinds}, of_actuators)


# --- parsing ---------------------------------------------------------------------------------


class Where:
    """Builds the 'where' part of error messages."""

    def __init__(self, path: str, scope: str) -> None:
        self.path = path
        self.scope = scope

    def error(self, key: str | None, message: str, hint: str | None = None) -> ConfigError:
        where = self.path + (f": {self.scope}" if self.scope else "")
        if key is not None:
            where += f": {key}"
        return ConfigError(f"{where}: {message}", hint)

    def read(self, data: Mapping[str, Any], key: Key) -> Any:
        try:
            return key.read(data[key.name])
        except ValueError as exc:
            raise self.error(key.name, str(exc)) from None


def _reject_unknown(data: Mapping[str, Any], allowed: Mapping[str, Key], where: Where) -> None:
    for name in data:
        if name not in allowed:
            raise where.error(name, "unknown key", did_you_mean(name, allowed))


def _parse_policy(data: Mapping[str, Any], base: RestartRules, where: Where) -> RestartRules:
    changes = {key.name: where.read(data, key) for key in POLICY_KEYS if key.name in data}
    policy = replace(base, **changes)
    if policy.max_cooldown < policy.cooldown:
        raise where.error(
            "max_cooldown",
            f"{format_duration(policy.max_cooldown)} is shorter than cooldown "
            f"{format_duration(policy.cooldown)}",
        )
    if policy.max_restarts > 0 and policy.restart_window <= 0:
        raise where.error("restart_window", "must be more than 0s when max_restarts is set")
    return policy


def _check_target_policy(policy: RestartRules, where: Where) -> None:
    latency = policy.max_latency
    if latency is not None and latency >= policy.timeout:
        raise where.error(
            "max_latency",
            f"{format_duration(latency)} is not below timeout {format_duration(policy.timeout)}",
        )


@dataclass(frozen=True)
class _Defaults:
    policy: RestartRules
    probe_values: Mapping[str, Any]  # probe and actuator keys set in [defaults], parsed


def _kind_for(data: Mapping[str, Any], where: Where) -> ProbeKind[Any, Any]:
    known = registered()
    found = [(kind, key) for kind in known for key in kind.selectors if key in data]
    kinds = list(dict.fromkeys(kind for kind, _ in found))
    if not kinds:
        selectors = [f'"{key}"' for kind in known for key in kind.selectors]
        listed = ", ".join(selectors[:-1]) + f" or {selectors[-1]}"
        raise where.error(known[0].selectors[0], f"missing (set {listed})")
    if len(kinds) > 1:
        first = next(key for kind, key in found if kind is kinds[0])
        second = next(key for kind, key in found if kind is kinds[1])
        raise where.error(second, f'set either "{first}" or "{second}", not both')
    return kinds[0]


def _parse_target(data: Mapping[str, Any], defaults: _Defaults, where: Where) -> Target:
    tables = key_tables()
    allowed = tables.target
    if "name" not in data:
        _reject_unknown(data, allowed, where)
        raise where.error("name", "missing (every target needs a unique name)")
    name = where.read(data, allowed["name"])
    where = Where(where.path, f'target "{name}"')
    _reject_unknown(data, allowed, where)
    kind = _kind_for(data, where)
    own = by_name(kind.keys)
    for key in data:
        if key in tables.kinds and key not in own:
            owners = " and ".join(f'"{k.name}"' for k in registered() if key in by_name(k.keys))
            raise where.error(key, f'only applies to {owners} targets, not "{kind.name}" ones')
    values = {k: v for k, v in defaults.probe_values.items() if k in own}
    values.update({key: where.read(data, own[key]) for key in data if key in own})
    try:
        spec = kind.build(values)
    except Invalid as exc:
        raise where.error(exc.key, str(exc)) from None
    if not kind.restartable:
        _refuse_restarter(data, kind, spec, where)
    policy = _parse_policy(data, defaults.policy, where)
    _check_target_policy(policy, where)
    links = {key.name: where.read(data, key) for key in TARGET_KEYS[1:] if key.name in data}
    target = Target(name=name, probe=spec, policy=policy, **links,
                    **_restarter(data, defaults, where))
    _check_actuation(target, where)
    return target


def _check_actuation(target: Target, where: Where) -> None:
    """What the target's actuator says of its keys together (a container's stop_timeout
    against its restart_timeout)."""
    for actuator in registered_actuators():
        if actuator.name == target.actuator and (problem := actuator.check(target)):
            raise where.error(None, one_line(problem))


def _refuse_restarter(data: Mapping[str, Any], kind: ProbeKind[Any, Any], spec: Any,
                      where: Where) -> None:
    """A monitor-only kind's target names nothing to restart."""
    for actuator in registered_actuators():
        if actuator.selector in data:
            raise where.error(actuator.selector, f"a {kind.name} target is monitor-only: "
                              f'prober never restarts {spec.endpoint}; remove "'
                              f'{actuator.selector}"')


def _restarter(data: Mapping[str, Any], defaults: _Defaults, where: Where) -> Mapping[str, Any]:
    """The `unit`, `actuator` and `actuation` of a target: of the actuator whose selector it
    sets, if any."""
    actuators = registered_actuators()
    chosen = [actuator for actuator in actuators if actuator.selector in data]
    if len(chosen) > 1:
        raise where.error(chosen[1].selector, f'set either "{chosen[0].selector}" or '
                                              f'"{chosen[1].selector}", not both')
    actuator = chosen[0] if chosen else None
    for other in actuators:
        for key in other.keys[1:]:
            if key.name in data and other is not actuator:
                raise where.error(key.name, f'only applies to targets with "{other.selector}"')
    if actuator is None:
        return {}
    own = by_name(actuator.keys[1:])
    values = {k: v for k, v in defaults.probe_values.items()
              if k in own or k in by_name(actuator.top_keys)}
    values.update({key: where.read(data, own[key]) for key in data if key in own})
    return {"unit": where.read(data, actuator.keys[0]), "actuator": actuator.name,
            "actuation": tuple(values.items())}


def _check_links(targets: tuple[Target, ...], path: str) -> None:
    names = [t.name for t in targets]
    by_target = {t.name: t for t in targets}
    counts = Counter(names)
    for target in targets:
        where = Where(path, f'target "{target.name}"')
        if counts[target.name] > 1:
            raise where.error("name", f'"{target.name}" is used by more than one target')
        for dep in target.depends_on:
            if dep == target.name:
                raise where.error("depends_on", "a target cannot depend on itself")
            if dep not in by_target:
                raise where.error("depends_on", f'no target named "{dep}"',
                                  did_you_mean(dep, names))
    cycle = find_cycle(by_target)
    if cycle:
        raise Where(path, f'target "{cycle[0]}"').error(
            "depends_on", "dependency cycle: " + " -> ".join(cycle)
        )


def find_cycle(by_name_: Mapping[str, Target]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], or None. Iterative, linear in targets + links."""
    done: set[str] = set()
    for root in by_name_:
        if root in done:
            continue
        trail: list[str] = [root]
        on_trail = {root}
        pending: list[Iterator[str]] = [iter(by_name_[root].depends_on)]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                finished = trail.pop()
                on_trail.discard(finished)
                done.add(finished)
                pending.pop()
                continue
            if dep in on_trail:
                return [*trail[trail.index(dep):], dep]
            if dep in done:
                continue
            trail.append(dep)
            on_trail.add(dep)
            pending.append(iter(by_name_[dep].depends_on))
    return None


def _parse_defaults(data: Mapping[str, Any], path: str) -> _Defaults:
    where = Where(path, "[defaults]")
    allowed = key_tables().defaults
    _reject_unknown(data, allowed, where)
    policy = _parse_policy(data, RestartRules(), where)
    probe_values = {name: where.read(data, allowed[name]) for name in data
                    if name not in _POLICY_BY_NAME}
    return _Defaults(policy, probe_values)


def parse_config(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """A validated Config from the parsed TOML document, or the first ConfigError found."""
    top = Where(path, "")
    of_actuators = by_name(tuple(key for actuator in registered_actuators()
                                 for key in actuator.top_keys))
    top_keys = by_name(TOP_KEYS)
    _reject_unknown(data, {**top_keys, **of_actuators}, top)
    defaults_table = top.read(data, top_keys["defaults"]) if "defaults" in data else {}
    defaults = _parse_defaults(defaults_table, path)
    # An actuator's top-level keys (a socket) reach its targets as its other keys do.
    defaults = replace(defaults, probe_values={
        **defaults.probe_values,
        **{name: top.read(data, key) for name, key in of_actuators.items() if name in data}})
    raw_targets = data.get("target")
    if raw_targets is None:
        raise top.error("target", "no targets (add at least one [[target]] table)")
    if not isinstance(raw_targets, list):
        raise top.error("target", f"expected [[target]] tables, got {describe(raw_targets)}")
    targets = []
    for index, raw in enumerate(raw_targets, start=1):
        scope = Where(path, f"target #{index}")
        if not isinstance(raw, dict):
            raise scope.error("target", f"expected a [[target]] table, got {describe(raw)}")
        targets.append(_parse_target(raw, defaults, scope))
    result = tuple(targets)
    if not result:
        raise top.error("target", "no targets (add at least one [[target]] table)")
    _check_links(result, path)
    settings = {key.name: top.read(data, key) for key in TOP_KEYS
                if key.name in data and key.shape not in (Shape.TABLE, Shape.TABLES)}
    notify = _parse_notify(top.read(data, top_keys["notify"]), path) if "notify" in data \
        else None
    return Config(path=path, targets=result, notify=notify, default_policy=defaults.policy,
                  **settings)


def _parse_notify(data: Mapping[str, Any], path: str) -> Notify:
    where = Where(path, "[notify]")
    allowed = by_name(NOTIFY_KEYS)
    _reject_unknown(data, allowed, where)
    values = {name: where.read(data, allowed[name]) for name in data}
    if not values.get("command") and not values.get("webhook") and not values.get("mail_to"):
        raise where.error("command", 'set "command", "webhook" or "mail_to" (or several)')
    if values.get("token_file") and not values.get("webhook"):
        raise where.error("token_file", 'only applies with "webhook"')
    for name in _MAIL_ONLY:
        if name in values and not values.get("mail_to"):
            raise where.error(name, 'only applies with "mail_to"')
    if ("smtp_user" in values) != ("smtp_password_file" in values):
        given, missing = ("smtp_user", "smtp_password_file") if "smtp_user" in values \
            else ("smtp_password_file", "smtp_user")
        raise where.error(given, f'needs "{missing}" too')
    return Notify(**values)


# --- the file ---------------------------------------------------------------------------------


MAX_NESTING = 32

# What the nesting check must see of a TOML file: strings (skipped whole, so that brackets and
# dots in them do not count), comments (skipped), brackets, dots and line ends. A string left
# open ends at its line's end (or the file's), so that no input makes the scan backtrack.
_TOML_TOKENS = re.compile(
    r'"""(?:[^\\]|\\.)*?(?:"""|\Z)|\'\'\'.*?(?:\'\'\'|\Z)'
    r'|"(?:[^"\\\n]|\\.)*+"?|\'[^\'\n]*+\'?|#[^\n]*+|[][{}.\n]',
    re.DOTALL,
)


def text_position(text: str, offset: int) -> str:
    """"line 3, column 6" of `offset` in `text`, as tomllib words it."""
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return f"line {line}, column {column}"


def check_nesting(text: str, path: str) -> None:
    """ConfigError if arrays, inline tables or dotted keys nest deeper than MAX_NESTING.

    tomllib recurses into nested values and builds a dotted key's prefixes one by one, so a
    file of deep nesting would exhaust the stack or the memory before it could say what is wrong.
    """
    depth = dots = 0
    for token in _TOML_TOKENS.finditer(text):
        match token.group()[0]:
            case "[" | "{":
                depth += 1
            case "]" | "}":
                depth = max(depth - 1, 0)
            case ".":
                dots += 1
            case "\n":
                dots = 0
            case _:
                continue
        if depth > MAX_NESTING or dots >= MAX_NESTING:
            raise ConfigError(f"{path}: nested deeper than {MAX_NESTING} levels "
                              f"(at {text_position(text, token.start())})")


def parse_toml(text: str, path: str) -> Mapping[str, Any]:
    check_nesting(text, path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def named_files(target: Target) -> list[tuple[str, str]]:
    """(key, path) of each file the target names that must exist when the config loads."""
    keys = (key.name for key in target.kind.keys if key.existing_file)
    return [(name, value) for name in keys if (value := getattr(target.probe, name, None))]


def check_ownership(path: str, st: os.stat_result, euid: int) -> None:
    """ConfigError unless the file is owned by root or `euid` and not group/other-writable."""
    hint = "fix the file's owner and mode, or pass --insecure-config"
    if st.st_uid not in (0, euid):
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by root or the running user "
                          f"(uid {euid})", hint)
    if st.st_mode & 0o022:
        raise ConfigError(f"{path}: writable by group or others (mode {st.st_mode & 0o777:o})",
                          f"chmod go-w {path}, or pass --insecure-config")


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> str:
    """--config beats PROBER_CONFIG beats the default."""
    return cli_value or environ.get("PROBER_CONFIG") or DEFAULT_CONFIG_PATH

