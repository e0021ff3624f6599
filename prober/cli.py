"""The command line: click commands, and the one place errors become exit codes."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from prober import __version__, report
from prober.config import (
    Bus,
    Config,
    config_path,
    load_config,
    parse_config,
    parse_duration,
    redact_url,
)
from prober.errors import ProberError, StateError, UsageError, one_line
from prober.state import StateStore, state_path

if TYPE_CHECKING:  # check imports the probes (httpx): `validate` and `status` need not
    from prober.check import Actuator

log = logging.getLogger("prober")

EXIT_UNKNOWN = 3

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


@dataclasses.dataclass(frozen=True)
class Context:
    """What the group's options tell the commands."""

    insecure_config: bool = False


def _load(config_file: str | None, user: bool = False) -> Config:
    context = click.get_current_context().find_object(Context)
    insecure = context.insecure_config if context else False
    config = load_config(config_path(config_file, os.environ), insecure=insecure)
    if user:
        config = dataclasses.replace(config, targets=tuple(
            dataclasses.replace(t, policy=dataclasses.replace(t.policy, bus=Bus.USER))
            for t in config.targets
        ))
    return config


def _duration_option(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _store(state_file: str | None) -> StateStore:
    return StateStore(state_path(state_file, os.environ))


def _check_names(config: Config, names: Sequence[str]) -> None:
    import difflib

    for name in names:
        if name not in config.names:
            close = difflib.get_close_matches(name, config.names, n=1)
            hint = f'did you mean "{close[0]}"?' if close else \
                f"targets are: {', '.join(config.names)}"
            raise UsageError(f'no target named "{name}" in {config.path}', hint)


def _actuator_factory() -> Callable[[], Actuator]:
    def make() -> Actuator:
        from prober.systemd import SystemdActuator  # D-Bus only costs when a restart is near

        return SystemdActuator()

    return make


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
@click.version_option(__version__, "--version", prog_name="prober")
@click.option("-v", "--verbose", count=True, help="Debug log lines too.")
@click.option("-q", "--quiet", count=True,
              help="Fewer log lines: -q warnings and errors, -qq errors only.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.option("--insecure-config", is_flag=True,
              help="Accept a config file writable by others than root or the running user.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, debug: bool,
        insecure_config: bool) -> None:
    """HTTP liveness prober and auto-restarter for systemd hosts."""
    from prober.logs import setup_logging

    setup_logging(verbose - quiet + (1 if debug else 0))
    ctx.obj = Context(insecure_config=insecure_config)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)


@cli.command()
@_config_option
@_state_option
@click.option("--dry-run", is_flag=True, help="Decide and report, restart nothing.")
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
def check(config_file: str | None, state_file: str | None, dry_run: bool, as_json: bool,
          output_format: str | None, textfile: str | None, targets: tuple[str, ...],
          user: bool, if_stale: str | None) -> int:
    """Probe every target once, restart what is down, exit with a Nagios code."""
    from prober.check import Skipped, run_check

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
        report.write_atomically(metrics_path, report.run_prometheus(result, time.time()))
    if result.state_error is not None:
        click.echo(f"prober: error: {result.state_error}", err=True)
    return result.status.exit_code


@cli.command()
@_config_option
@_state_option
@click.option("--interval", metavar="DURATION",
              help="Time between the starts of two runs [default: the config's interval, "
                   "30s].")
@click.option("--dry-run", is_flag=True, help="Decide and report, restart nothing.")
@click.option("--user", is_flag=True, help="Restart units of the user's systemd manager.")
def watch(config_file: str | None, state_file: str | None, interval: str | None,
          dry_run: bool, user: bool) -> int:
    """Check in a loop, for running as a long-lived service (Type=notify, with a watchdog)."""
    from prober.check import Skipped
    from prober.check import watch as watch_loop

    config = _load(config_file, user)
    pause = _duration_option("--interval", interval) or config.interval

    def show(result: Any) -> None:
        if isinstance(result, Skipped):
            log.info("%s", result.reason)
            return
        log.info("%s", report.run_summary(result))
        if config.textfile:
            try:
                report.write_atomically(config.textfile,
                                        report.run_prometheus(result, time.time()))
            except ProberError as exc:
                log.error("%s", exc)

    watch_loop(config, _store(state_file), _actuator_factory(), interval=pause,
               dry_run=dry_run, on_report=show)
    return 0


@cli.command()
@_config_option
@_state_option
@_json_option
def status(config_file: str | None, state_file: str | None, as_json: bool) -> int:
    """Show what is remembered about each target: health, since when, restarts, history."""
    config = _load(config_file)
    state = _store(state_file).load()
    now = time.time()
    if as_json:
        click.echo(report.dumps(report.status_json(config, state, now)))
    else:
        click.echo(report.status_text(config, state, now))
    return 0


@cli.command()
@click.argument("url")
@click.option("--method", type=click.Choice(["GET", "HEAD"], case_sensitive=False))
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'")
@click.option("--expect-status", multiple=True, metavar="CODE|NXX")
@click.option("--expect-body", metavar="TEXT")
@click.option("--expect-body-regex", metavar="REGEX")
@click.option("--timeout", metavar="DURATION", default="5s", show_default=True)
@click.option("--retries", type=int)
@click.option("--max-latency", metavar="DURATION")
@click.option("--max-body", type=int, metavar="BYTES")
@click.option("--resolve", metavar="IP", help="Connect to IP, keep the URL's host (curl-style).")
@click.option("--unix-socket", metavar="PATH")
@click.option("--ca-file", metavar="PATH")
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates.")
@click.option("--follow-redirects", is_flag=True)
@_json_option
def probe(url: str, method: str | None, headers: tuple[str, ...],
          expect_status: tuple[str, ...], expect_body: str | None,
          expect_body_regex: str | None, timeout: str, retries: int | None,
          max_latency: str | None, max_body: int | None, resolve: str | None,
          unix_socket: str | None, ca_file: str | None, insecure: bool,
          follow_redirects: bool, as_json: bool) -> int:
    """Probe URL (http://, https:// or tcp://HOST:PORT) once: no state, no restart."""
    import asyncio

    from prober.probe import probe_one

    table: dict[str, Any] = {"name": "probe", "timeout": timeout}
    if url.startswith("tcp://"):
        table["tcp"] = url.removeprefix("tcp://").rstrip("/")
    else:
        table["url"] = url
    options = {"method": method, "expect_body": expect_body, "retries": retries,
               "expect_body_regex": expect_body_regex, "max_latency": max_latency,
               "max_body": max_body, "resolve": resolve, "unix_socket": unix_socket,
               "ca_file": ca_file}
    table.update({k: v for k, v in options.items() if v is not None})
    if headers:
        table["headers"] = dict(_split_header(h) for h in headers)
    if expect_status:
        table["expect_status"] = list(expect_status)
    if insecure:
        table["tls_verify"] = False
    if follow_redirects:
        table["follow_redirects"] = True
    config = parse_config({"target": [table]}, path="command line")
    target = config.targets[0]
    result = asyncio.run(probe_one(target))
    endpoint = target.endpoint
    click.echo(report.dumps(report.probe_json(result, endpoint)) if as_json
               else report.probe_text(result, endpoint))
    return 0 if result.ok else 2


def _split_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise UsageError(f'--header "{text}": expected "Name: value"')
    return name.strip(), value.strip()


@cli.command()
@_config_option
def validate(config_file: str | None) -> int:
    """Check the config file and say what it will do."""
    config = _load(config_file)
    click.echo(f"{config.path}: OK, {len(config.targets)} target(s)")
    for target in config.targets:
        unit = f"restarts {target.unit}" if target.unit else "no unit: monitor only"
        deps = f", depends on {', '.join(target.depends_on)}" if target.depends_on else ""
        click.echo(f"  {target.name}: {redact_url(target.endpoint)} ({unit}{deps})")
    return 0


@cli.command()
@_config_option
@_state_option
@click.argument("names", nargs=-1)
def reset(config_file: str | None, state_file: str | None, names: tuple[str, ...]) -> int:
    """Forget the failures, restarts and given-up flag of NAMES (all targets if none)."""
    from prober import tracker

    config = _load(config_file)
    _check_names(config, names)
    store = _store(state_file)
    chosen = names or config.names
    from prober.state import LockBusy

    try:
        with store.locked():
            store.save(tracker.forget(store.load(), chosen, time.time()))
    except LockBusy:
        raise StateError(f"another prober run holds {store.lock_path}",
                         "try again in a moment") from None
    click.echo(f"reset: {', '.join(chosen)}")
    return 0


@cli.command("polkit-rule")
@_config_option
@click.option("--user-name", default="prober", show_default=True,
              help="The system user the prober runs as.")
@click.option("--install", "install_to", is_flag=False, flag_value="", metavar="[PATH]",
              help="Write the rule to PATH (as root) instead [default: "
                   "/etc/polkit-1/rules.d/50-prober.rules]; without a config, or with one that "
                   "does not load, remove it.")
def polkit_rule(config_file: str | None, user_name: str, install_to: str | None) -> int:
    """Print the polkit rule letting the prober user restart the configured units only."""
    from prober import polkit

    if install_to is None:
        click.echo(polkit.polkit_rule(_load(config_file), user_name), nl=False)
        return 0
    path = install_to or polkit.RULES_FILE
    source = config_path(config_file, os.environ)
    if not os.path.exists(source):
        gone = "removed the rule" if polkit.remove_rule(path) else "no rule"
        click.echo(f"{path}: {gone}, as there is no {source}: prober may restart nothing")
        return 0
    try:
        config = _load(config_file)
    except ProberError:
        if polkit.remove_rule(path):
            click.echo(f"{path}: removed the rule until the config loads", err=True)
        raise
    polkit.install_rule(path, polkit.polkit_rule(config, user_name))
    units = ", ".join(polkit.restartable_units(config)) or "nothing (no target has a unit)"
    click.echo(f"{path}: written; {user_name} may restart {units}")
    return 0


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
    code = run()
    # Everything is done by now (state saved, lock released, clients closed): skip tearing
    # down a few hundred modules, ~50 ms of a healthy check that runs every 30 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
