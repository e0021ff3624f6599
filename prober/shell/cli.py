"""The command line: click commands, and the one place errors become exit codes."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from prober import __version__, probes
from prober.core.config import (
    POLICY_KEYS,
    Config,
    Target,
    config_path,
    key_tables,
    parse_config,
)
from prober.core.errors import ProberError, StateError, UsageError
from prober.core.keys import (
    Key,
    Shape,
    as_typed_after_a_flag,
    describe_value,
    format_duration,
    host_port,
    parse_duration,
)
from prober.core.runs import remembered
from prober.core.text import did_you_mean, one_line, os_reason
from prober.io.configfiles import credential_files, load_config
from prober.outputs import report
from prober.shell.state import StateStore, named_apart, size_limit, state_path

if TYPE_CHECKING:
    from prober.core.actuator import Actuator
    from prober.core.record import Entry
    from prober.core.tracker import State
    from prober.io.configfiles import NamedFile

log = logging.getLogger("prober")

EXIT_UNKNOWN = 3

F = TypeVar("F", bound=Callable[..., Any])

_config_option = click.option(
    "--config", "config_file", metavar="PATH",
    help="Config file [env PROBER_CONFIG; default /etc/prober/prober.toml].",
)
_state_option = click.option(
    "--state", "state_file", metavar="PATH",
    help="State file [env PROBER_STATE; default $STATE_DIRECTORY/state.json or "
         "/var/lib/prober/state.json].",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

# Options taken before the subcommand and after it alike, with one meaning (see Context.joined).
_SHARED_OPTIONS = (
    click.option("-v", "--verbose", count=True, help="Debug log lines too."),
    click.option("-q", "--quiet", count=True,
                 help="Fewer log lines: -q warnings and errors, -qq errors only."),
    click.option("--debug", is_flag=True, help="Show tracebacks of internal errors."),
    click.option("--insecure-config", is_flag=True,
                 help="Accept a config file writable by others than root or the running user."),
)
_PATH_OPTIONS = {"config_file": "--config", "state_file": "--state"}
_SHARED_NAMES = ("verbose", "quiet", "debug", "insecure_config", *_PATH_OPTIONS)


@dataclasses.dataclass(frozen=True)
class Context:
    """The options that may come before the subcommand or after it."""

    verbose: int = 0
    quiet: int = 0
    debug: bool = False
    insecure_config: bool = False
    config_file: str | None = None
    state_file: str | None = None

    def joined(self, after: Context, command: str) -> Context:
        """Both positions' options as one: counts add up (`-q check -q` is -qq), flags hold if
        set in either, and a path named in both must be the same path."""
        for name, flag in _PATH_OPTIONS.items():
            before, later = getattr(self, name), getattr(after, name)
            if before is not None and later is not None and before != later:
                raise UsageError(f"{flag} given twice: {before} before {command}, {later} "
                                 "after it", f"give {flag} once")
        return Context(
            verbose=self.verbose + after.verbose, quiet=self.quiet + after.quiet,
            debug=self.debug or after.debug,
            insecure_config=self.insecure_config or after.insecure_config,
            config_file=self.config_file if after.config_file is None else after.config_file,
            state_file=self.state_file if after.state_file is None else after.state_file,
        )


def _shared(command: Callable[..., int]) -> Callable[..., int]:
    """Give a subcommand the group's options, joined with the ones given before it; logging is
    set up here, once every option is known."""
    takes = inspect.signature(command).parameters

    @functools.wraps(command)
    def joined(**options: Any) -> int:
        from prober.shell.logs import setup_logging

        ctx = click.get_current_context()
        after = Context(**{name: options[name] for name in _SHARED_NAMES if name in options})
        before = ctx.find_object(Context) or Context()
        both = before.joined(after, ctx.info_name or "the command")
        ctx.obj = both
        setup_logging(both.verbose - both.quiet + (1 if both.debug else 0))
        given = {name: value for name, value in options.items() if name not in _SHARED_NAMES}
        paths = {name: getattr(both, name) for name in _PATH_OPTIONS if name in takes}
        return command(**given, **paths)

    return _options(*_SHARED_OPTIONS)(joined)


def _options(*options: Callable[[F], F]) -> Callable[[F], F]:
    def add(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function
    return add


def _load(config_file: str | None, user: bool = False, *, uses_files: bool = True) -> Config:
    """The config; `uses_files` for the commands that read the files it names (not the polkit
    rule's, whose unit has no LoadCredential=)."""
    context = click.get_current_context().find_object(Context)
    insecure = context.insecure_config if context else False
    config = load_config(config_path(config_file, os.environ), insecure=insecure,
                         environ=os.environ if uses_files else None)
    if user:
        from prober.actuators.systemd import on_user_manager

        config = dataclasses.replace(config, targets=tuple(
            on_user_manager(t) for t in config.targets))
    return config


def _duration_option(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


_DRY_RUN_HELP = ("Decide and report; restart, notify and write nothing (but a trial's own "
                 "state file, named with --state).")


def _store(state_file: str | None, *, keep_lock_file_open: bool = False) -> StateStore:
    return StateStore(state_path(state_file, os.environ),
                      keep_lock_file_open=keep_lock_file_open,
                      named_apart=named_apart(state_file, os.environ))


def _check_names(config: Config, names: Sequence[str]) -> None:
    for name in names:
        if name not in config.names:
            hint = did_you_mean(name, config.names) or f"targets are: {', '.join(config.names)}"
            raise UsageError(f'no target named "{name}" in {config.path}', hint)


def _actuator_factory() -> Callable[[], Actuator]:
    from prober.core.actuator import PerTarget

    return PerTarget


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
@click.version_option(__version__, "--version", prog_name="prober")
@_options(_config_option, _state_option, *_SHARED_OPTIONS)
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """HTTP liveness prober and auto-restarter for systemd hosts.

    These options but --version may come after the command too, with the same meaning:
    --config and --state after the commands that read them (before the others, ignored)."""
    ctx.obj = Context(**options)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)


@cli.command()
@_config_option
@_state_option
@click.option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
@_json_option
@click.option("--format", "output_format", type=click.Choice(["text", "json", "nagios"]),
              help="Output format [default: text; --json means json].")
@click.option("--textfile", metavar="PATH",
              help="Also write Prometheus textfile-collector metrics to PATH.")
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help="Check only this target (repeatable).")
@click.option("--user", is_flag=True, help="Restart units of the user's systemd manager.")
@click.option("--if-stale", metavar="DURATION",
              help="Do nothing if another run updated the state less than DURATION ago "
                   "(for the cron fallback).")
@_shared
def check(config_file: str | None, state_file: str | None, dry_run: bool, as_json: bool,
          output_format: str | None, textfile: str | None, targets: tuple[str, ...],
          user: bool, if_stale: str | None) -> int:
    """Probe every target once, restart what is down, exit with a Nagios code."""
    from prober.core.runs import Skipped
    from prober.shell.check import run_check

    stale = _duration_option("--if-stale", if_stale)
    config = _load(config_file, user)
    _check_names(config, targets)
    store = _store(state_file)
    result = run_check(config, store, _actuator_factory(), dry_run=dry_run, only=targets,
                       if_stale=stale)
    fmt = output_format or ("json" if as_json else "text")
    if isinstance(result, Skipped):
        if fmt == "json":
            click.echo(report.dumps({"status": "ok", "skipped": result.reason, "targets": []}))
        elif fmt == "nagios":
            click.echo(f"PROBER OK - skipped: {result.reason}")
        else:
            click.echo(result.reason)
        return 0
    if fmt == "json":
        click.echo(report.dumps(report.run_json(result)))
    elif fmt == "nagios":
        click.echo(report.run_nagios(result))
    else:
        click.echo(report.run_text(result))
    metrics_path = textfile or config.textfile
    if metrics_path:
        from prober.core.runs import Snapshot
        from prober.outputs.metrics import write_textfile  # prometheus_client: only with a textfile

        write_textfile(metrics_path, Snapshot.after_run(config, result, time.time()))
    if result.state_error is not None:
        click.echo(f"prober: error: {result.state_error}", err=True)
    return result.status.exit_code


@cli.command()
@_config_option
@_state_option
@click.option("--interval", metavar="DURATION",
              help="Time between the starts of two runs [default: the config's interval, "
                   "30s].")
@click.option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
@click.option("--user", is_flag=True, help="Restart units of the user's systemd manager.")
@click.option("--listen", metavar="HOST:PORT",
              help="Serve /metrics, /status.json and the status page there [default: the "
                   "config's `listen`; off].")
@_shared
def watch(config_file: str | None, state_file: str | None, interval: str | None,
          dry_run: bool, user: bool, listen: str | None) -> int:
    """Check in a loop, for running as a long-lived service (Type=notify, with a watchdog).

    SIGHUP (`systemctl reload`) re-reads the config; SIGTERM stops it, recording any restart
    already asked for."""
    from prober.shell.watcher import watch as watch_loop

    pause = _duration_option("--interval", interval)
    address = None
    if listen is not None:
        try:
            address = host_port(listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from None

    def load() -> Config:
        return _load(config_file, user)

    watch_loop(load, _store(state_file, keep_lock_file_open=True), _actuator_factory(),
               interval=pause, dry_run=dry_run, listen=address)
    return 0


@cli.command()
@_config_option
@_state_option
@click.argument("target", required=False)
@_json_option
@click.option("--since", metavar="DURATION",
              help="Show the outage record of this long ago on (all targets, or TARGET), "
                   "oldest first, with each outage's length: 2h, 7d.")
@_shared
def status(config_file: str | None, state_file: str | None, target: str | None, as_json: bool,
           since: str | None) -> int:
    """Show what is remembered about each target: health, since when, restarts, history; with
    --since, the outage record's timeline. Exit as check does (0 healthy, 1 warning, 2 a
    target down), 3 if no run is recent enough to trust."""
    config = _load(config_file)
    if target is not None:
        if since is None:
            raise UsageError("a TARGET goes with --since", f"prober status {target} --since 1d")
        _check_names(config, [target])
    store = _store(state_file)
    state = store.load(size_limit(config))
    now = time.time()
    state = dataclasses.replace(state, updated_at=store.last_run_at(state))
    if since is not None:
        _show_record(config, store, _since(since, now), now, target, as_json)
    elif as_json:
        click.echo(report.dumps(report.status_json(config, state, now)))
    else:
        click.echo(report.status_text(config, state, now))
    unknown = report.unknown_reason(config, state, now)
    if unknown is not None:
        click.echo(f"prober: error: {unknown}", err=True)
    return remembered(config, state, now).exit_code


def _since(value: str, now: float) -> float:
    seconds = _duration_option("--since", value)
    assert seconds is not None
    return now - seconds


def _record_read(config: Config, store: StateStore, since: float,
                 target: str | None = None) -> tuple[list[Entry], int]:
    from prober.core.record import within
    from prober.shell.record import RecordFile

    found = RecordFile.beside(store.path, config).read()
    return within(found.entries, since, target), found.skipped


def _show_record(config: Config, store: StateStore, since: float, now: float,
                 target: str | None, as_json: bool) -> None:
    from prober.outputs import timeline

    entries, skipped = _record_read(config, store, since, target)
    if as_json:
        click.echo(report.dumps(timeline.timeline_json(entries, since, now, skipped)))
    else:
        click.echo(timeline.timeline_text(entries, since, now))


@cli.command("report")
@_config_option
@_state_option
@click.option("--since", metavar="DURATION", default="3h", show_default=True,
              help="How far back the report goes.")
@_shared
def report_command(config_file: str | None, state_file: str | None, since: str) -> int:
    """Print a Markdown timeline of what the record holds since --since, in the shape of a
    postmortem: what broke, what prober did, how long each outage lasted, who held the memory."""
    from prober.outputs import timeline

    config = _load(config_file)
    store = _store(state_file)
    now = time.time()
    start = _since(since, now)
    entries, _ = _record_read(config, store, start)
    click.echo(timeline.postmortem(entries, start, now), nl=False)
    return 0


def _probe_command(function: Callable[..., int]) -> Callable[..., int]:
    """Give `prober probe` an option for every key that declares one, from the key table."""
    seen: set[str] = set()
    for key in (*reversed(tuple(key_tables().kinds.values())), *reversed(POLICY_KEYS)):
        option = key.option
        if option is None or key.name in seen:
            continue
        seen.add(key.name)
        typed = as_typed_after_a_flag(key.default)
        default = f" [default: {typed}]" if typed and not option.is_flag else ""
        kind = {Shape.INTEGER: int, Shape.PERCENT: float}.get(key.shape, str)
        function = click.option(
            option.flag, key.name, metavar=option.metavar or None, multiple=option.multiple,
            is_flag=option.is_flag, type=None if option.is_flag else kind,
            help=(option.help or key.help.replace("`", "")) + default,
        )(function)
    return function


def _kind_arguments() -> str:
    """What `prober probe` takes, as each registered kind spells it: "an http:// or https://
    URL, tcp://HOST:PORT or a command (...)"."""
    helps = [kind.argument.help for kind in probes.KINDS]
    return helps[0] if len(helps) == 1 else ", ".join(helps[:-1]) + f" or {helps[-1]}"


@cli.command(help=f"Probe once, with no state and no restart: {_kind_arguments()}. Exit 0 if "
                  "it passes, 1 if it passes with a warning (a certificate about to expire), "
                  "else 2.")
@click.argument("what", nargs=-1, required=True,
                metavar=" | ".join(kind.argument.metavar for kind in probes.KINDS))
@_json_option
@_probe_command
@_shared
def probe(what: tuple[str, ...], as_json: bool, **options: Any) -> int:
    import asyncio

    from prober.probes.probing import probe_one

    table: dict[str, Any] = {"name": "probe"}
    for kind in probes.KINDS:
        values = kind.argument.parse(what)
        if values is not None:
            table.update(values)
            break
    else:
        raise UsageError(f'"{" ".join(what)}": expected {_kind_arguments()}')
    for name, given in options.items():
        value = _option_value(_option_key(name), given)
        if value is not None and value != ():
            table[name] = value
    config = parse_config({"target": [table]}, path="command line")
    target = config.targets[0]
    result = asyncio.run(probe_one(target))
    notice = target.kind.notice(target.probe, result, time.time()) if result.ok else None
    endpoint = target.endpoint
    click.echo(report.dumps(report.probe_json(result, endpoint, notice)) if as_json
               else report.probe_text(result, endpoint, notice))
    return 2 if not result.ok else 1 if notice else 0


def _option_key(name: str) -> Key:
    return key_tables().kinds.get(name) or next(k for k in POLICY_KEYS if k.name == name)


def _option_value(key: Key, given: Any) -> Any:
    """The option's value as the key's TOML value; a bad one is refused naming the flag."""
    if key.option is None:
        return given
    value = given
    if key.option.convert is not None:
        try:
            value = key.option.convert(given)
        except ValueError as exc:
            raise UsageError(f"{key.option.flag} {exc}") from None
    if value is not None and value != ():
        try:
            key.read(value)
        except ValueError as exc:
            raise UsageError(f"{key.option.flag}: {exc}") from None
    return value


@cli.command()
@_config_option
@_shared
def validate(config_file: str | None) -> int:
    """Check the config file and say what it will do."""
    config = _load(config_file)
    click.echo(f"{config.path}: OK, {len(config.targets)} target(s)")
    for target in config.targets:
        unit = f"restarts {target.unit}{_through(target)}" if target.unit else \
            "no unit: monitor only"
        deps = f", depends on {', '.join(target.depends_on)}" if target.depends_on else ""
        click.echo(f"  {target.name}: {target.kind.name} {target.endpoint} ({unit}{deps})")
        settings = _settings(target)
        if settings:
            click.echo(f"    {settings}")
        if target.unit:
            click.echo(f"    {_when_restarted(target)}")
    for where, key, file in credential_files(config):
        click.echo(f"  {where}: {_file_now(key, file)}")
    return 0


def _through(target: Target) -> str:
    """The actuator that restarts a target, where it is not the first one (systemd)."""
    from prober.core.actuator import actuator_of, registered

    actuator = actuator_of(target)
    return "" if actuator is registered()[0] else f" through {actuator.name}"


def _file_now(key: Key, file: NamedFile) -> str:
    """Whether the running user can use a file the config names, now (the service's user may
    differ: the shipped units run prober as `prober`)."""
    import pwd

    from prober.io.configfiles import FileFault

    euid = os.geteuid()
    try:
        user = f"{pwd.getpwuid(euid).pw_name} (uid {euid})"
    except KeyError:
        user = f"uid {euid}"
    try:
        file.parsed(os.environ, euid, key.file_parse or str)
    except FileFault as exc:
        return f"{exc}: NOT usable by {user} now"
    return f"{key.name} {file.where(os.environ)}: readable by {user} now"


def _when_restarted(target: Target) -> str:
    """When its unit would be restarted, the memory-pressure hold included."""
    policy = target.policy
    text = f"restarted after {policy.failure_threshold} failed runs in a row"
    if policy.confirm_interval > 0 and policy.failure_threshold > 1:
        text += (f" (refused: probed again every {format_duration(policy.confirm_interval)} "
                 "within the run, each repeat one run)")
    text += "; "
    if policy.pressure_threshold <= 0 or policy.pressure_hold <= 0:
        return text + "never held under memory pressure (pressure_threshold or pressure_hold 0)"
    return (text + f"held up to pressure_hold {format_duration(policy.pressure_hold)} while "
            f"it only times out and its memory PSI is at or above pressure_threshold "
            f"{policy.pressure_threshold:g}%")


def _settings(target: Target) -> str:
    """The target's keys whose value is not the built-in default, as `key value` pairs."""
    import dataclasses

    from prober.core.config import RestartRules

    pairs = []
    builtin = RestartRules()
    for key in POLICY_KEYS:
        value = getattr(target.policy, key.name)
        if value != getattr(builtin, key.name):
            pairs.append(f"{key.name} {describe_value(key, value)}")
    actuation = dict(target.actuation)
    for key in key_tables().actuators.values():
        if key.name in actuation and describe_value(key, actuation[key.name]) != key.default:
            pairs.append(f"{key.name} {describe_value(key, actuation[key.name])}")
    spec = target.probe
    defaults = {f.name: f.default for f in dataclasses.fields(spec)}  # type: ignore[arg-type]
    for key in target.kind.keys:
        if key.name in defaults and key.name not in target.kind.selectors:
            value = getattr(spec, key.name)
            if value != defaults[key.name]:
                pairs.append(f"{key.name} {describe_value(key, value)}")
    return ", ".join(pairs)


_wait_option = click.option(
    # Longer than a run with the default policy takes (the timer's TimeoutStartSec= too).
    "--wait", "wait", metavar="DURATION", default="3m", show_default=True,
    help="How long to wait for a run that holds the state lock.")


def _update_state(config_file: str | None, state_file: str | None, wait: str,
                  change: Callable[[State, float], State]) -> None:
    """Apply `change` to the stored state under its lock, waiting a bounded time for a run."""
    from prober.shell.state import LockBusy

    store = _store(state_file)
    config = _load(config_file)
    patience = _duration_option("--wait", wait) or 0.0
    try:
        with store.locked(wait=patience):
            from prober.core import tracker

            state = tracker.prune(store.load(size_limit(config)), config.names)
            now = time.time()
            new = change(state, now)
            unrecorded = _record_command(config, store, state, new, now)
            store.save(tracker.trim_history(new, config.history))
    except LockBusy:
        raise StateError(f"another prober run has held {store.lock_path} for "
                         f"{format_duration(patience)}", "is a run stuck? see `prober "
                         "status` and the journal") from None
    if unrecorded is not None:
        click.echo(f"prober: error: {unrecorded}; the command is done, not in the record",
                   err=True)


def _record_command(config: Config, store: StateStore, before: State, after: State,
                    now: float) -> str | None:
    """Append what the command recorded to the outage record, before the state is saved; why
    the record could not be written, or None: the command is done either way."""
    from prober.shell.record import RecordFile, command_entries, seed

    record = RecordFile.beside(store.path, config)
    entries = command_entries(config, before, after)
    if entries and not record.exists():
        entries = [*seed(before, config, now + 1), *entries]
    try:
        record.append(entries, now, store.directory_owner())
    except StateError as exc:
        return str(exc)
    return None


@cli.command()
@_config_option
@_state_option
@click.argument("names", nargs=-1)
@_wait_option
@_shared
def reset(config_file: str | None, state_file: str | None, names: tuple[str, ...],
          wait: str) -> int:
    """Forget the failures, restarts and given-up flag of NAMES (all targets if none)."""
    from prober.core import tracker

    config = _load(config_file)
    _check_names(config, names)
    chosen = names or config.names
    _update_state(config_file, state_file, wait,
                  lambda state, now: tracker.forget(state, chosen, now))
    click.echo(f"reset: {', '.join(chosen)}")
    return 0


@cli.command()
@_config_option
@_state_option
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Pause every target.")
@click.option("--for", "duration", metavar="DURATION", default="1h", show_default=True,
              help="How long the pause lasts; it ends by itself.")
@click.option("--reason", metavar="TEXT", default="", help="Why, for `status` and the page.")
@_wait_option
@_shared
def pause(config_file: str | None, state_file: str | None, names: tuple[str, ...],
          every: bool, duration: str, reason: str, wait: str) -> int:
    """Pause NAMES (or --all): still probed and reported, never restarted, until --for ends."""
    from prober.core import tracker

    config = _load(config_file)
    if bool(names) == every:
        raise UsageError("name the targets to pause, or pass --all", "prober pause web --for "
                         "30m --reason 'upgrading Mastodon'")
    _check_names(config, names)
    seconds = _duration_option("--for", duration)
    if not seconds:
        raise UsageError("--for: a pause must last more than 0s")
    chosen = names or config.names
    until = time.time() + seconds
    _update_state(config_file, state_file, wait,
                  lambda state, now: tracker.pause(state, chosen, until, one_line(reason), now))
    click.echo(f"paused until {report.when(until)}: {', '.join(chosen)}")
    return 0


@cli.command()
@_config_option
@_state_option
@click.argument("names", nargs=-1)
@_wait_option
@_shared
def resume(config_file: str | None, state_file: str | None, names: tuple[str, ...],
           wait: str) -> int:
    """End the pause of NAMES (of every paused target if none)."""
    from prober.core import tracker

    config = _load(config_file)
    _check_names(config, names)
    resumed: list[str] = []

    def change(state: State, now: float) -> State:
        new, done = tracker.resume(state, names or config.names, now)
        resumed.extend(done)
        return new

    _update_state(config_file, state_file, wait, change)
    click.echo(f"resumed: {', '.join(resumed)}" if resumed else "nothing was paused")
    return 0


@cli.command("polkit-rule")
@_config_option
@click.option("--user-name", default="prober", show_default=True,
              help="The system user the prober runs as.")
@click.option("--install", "install_to", is_flag=False, flag_value="", metavar="[PATH]",
              help="Write the rule to PATH (as root) instead [default: "
                   "/etc/polkit-1/rules.d/50-prober.rules]; without a config, or with one that "
                   "does not load, remove it.")
@_shared
def polkit_rule(config_file: str | None, user_name: str, install_to: str | None) -> int:
    """Print the polkit rule letting the prober user restart the configured units only."""
    from prober.actuators import polkit

    if install_to is None:
        config = _load(config_file, uses_files=False)
        needs = _needs(config, user_name)
        click.echo(needs.rule, nl=False)
        for line in needs.lines(config.path):
            click.echo(f"prober: {line}", err=True)
        return 0
    path = install_to or polkit.RULES_FILE
    source = config_path(config_file, os.environ)
    if not os.path.exists(source):
        gone = "removed the rule" if polkit.remove_rule(path) else "no rule"
        click.echo(f"{path}: {gone}, as there is no {source}: prober may restart nothing")
        return 0
    try:
        config = _load(config_file, uses_files=False)
    except ProberError:
        if polkit.remove_rule(path):
            click.echo(f"{path}: removed the rule until the config loads", err=True)
        raise
    needs = _needs(config, user_name)
    if needs.rule:
        polkit.install_rule(path, needs.rule)
        click.echo(f"{path}: written; {user_name} may restart {', '.join(needs.granted)}")
    else:
        gone = "removed the rule" if polkit.remove_rule(path) else "no rule"
        click.echo(f"{path}: {gone}: {needs.no_rule(source)}")
    for line in needs.access:
        click.echo(line)
    return 0


@dataclasses.dataclass(frozen=True)
class _Needs:
    """What prober's user must be granted for a config, as its actuators say
    (`ActuatorKind.grants` and `access`)."""

    rule: str  # the rule's text (systemd's polkit rule), "" when none is needed
    granted: tuple[str, ...]  # what the rule lets it restart
    granting: tuple[str, ...]  # the actuators that grant through a rule ("systemd")
    access: tuple[str, ...]  # what no rule grants (a container engine's socket), one line each

    def no_rule(self, path: str) -> str:
        through = " or ".join(self.granting) or "an actuator that needs one"
        return f"no polkit rule needed, as no target of {path} is restarted through {through}"

    def lines(self, path: str) -> list[str]:
        """What to tell beside the printed rule."""
        return [*([] if self.rule else [self.no_rule(path)]), *self.access]


def _needs(config: Config, user: str) -> _Needs:
    from prober.core.actuator import actuator_of, no_grants, registered

    kinds = registered()
    rules = {kind.name: rule for kind in kinds if (rule := kind.grants(config, user))}
    granted = sorted({t.unit for t in config.targets
                      if t.unit and actuator_of(t).name in rules})
    return _Needs(
        rule="\n".join(rules.values()), granted=tuple(granted),
        granting=tuple(kind.name for kind in kinds if kind.grants is not no_grants),
        access=tuple(line for kind in kinds if (line := kind.access(config, user))))


@cli.command()
@click.option("--output", metavar="FILE",
              help="Write the config to FILE, only if no file is there (never overwritten). "
                   "At /etc/prober/prober.toml it is live at once: the timer's next run probes "
                   "and restarts what it names, and the polkit path unit lets it.")
@_shared
def init(output: str | None) -> int:
    """Print a first config, guessed from the running units and the ports they listen on."""
    from prober.core.config import parse_toml
    from prober.core.errors import InstallError
    from prober.shell import init as first

    if output is not None and os.path.lexists(output):  # before reading the host; see write_new
        raise _exists(output)
    facts = first.read_facts()
    guesses = first.guess(facts)
    if not guesses:
        raise UsageError("none of caddy, nginx, mastodon-web/streaming/sidekiq, postgresql or "
                         "redis is running here", "copy one of examples/ and edit it")
    text = first.render(facts, guesses)
    parse_config(parse_toml(text, "prober init"), "prober init")  # a bug if it does not load
    if output is None:
        click.echo(text, nl=False)
        return 0
    try:
        first.write_new(output, text)
    except FileExistsError:
        raise _exists(output) from None
    except OSError as exc:
        raise InstallError(f"{output}: cannot write: {os_reason(exc)}") from None
    names = ", ".join(f"{g.name} ({g.unit})" for g in guesses)
    click.echo(f"{output}: written with {names}; read its CHECK lines, then `prober validate`")
    return 0


def _exists(output: str) -> UsageError:
    return UsageError(f"{output}: exists; prober init never overwrites a config",
                      "remove it first, or give another --output")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; every failure becomes one line on stderr."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="prober",
                        standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("prober: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"prober: error: {one_line(exc.format_message())}", err=True)
        return EXIT_UNKNOWN
    except ProberError as exc:
        click.echo(f"prober: error: {exc}", err=True)
        return EXIT_UNKNOWN
    except Exception:
        if debug:
            traceback.print_exc()
        else:
            click.echo(f"prober: internal error: {sys.exc_info()[1]!r} "
                       "(run with --debug for a traceback, and please report it)", err=True)
        return EXIT_UNKNOWN
    return code if isinstance(code, int) else 0


def main() -> None:
    from prober.shell.logs import guard_std_streams

    guard_std_streams()  # journald may vanish mid-run: output never changes what a run does
    code = run()
    # Everything is done by now (state saved, lock released, clients closed): skip tearing
    # down a few hundred modules, a large share of a healthy check that runs every 30 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
